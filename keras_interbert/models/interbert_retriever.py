import keras
from keras import ops

from keras_interbert.layers.image_text_matching_head import ImageTextMatchingHead
from keras_interbert.models.functional_base import BackboneTask
from keras_interbert.models.input_checks import BACKBONE_INPUT_NAMES
from keras_interbert.models.interbert_pretrainer import unimodal_pooled
from keras_interbert.models.pretraining_objective import contrastive_loss
from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.models.loading import backbone_of
from keras_interbert.models.loading import resolve_source
from keras_interbert.utils.initializers import backbone_kernel_initializer


def listwise_ranking_loss(itm_logits):
    """Listwise ranking loss of retrieval's four pairs per caption.

    `itm_logits` `[4B, 2]` in the layout of `retrieval_training_dataset`
    (pairs `4b .. 4b+3` of caption `b`: matched, (image, random caption),
    (random image, caption), (image, hard caption)). The score of a pair is
    its matching log-odds. Returns the mean over captions of the average of
    two cross-entropies: the matched pair against pairs 1 and 3 (same image,
    other captions: image-to-text) and against pair 2 (same caption, another
    image: text-to-image).
    """
    logits = ops.cast(itm_logits, "float32")
    margin = ops.reshape(logits[:, 0] - logits[:, 1], (-1, 4))
    image_side = ops.stack([margin[:, 0], margin[:, 1], margin[:, 3]], axis=1)
    caption_side = margin[:, 0:3:2]
    image_term = ops.logsumexp(image_side, axis=1) - margin[:, 0]
    caption_term = ops.logsumexp(caption_side, axis=1) - margin[:, 0]
    return ops.mean(0.5 * (image_term + caption_term))


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTRetriever(BackboneTask):
    """Image-text retrieval by the matching head (docs/architecture.md §4.1).

    Scores an (image, caption) pair with the image-text matching head of
    pretraining: `itm_logits` `[B, 2]`, class 0 = matched; the retrieval
    score is `softmax(itm_logits)[:, 0]` (`match_probability`). Finetuning
    trains the same head with 2-way cross-entropy on the four pairs per
    caption that `keras_interbert.data.retrieval_training_dataset` yields.

    Args:
        backbone: an `InterBERTBackbone`.
        itm_head: an `ImageTextMatchingHead` to reuse (the pretrained one),
            or `None` for a new, randomly initialised head.
        itm_dropout: dropout on the fused vector of a new head.
        itc_head: optional `ContrastiveHead` (from a pretrainer trained with
            the image-text contrastive task). Not used by the score; kept
            for the two-stage first stage `"contrastive"` and saved with the
            model.
        preprocessor: optional `InterBERTRetrieverPreprocessor`; with it,
            `fit`, `evaluate` and `predict` take raw inputs (`text`,
            `region_features`, `region_boxes`, `image_size`, `num_regions`),
            and it is saved in the `.keras` file.
        dtype: dtype policy of the head.

    Examples:
    ```python
    retriever = keras_interbert.InterBERTRetriever.from_pretrained(
        "runs/pretrain/pretrained.keras")
    retriever.compile(optimizer=keras_interbert.training.finetuning_optimizer(
        total_steps=1000, steps_per_epoch=50))
    retriever.fit(keras_interbert.data.retrieval_training_dataset(...))
    probabilities = retriever.match_probability(x)
    ```
    """

    def __init__(self, backbone, itm_head=None, itm_dropout=0.1, itc_head=None,
                 preprocessor=None, dtype=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        if itm_head is None:
            itm_head = ImageTextMatchingHead(
                dropout=itm_dropout,
                kernel_initializer=backbone_kernel_initializer(backbone),
                dtype=dtype, name="itm_head")
        self.itm_head = itm_head

        # === Functional model ===
        inputs = backbone.input
        features = backbone(inputs, pooled_only=True)
        outputs = {"itm_logits": self.itm_head(features["text_pooled"],
                                               features["image_pooled"])}
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # Outside the functional graph (see InterBERTPretrainer).
        if isinstance(itc_head, dict):
            itc_head = keras.layers.deserialize(itc_head)
        if itc_head is not None and not itc_head.built:
            itc_head.build((None, backbone.pooled_dim))
        self.itc_head = itc_head
        self._itc_weight = 0.0
        self._pairs_per_caption = 4
        self.set_preprocessor(preprocessor)

        # === Config ===
        self.itm_dropout = itm_head.dropout

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def compile(self, optimizer="auto", loss="auto", metrics="auto",
                itc_weight=0.0, pairs_per_caption=4, ranking_weight=0.0,
                **kwargs):
        """Configures finetuning: 2-way cross-entropy on `itm_logits`.

        `optimizer="auto"` is `finetuning_optimizer()` at the original's 4e-5
        (docs/architecture.md §4.1; constant: pass your own for warmup and step decay). `loss` and
        `metrics` default to sparse categorical cross-entropy from logits
        and accuracy, against integer labels (0 = matched).

        `itc_weight > 0` adds the image-text contrastive loss of pretraining
        (not in the original finetuning; needs `itc_head`): in training, the
        matched pair of each caption, the first of every
        `pairs_per_caption` rows as `retrieval_training_dataset` lays them
        out, is encoded one modality at a time, and every caption of the
        batch is contrasted with every image of it, both ways. It keeps the
        contrastive first stage of two-stage retrieval in step with the
        finetuned backbone.

        `ranking_weight > 0` adds a listwise ranking loss on the matching
        log-odds (not in the original finetuning), in both retrieval
        directions, over the four pairs per caption of
        `retrieval_training_dataset` (needs `pairs_per_caption=4`): the
        image's side is a softmax over the three captions paired with image
        `i` (its own, a random one, a hard one), the caption's side a
        softmax over the two images paired with caption `c` (its own, a
        random one). The 2-way cross-entropy judges each pair alone, so a
        caption that every image "matches" fairly well costs it little;
        image-to-text ranking compares captions for one image, and the
        image's side of this loss trains exactly that comparison.
        """
        ranking_weight = float(ranking_weight)
        if not ranking_weight >= 0.0:
            raise ValueError(f"`ranking_weight` must be >= 0; received "
                             f"{ranking_weight}.")
        if ranking_weight > 0 and pairs_per_caption != 4:
            raise ValueError(
                "InterBERTRetriever.compile: ranking_weight needs the four "
                "pairs per caption of retrieval_training_dataset "
                f"(pairs_per_caption=4); received {pairs_per_caption!r}.")
        itc_weight = float(itc_weight)
        if not itc_weight >= 0.0:
            raise ValueError(f"`itc_weight` must be >= 0; received "
                             f"{itc_weight}.")
        if itc_weight > 0 and self.itc_head is None:
            raise ValueError(
                f"InterBERTRetriever.compile: itc_weight={itc_weight} needs a "
                "contrastive head (`itc_head`): start from a pretrainer "
                "trained with the image-text contrastive task.")
        if not (isinstance(pairs_per_caption, int) and pairs_per_caption >= 1):
            raise ValueError("`pairs_per_caption` must be a positive int; "
                             f"received {pairs_per_caption!r}.")
        self._itc_weight = itc_weight
        self._pairs_per_caption = pairs_per_caption
        self._ranking_weight = ranking_weight
        self._compile_finetuning(optimizer, loss, metrics, 4e-5, **kwargs)

    def call(self, inputs, training=None, mask=None):
        outputs = super().call(inputs, training=training, mask=mask)
        if training and getattr(self, "_itc_weight", 0.0) > 0:
            step = self._pairs_per_caption
            matched = {k: inputs[k][::step] for k in BACKBONE_INPUT_NAMES}
            text, image = unimodal_pooled(self.backbone, matched,
                                          matched["token_ids"],
                                          training=training)
            outputs = dict(outputs, itc_logits=self.itc_head(text, image))
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        contrastive = None
        if isinstance(y_pred, dict) and "itc_logits" in y_pred:
            y_pred = dict(y_pred)
            contrastive = y_pred.pop("itc_logits")
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        if contrastive is not None:
            loss = loss + self._itc_weight * contrastive_loss(contrastive)
        if training and getattr(self, "_ranking_weight", 0.0) > 0:
            logits = y_pred["itm_logits"] if isinstance(y_pred, dict) else y_pred
            loss = loss + self._ranking_weight * listwise_ranking_loss(logits)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # The compiled metrics read the matching logits only.
        if isinstance(y_pred, dict) and "itc_logits" in y_pred:
            y_pred = {k: v for k, v in y_pred.items() if k != "itc_logits"}
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def match_probability(self, x, batch_size=256):
        """`softmax(itm_logits)[:, 0]` of the pairs in `x`, as numpy `[B]`."""
        logits = self.predict(x, batch_size=batch_size, verbose=0)
        return keras.ops.convert_to_numpy(
            ops.softmax(logits["itm_logits"], axis=-1)[:, 0])

    def _compile_extras(self):
        return {"itc_weight": self._itc_weight,
                "pairs_per_caption": self._pairs_per_caption,
                "ranking_weight": self._ranking_weight}

    def _task_config(self):
        config = {"itm_dropout": self.itm_dropout}
        if self.itc_head is not None:
            config["itc_head"] = keras.layers.serialize(self.itc_head)
        return config

    @classmethod
    def from_preset(cls, preset, **overrides):
        """A randomly initialised retriever of a named configuration, or the
        model of a preset directory (`save_to_preset`): a saved retriever
        as saved, a saved pretrainer with its matching head kept."""
        from keras_interbert.models import preset_io

        if preset_io.is_preset_directory(preset):
            return preset_io.task_from_preset(cls, preset, **overrides)
        return cls(InterBERTBackbone.from_preset(preset, **overrides))

    @classmethod
    def from_pretrained(cls, source, preprocessor=None, **preset_overrides):
        """A retriever from a pretrained model.

        Args:
            source: a `.keras` path, a preset name, or a model object: an
                `InterBERTPretrainer` (its backbone and matching head are
                kept, as in docs/architecture.md §4.1, and its contrastive head if any), an `InterBERTRetriever` (returned
                as is), or an `InterBERTBackbone` (a new head).
            preprocessor: optional `InterBERTRetrieverPreprocessor` for the
                new retriever (raw inputs in `fit`/`predict`).
            **preset_overrides: backbone config overrides for a preset name.
        """
        model, what = resolve_source(source, preset_overrides)
        if isinstance(model, cls):
            if preprocessor is not None:
                model.set_preprocessor(preprocessor)
            return model
        backbone = backbone_of(model, what)
        return cls(backbone, itm_head=getattr(model, "itm_head", None),
                   itc_head=getattr(model, "itc_head", None),
                   preprocessor=preprocessor)
