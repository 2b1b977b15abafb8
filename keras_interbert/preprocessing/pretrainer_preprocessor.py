"""Caption-image pairs to the pretrainer's masked inputs and targets."""
import keras
import tensorflow as tf

from keras_interbert.preprocessing import masking
from keras_interbert.preprocessing.preprocessor_base import InterBERTPreprocessor
from keras_interbert.preprocessing.preprocessor_base import check_raw_inputs
from keras_interbert.preprocessing.preprocessor_base import checked_text
from keras_interbert.preprocessing.region_packer import InterBERTRegionPacker

# The salts of the per-example draws (`masking.example_seeds`); the
# pretraining pipeline uses 5, 11 and 13 for its caption choices.
NEGATIVE_SALT = 1
TEXT_MASKING_SALT = 3
REGION_MASKING_SALT = 4
OTHER_EXAMPLE_SALT = 11

_CHOICES = {"msm": ("span", "token"), "mrm": ("group", "random"),
            "global_feature": ("masked_mean", "unmasked_mean")}


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTPretrainerPreprocessor(InterBERTPreprocessor):
    """Captions and detector outputs in, the pretrainer's `(x, y)` out.

    The rules of docs/architecture.md §3, as the pretraining pipeline
    (`keras_interbert.data.pretraining_pipeline`) applies them; the pipeline
    calls this layer's `example_fields` and `finish_batch`, so both give the
    same batches for the same pairs, example numbers and seed:

    1. the caption is packed `[CLS] caption [SEP]`, cut to
       `sequence_length - 2` word pieces, padded;
    2. masked region modelling on the first `max_regions` regions:
       overlapping groups (`mrm="group"`: each real region with
       `mrm_probability` zeroes every region with IoU >= `mrm_iou_threshold`)
       or per region (`mrm="random"`: 15%, 90% of them zeroed); the image
       then takes `InterBERTRegionPacker`'s layout, its global slot the mean
       of the kept regions after masking (`global_feature="masked_mean"`,
       the original pretraining code) or before (`"unmasked_mean"`);
    3. masked segment modelling: one span (`msm="span"`) or BERT's 15% per
       token (`msm="token"`), 80/10/10 replacement.

    Every draw is stateless and keyed on `(seed, example_index)`: an
    example gets the same masks whichever batch it is in. Without
    `example_index` among the inputs, each call draws fresh keys (new masks
    every call and epoch, not reproducible).

    Image-text matching: with labels (`y`, int `[B]`, 0 = the caption
    describes the image, 1 = it does not) the pairs are taken as given.
    Without, negatives are drawn inside the batch: each example, with
    `negative_probability`, takes the caption of another example of the
    batch drawn uniformly (label 1). The pipeline instead draws the caption
    of another image of the whole corpus, which a per-batch layer cannot
    see; a batch holding two captions of one image may pair them as a
    negative here.

    Raw inputs (batched), named as the retrieval `score` signature names
    them: `text` string `[B]`, `region_features` float `[B, N, D]`,
    `region_boxes` float `[B, N, 4]` pixel `x1, y1, x2, y2`, `image_size`
    int `[B, 2]` `(height, width)`, `num_regions` int `[B]`; optionally
    `region_class_probs` float `[B, N, C]` (the detector's class
    distributions, the masked-region targets; without them `y` holds no
    `mrm_targets` or `mrm_weights`: train with `mrm_weight=0`) and
    `example_index` int `[B]`.

    Returns `(x, y)`: `x` the six backbone inputs (`token_ids` masked),
    with `msm_positions` `[B, M]` and `mrm_positions` `[B, K]` (see
    `msm_positions`, `mrm_positions`) and `itc_token_ids` (with `itc`);
    `y` `msm_labels`, `msm_weights`, `mrm_targets`, `mrm_weights`,
    `itm_labels`, as `InterBERTPretrainer.fit` takes them.

    Args:
        tokenizer: an `InterBERTTokenizer`.
        sequence_length: packed caption length (36: 34 word pieces + 2).
        max_regions: region slots after the global one (36).
        negative_probability: chance of an in-batch negative when no
            labels are given (0.5).
        msm: `"span"` or `"token"`.
        msm_token_probability: the per-token rate of `msm="token"` (0.15).
        mrm: `"group"` or `"random"`.
        mrm_probability: seed probability of `mrm="group"` (0.1).
        mrm_iou_threshold: grouping threshold (0.4).
        global_feature: `"masked_mean"` or `"unmasked_mean"`.
        msm_positions: give the text targets at their positions only
            (`x["msm_positions"]`, padded to a multiple of 8) rather than
            over all T positions.
        mrm_positions: likewise for regions (`x["mrm_positions"]`, a
            multiple of 4).
        itc: add `x["itc_token_ids"]`, the captions before masking.
        seed: int, the seed of every draw.

    Examples:
    ```python
    preprocessor = InterBERTPretrainerPreprocessor.from_preset(
        "interbert_base_en", max_regions=36)
    pretrainer = InterBERTPretrainer(backbone, num_region_classes=1601,
                                     preprocessor=preprocessor)
    pretrainer.fit({"text": captions, "region_features": f,
                    "region_boxes": b, "image_size": s, "num_regions": n,
                    "region_class_probs": p}, batch_size=64)
    ```
    """

    raw_input_names = ("text", "region_features", "region_boxes",
                       "image_size", "num_regions")
    optional_input_names = ("region_class_probs", "example_index")

    def __init__(self, tokenizer, sequence_length=36, max_regions=36,
                 negative_probability=0.5, msm="span",
                 msm_token_probability=0.15, mrm="group",
                 mrm_probability=0.1, mrm_iou_threshold=0.4,
                 global_feature="masked_mean", msm_positions=True,
                 mrm_positions=True, itc=False, seed=42, **kwargs):
        super().__init__(tokenizer, sequence_length, False, **kwargs)
        given = {"msm": msm, "mrm": mrm, "global_feature": global_feature}
        for name, allowed in _CHOICES.items():
            if given[name] not in allowed:
                raise ValueError(
                    f"InterBERTPretrainerPreprocessor: `{name}` must be one "
                    f"of {list(allowed)}; received {given[name]!r}.")
        rates = {"negative_probability": negative_probability,
                 "msm_token_probability": msm_token_probability,
                 "mrm_probability": mrm_probability}
        for name, value in rates.items():
            if not 0 <= value <= 1:
                raise ValueError(
                    f"InterBERTPretrainerPreprocessor: `{name}` must be in "
                    f"[0, 1]; received {value}.")
        self.max_regions = int(max_regions)
        self.negative_probability = float(negative_probability)
        self.msm = msm
        self.msm_token_probability = float(msm_token_probability)
        self.mrm = mrm
        self.mrm_probability = float(mrm_probability)
        self.mrm_iou_threshold = float(mrm_iou_threshold)
        self.global_feature = global_feature
        self.msm_positions = bool(msm_positions)
        self.mrm_positions = bool(mrm_positions)
        self.itc = bool(itc)
        self.seed = int(seed)
        self.region_packer = InterBERTRegionPacker(
            self.max_regions, global_feature="kept_regions",
            global_after_masking=global_feature == "masked_mean")

    def _settings(self):
        return {"sequence_length": self.sequence_length,
                "max_regions": self.max_regions,
                "negative_probability": self.negative_probability,
                "msm": self.msm,
                "msm_token_probability": self.msm_token_probability,
                "mrm": self.mrm,
                "mrm_probability": self.mrm_probability,
                "mrm_iou_threshold": self.mrm_iou_threshold,
                "global_feature": self.global_feature,
                "msm_positions": self.msm_positions,
                "mrm_positions": self.mrm_positions,
                "itc": self.itc,
                "seed": self.seed}

    def _seeds(self, example_index, salt):
        return masking.example_seeds(self.seed, example_index, salt)

    # === Raw inputs ===

    def call(self, x, y=None, sample_weight=None):
        owner = type(self).__name__
        check_raw_inputs(x, self.raw_input_names, owner,
                         optional=self.optional_input_names)
        if sample_weight is not None:
            raise ValueError(
                f"{owner}: `sample_weight` is not supported; the per-target "
                "weights are made here (`msm_weights`, `mrm_weights`).")
        text = checked_text(x, "text", owner)
        batch = tf.shape(text)[0]
        if "example_index" in x:
            index = tf.cast(x["example_index"], tf.int64)
        else:
            index = tf.random.uniform([batch], maxval=tf.int64.max,
                                      dtype=tf.int64)
        if y is None:
            text, itm_labels = self._in_batch_negatives(text, index)
        else:
            itm_labels = self._itm_labels(y, owner)
        fields = self.example_fields(
            text, x["region_features"], x["region_boxes"], x["image_size"],
            x["num_regions"], index, x.get("region_class_probs"))
        return self.finish_batch(fields, itm_labels, index)

    @staticmethod
    def _itm_labels(y, owner):
        if isinstance(y, dict):
            if sorted(y) != ["itm_labels"]:
                raise ValueError(f"{owner}: labels must be `itm_labels` [B] "
                                 f"(0 = matched); received keys {sorted(y)}.")
            y = y["itm_labels"]
        labels = tf.convert_to_tensor(y)
        if labels.shape.rank != 1 or not labels.dtype.is_integer:
            raise ValueError(
                f"{owner}: labels must be the image-text matching labels, "
                "int [B] (0 = matched, 1 = mismatched); received "
                f"{labels.dtype.name} of shape {labels.shape}.")
        return tf.cast(labels, tf.int32)

    def _in_batch_negatives(self, text, index):
        """Each example, with `negative_probability`, takes the caption of
        another example of the batch, drawn uniformly (label 1)."""
        batch = tf.shape(text, out_type=tf.int64)[0]

        def uniform(salt):
            keys = masking.row_keys(self._seeds(index, salt))
            return masking.row_uniform(tf.shape(index), keys)

        negative = (uniform(NEGATIVE_SALT) < self.negative_probability) & (
            batch > 1)
        other = tf.cast(tf.floor(uniform(OTHER_EXAMPLE_SALT) * tf.cast(
            tf.maximum(batch - 1, 1), tf.float64)), tf.int64)
        rows = tf.range(batch)
        other = tf.where(other >= rows, other + 1, other)
        other = tf.minimum(other, batch - 1)
        text = tf.where(negative, tf.gather(text, other), text)
        return text, tf.cast(negative, tf.int32)

    # === The two stages the pretraining pipeline calls ===

    def example_fields(self, text, region_features, region_boxes, image_size,
                       num_regions, example_index, region_class_probs=None):
        """Per-example fields of a batch: the packed caption (before text
        masking) and the image slots after region masking.

        Returns a dict: `token_ids`, `segment_ids`, `text_mask` `[B, T]`;
        `region_features`, `region_locations`, `region_mask` `[B, R+1, ...]`;
        `mrm_weights` `[B, R+1]` (1.0 at a masked-region target); and, with
        `region_class_probs`, `class_probs` `[B, K, C]` (the distributions
        of slots 1..K, K <= R).
        """
        out = dict(self.packer(self.tokenizer(text)))
        out.update(self._masked_regions(region_features, region_boxes,
                                        image_size, num_regions,
                                        example_index))
        if region_class_probs is not None:
            out["class_probs"] = tf.convert_to_tensor(
                region_class_probs)[:, : self.max_regions]
        return out

    def _masked_regions(self, features, boxes, image_size, num_regions,
                        example_index):
        R = self.max_regions
        features = tf.convert_to_tensor(features)
        boxes = tf.cast(boxes, tf.float32)
        width = tf.shape(features)[1]
        num = tf.clip_by_value(tf.cast(num_regions, tf.int32), 0, width)
        # Masking runs on the kept regions only.
        real = tf.sequence_mask(tf.minimum(num, R), width)
        seeds = self._seeds(example_index, REGION_MASKING_SALT)
        if self.mrm == "group":
            size = tf.cast(image_size, tf.float32)
            h, w = size[:, 0], size[:, 1]
            scale = tf.stack([w, h, w, h], axis=-1)[:, tf.newaxis]
            zeroed = masking.mask_region_groups(
                tf.where(real[..., tf.newaxis], boxes, 0.0) / scale, real,
                seeds, h, w, probability=self.mrm_probability,
                iou_threshold=self.mrm_iou_threshold)
            targets = zeroed
        else:
            targets, zeroed = masking.mask_regions_random(real, seeds)
        out = dict(self.region_packer(features, boxes, image_size, num,
                                      region_masked=zeroed))
        targets = targets[:, :R]
        out["mrm_weights"] = tf.pad(
            targets, [[0, 0], [1, R - tf.shape(targets)[1]]])
        return out

    def finish_batch(self, fields, itm_labels, example_index):
        """Text masking and the model's `(x, y)` from `example_fields`.

        `fields["token_ids"]` and `fields["text_mask"]` may be cut to a
        shorter length than `sequence_length` (the pipeline's length
        buckets); the draws do not depend on it.
        """
        token_ids = fields["token_ids"]
        text_mask = fields["text_mask"]
        tokenizer = self.tokenizer
        seeds = self._seeds(example_index, TEXT_MASKING_SALT)
        vocabulary_size = int(tokenizer.vocabulary_size())
        if self.msm == "span":
            masked_ids, msm_labels, msm_weights = masking.mask_segment_span(
                token_ids, text_mask, seeds, vocabulary_size,
                tokenizer.mask_id, cls_id=tokenizer.cls_id,
                sep_id=tokenizer.sep_id)
        else:
            masked_ids, msm_labels, msm_weights = masking.mask_tokens_bert(
                token_ids, text_mask, seeds, vocabulary_size,
                tokenizer.mask_id, cls_id=tokenizer.cls_id,
                sep_id=tokenizer.sep_id,
                probability=self.msm_token_probability)

        x = {}
        if self.msm_positions:
            # Target positions first (in order), padded with weight-0
            # entries to a multiple of 8: exact, and only a handful of
            # shapes to compile.
            counts = tf.reduce_sum(tf.cast(msm_weights > 0, tf.int32), axis=1)
            width = tf.minimum(
                tf.shape(token_ids)[1],
                8 * ((tf.maximum(tf.reduce_max(counts), 1) + 7) // 8))
            order = tf.argsort(tf.cast(msm_weights > 0, tf.int32), axis=1,
                               direction="DESCENDING", stable=True)[:, :width]
            x["msm_positions"] = order
            msm_labels = tf.gather(msm_labels, order, batch_dims=1)
            msm_weights = tf.gather(msm_weights, order, batch_dims=1)
        y = {}
        if "class_probs" in fields:
            mrm_targets, mrm_weights, mrm_positions = self._region_targets(
                fields["mrm_weights"], fields["class_probs"])
            if mrm_positions is not None:
                x["mrm_positions"] = mrm_positions
            y = {"mrm_targets": mrm_targets, "mrm_weights": mrm_weights}
        if self.itc:
            x["itc_token_ids"] = token_ids
        x.update({
            "token_ids": masked_ids,
            "segment_ids": tf.zeros_like(masked_ids),
            "text_mask": text_mask,
            "region_features": fields["region_features"],
            "region_locations": fields["region_locations"],
            "region_mask": fields["region_mask"],
        })
        y = {
            "msm_labels": msm_labels,
            "msm_weights": msm_weights,
            **y,
            "itm_labels": tf.cast(itm_labels, tf.int32),
        }
        return x, y

    def _region_targets(self, slot_weights, class_probs):
        """`(mrm_targets, mrm_weights, mrm_positions or None)` of a batch.

        `slot_weights` `[B, R+1]` marks the target slots; `class_probs`
        `[B, K, C]` holds the distributions of slots 1..K.
        """
        R = self.max_regions
        K = tf.shape(class_probs)[1]
        if not self.mrm_positions:
            targets = tf.pad(class_probs, [[0, 0], [1, R - K], [0, 0]])
            return targets, slot_weights, None
        # The targets' slots in order, padded with weight-0 entries (slot 0,
        # zero distribution) to the batch's largest count rounded up to a
        # multiple of 4 (at least 4): few shapes to compile.
        is_target = tf.cast(slot_weights[:, 1:] > 0, tf.int32)
        count = tf.reduce_max(tf.reduce_sum(is_target, axis=1))
        width = 4 * ((tf.maximum(count, 1) + 3) // 4)
        order = tf.argsort(is_target, axis=1, direction="DESCENDING",
                           stable=True)[:, :width]
        chosen = tf.gather(is_target, order, batch_dims=1)
        pad = [[0, 0], [0, width - tf.shape(order)[1]]]
        positions = tf.pad((order + 1) * chosen, pad)
        # Target slots are real regions, so their rows lie below K.
        targets = tf.gather(class_probs, tf.minimum(order, K - 1),
                            batch_dims=1)
        targets = tf.pad(
            targets * tf.cast(chosen, targets.dtype)[..., tf.newaxis],
            pad + [[0, 0]])
        return targets, tf.pad(tf.cast(chosen, tf.float32), pad), positions
