import keras
from keras import ops

from keras_interbert.layers.contrastive_head import ContrastiveHead
from keras_interbert.layers.image_text_matching_head import ImageTextMatchingHead
from keras_interbert.layers.masked_region_head import MaskedRegionHead
from keras_interbert.layers.masked_segment_head import MaskedSegmentHead
from keras_interbert.models.functional_base import BackboneTask
from keras_interbert.models.interbert_backbone import InterBERTBackbone
from keras_interbert.models.pretraining_objective import PretrainingObjective
from keras_interbert.models.pretraining_objective import TASK_METRICS
from keras_interbert.models.replica_context import num_replicas_in_sync
from keras_interbert.models.replica_context import sum_over_replicas
from keras_interbert.utils.activations import hidden_activation
from keras_interbert.utils.initializers import backbone_kernel_initializer


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTPretrainer(BackboneTask):
    """InterBERT with its three pretraining heads.

    Wraps an `InterBERTBackbone` and adds the masked-segment head (tied to
    the word embeddings), the masked-region head and the image-text matching
    head. Called on the backbone's inputs it returns logits for every
    position: `msm_logits` [B, T, V], `mrm_logits` [B, R, C] (slot 0, the
    global token, included) and `itm_logits` [B, 2] (class 0 = matched).

    Args:
        backbone: an `InterBERTBackbone`.
        num_region_classes: int. Width of the masked-region target
            distribution (1601 for the Visual Genome detector).
        itm_dropout: float. Dropout on the fused pooled vector.
        contrastive: bool. Adds a `ContrastiveHead` (`self.itc_head`) for
            the optional image-text contrastive task (not in the published
            model; `False`, the default, leaves the model exactly the
            original's). Called with `x["itc_token_ids"]` (the captions
            before text masking), the pretrainer then also returns
            `itc_logits` [B, B]: each caption encoded alone against each
            image encoded alone.
        contrastive_dim: optional int. Width of the contrastive head's
            projections; `None`: no projection (the pooled vectors are
            compared directly).
        itm_initializer: optional initializer of the matching classifier's
            kernel; `None` (the original): the backbone's normal
            initializer. `"zeros"` starts the classifier at no preference,
            so its first steps follow whatever the fused vector already
            says about matching (see docs/pretraining.md) instead of
            undoing a random start.
        preprocessor: optional `InterBERTPretrainerPreprocessor`; with it,
            `fit`, `evaluate` and `predict` take raw caption-image pairs
            (see `keras_interbert.preprocessing`), and the `.keras` file
            keeps it.
        dtype: dtype policy of the heads.

    Examples:
    ```python
    backbone = keras_interbert.InterBERTBackbone.from_preset("interbert_tiny_en")
    pretrainer = keras_interbert.InterBERTPretrainer(backbone, num_region_classes=17)
    outputs = pretrainer(inputs)  # msm_logits, mrm_logits, itm_logits
    pretrainer.compile(
        optimizer=keras_interbert.optimizers.pretraining_optimizer(
            total_steps=1000),
        msm_weight=1.0, mrm_weight=1.0, itm_weight=1.0,
    )
    pretrainer.fit(dataset)  # (x, y) batches
    ```
    """

    def __init__(self, backbone, num_region_classes, itm_dropout=0.1,
                 contrastive=False, contrastive_dim=None,
                 itm_initializer=None, preprocessor=None, dtype=None,
                 **kwargs):
        # === Layers ===
        self.backbone = backbone
        init = backbone_kernel_initializer(backbone)
        self.msm_head = MaskedSegmentHead(
            token_embedding=backbone.token_embedding,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            activation=hidden_activation(backbone.approximate_gelu),
            kernel_initializer=init,
            dtype=dtype,
            name="msm_head",
        )
        self.mrm_head = MaskedRegionHead(
            num_classes=num_region_classes,
            hidden_dim=backbone.hidden_dim,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            activation=hidden_activation(backbone.approximate_gelu),
            kernel_initializer=init,
            dtype=dtype,
            name="mrm_head",
        )
        self.itm_head = ImageTextMatchingHead(
            dropout=itm_dropout,
            kernel_initializer=(init if itm_initializer is None
                                else keras.initializers.get(itm_initializer)),
            dtype=dtype, name="itm_head",
        )

        # === Functional model ===
        inputs = backbone.input
        features = backbone(inputs)
        outputs = {
            "msm_logits": self.msm_head(features["text_sequence"]),
            "mrm_logits": self.mrm_head(features["image_sequence"]),
            "itm_logits": self.itm_head(
                features["text_pooled"], features["image_pooled"]
            ),
        }
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # A functional model may hold layers outside its graph: the
        # contrastive head reads unimodal passes that the graph does not hold.
        self.itc_head = None
        if contrastive:
            self.itc_head = ContrastiveHead(
                projection_dim=contrastive_dim, kernel_initializer=init,
                dtype=dtype, name="itc_head")
            self.itc_head.build((None, backbone.pooled_dim))

        # === Config ===
        self.num_region_classes = num_region_classes
        self.itm_dropout = itm_dropout
        self.contrastive = bool(contrastive)
        self.contrastive_dim = contrastive_dim
        self.itm_initializer = itm_initializer

        # === Training state ===
        self._objective = PretrainingObjective()
        self._ablation_frozen = ()
        self._task_trackers = {
            name: keras.metrics.Mean(name=name)
            for task in TASK_METRICS
            for name, _ in TASK_METRICS[task]
        }
        self.set_preprocessor(preprocessor)

    extra_input_names = ("msm_positions", "msm_flat_positions",
                         "mrm_positions", "itc_token_ids")

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def call(self, inputs, training=None, mask=None):
        # With `msm_positions` ([B, M] int) the masked-segment head computes
        # vocabulary logits only there ([B, M, V]), where its cost goes; with
        # `msm_flat_positions` ([N] int, indices into the batch's text
        # positions flattened to [B * T], which the TensorFlow training step
        # gives: its targets alone, without the padding slots) only there
        # ([1, N, V]); with `mrm_positions` ([B, K] int) the region head
        # only at those slots.
        if not (isinstance(inputs, dict)
                and any(k in inputs for k in self.extra_input_names)):
            return super().call(inputs, training=training, mask=mask)
        features = self.backbone(
            {k: v for k, v in inputs.items()
             if k not in self.extra_input_names},
            training=training)
        image = features["image_sequence"]
        if "mrm_positions" in inputs:
            slots = ops.expand_dims(ops.cast(inputs["mrm_positions"], "int32"), -1)
            image = ops.take_along_axis(image, slots, axis=1)
        text = features["text_sequence"]
        msm_positions = inputs.get("msm_positions")
        if "msm_flat_positions" in inputs:
            if msm_positions is not None:
                raise ValueError(
                    "InterBERTPretrainer: give `msm_positions` or "
                    "`msm_flat_positions`, not both.")
            text = ops.reshape(text, (1, -1, ops.shape(text)[-1]))
            msm_positions = ops.expand_dims(inputs["msm_flat_positions"], 0)
        outputs = {
            "msm_logits": self.msm_head(text, positions=msm_positions),
            "mrm_logits": self.mrm_head(image),
            "itm_logits": self.itm_head(features["text_pooled"],
                                        features["image_pooled"],
                                        training=training),
        }
        if "itc_token_ids" in inputs:
            if self.itc_head is None:
                raise ValueError(
                    "InterBERTPretrainer: `itc_token_ids` given but the model "
                    "has no contrastive head; build it with "
                    "`contrastive=True`.")
            text, image = unimodal_pooled(self.backbone, inputs,
                                          inputs["itc_token_ids"],
                                          training=training)
            outputs["itc_logits"] = self.itc_head(text, image)
        return outputs

    # === Training ===

    def compile(self, optimizer="auto", msm_weight=1.0, mrm_weight=1.0,
                itm_weight=1.0, itc_weight=0.0, loss=None, loss_weights=None,
                metrics=None,
                weighted_metrics=None, **kwargs):
        """Configures pretraining.

        Args:
            optimizer: an optimizer, or `"auto"` for
                `keras_interbert.optimizers.pretraining_optimizer()` (the
                published groups and clipping, a constant rate since the run
                length is unknown here).
            msm_weight, mrm_weight, itm_weight: floats >= 0. Weights of the
                three losses in the total. A weight of 0 switches its task
                off for an ablation: the loss is not computed, the variables
                only that task uses (its head; the poolers for ITM; a stream
                no enabled task reads) are frozen, and its metrics are not
                logged.
            itc_weight: float >= 0. Weight of the optional image-text
                contrastive loss (0, the published objective, by default;
                needs `contrastive=True` and `x["itc_token_ids"]`).
            **kwargs: `run_eagerly`, `steps_per_execution`, `jit_compile`,
                `auto_scale_loss`, as for `keras.Model.compile`.

        The objective is fixed: `loss`, `loss_weights`, `metrics` and
        `weighted_metrics` must be left as `None`.
        """
        for name, value in (("loss", loss), ("loss_weights", loss_weights),
                            ("metrics", metrics),
                            ("weighted_metrics", weighted_metrics)):
            if value is not None:
                raise ValueError(
                    f"InterBERTPretrainer.compile: `{name}` must be None (the "
                    "pretraining objective and its metrics are built in; "
                    "weigh the tasks with `msm_weight`, `mrm_weight`, "
                    f"`itm_weight`); received {value!r}."
                )
        objective = PretrainingObjective(msm_weight, mrm_weight, itm_weight,
                                         itc_weight)
        if "itc" in objective.tasks and self.itc_head is None:
            raise ValueError(
                f"InterBERTPretrainer.compile: itc_weight={itc_weight} needs a "
                "contrastive head; build the pretrainer with "
                "`contrastive=True`.")
        if isinstance(optimizer, str) and optimizer == "auto":
            from keras_interbert.optimizers import pretraining_optimizer

            optimizer = pretraining_optimizer()
        self._objective = objective
        self._freeze_unused_variables(objective.tasks)
        super().compile(optimizer=optimizer, **kwargs)

    def _compile_extras(self):
        return {f"{task}_weight": weight
                for task, weight in self._objective.weights.items()}

    @property
    def task_weights(self):
        """The weights of `msm`, `mrm`, `itm` and `itc` in the total loss."""
        return dict(self._objective.weights)

    @property
    def metrics(self):
        enabled = set(self._objective.metric_names())
        hidden = {id(tracker) for name, tracker in self._task_trackers.items()
                  if name not in enabled}
        return [m for m in super().metrics if id(m) not in hidden]

    def _task_variable_groups(self):
        """Variables read by only some tasks' losses, with those tasks."""
        backbone = self.backbone
        shared = {id(v) for v in backbone.weights}

        def weights(layers):
            return [v for layer in layers for v in layer.weights]

        groups = [
            (("msm",), [v for v in self.msm_head.weights
                        if id(v) not in shared]),
            (("mrm",), self.mrm_head.weights),
            (("itm",), self.itm_head.weights),
            (("itm", "itc"), weights([backbone.text_pooler,
                                      backbone.image_pooler])),
            (("msm", "itm", "itc"), weights(backbone.text_stream_layers)),
            (("mrm", "itm", "itc"), weights(backbone.image_stream_layers)),
        ]
        if self.itc_head is not None:
            groups.append((("itc",), self.itc_head.weights))
        return groups

    def _freeze_unused_variables(self, tasks):
        # Ids, not the variables: a list of variables set as an attribute
        # would become variables of the pretrainer itself (and of its saves).
        groups = self._task_variable_groups()
        for _, variables in groups:
            for variable in variables:
                if id(variable) in self._ablation_frozen:
                    variable.trainable = True
        frozen = set()
        for users, variables in groups:
            if any(task in tasks for task in users):
                continue
            for variable in variables:
                if variable.trainable:
                    variable.trainable = False
                    frozen.add(id(variable))
        self._ablation_frozen = tuple(sorted(frozen))

    def _check_no_sample_weight(self, sample_weight):
        if sample_weight is not None:
            raise ValueError(
                "InterBERTPretrainer: `sample_weight` is not supported; the "
                "per-target weights are `y['msm_weights']` and "
                "`y['mrm_weights']`."
            )

    def _pretraining_loss(self, y, y_pred):
        """This replica's loss, the global logged values, the global sums.

        Updates the task trackers with the global values, each weighted by
        its global count divided by the replica count: every replica then
        holds the global running mean, and so does the cross-replica sum of
        their states that Keras reads at the end of an epoch.
        """
        objective = self._objective
        stats = objective.statistics(y, y_pred)
        totals = sum_over_replicas(
            {k: ops.stop_gradient(v) for k, v in stats.items()})
        loss, values = objective.combine(stats, totals)
        replicas = float(num_replicas_in_sync())
        for name, count in objective.metric_counts().items():
            self._task_trackers[name].update_state(
                values[name], sample_weight=totals[count] / replicas)
        return loss, values, totals

    def _update_loss_tracker(self, values, totals):
        replicas = float(num_replicas_in_sync())
        self._loss_tracker.update_state(
            values["loss"], sample_weight=totals["batch_size"] / replicas)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """The weighted pretraining loss of a batch (its replica's share)."""
        self._check_no_sample_weight(sample_weight)
        loss, _, _ = self._pretraining_loss(y, y_pred)
        return loss

    def pretraining_losses(self, y, y_pred):
        """Total and per-task losses and accuracies of one batch.

        For evaluation and checks outside `fit`; updates no metric.
        """
        return self._objective(y, y_pred)

    def train_step(self, *args, **kwargs):
        if keras.config.backend() == "tensorflow":
            from keras_interbert.models import tensorflow_steps

            return tensorflow_steps.train_step(self, *args, **kwargs)
        return super().train_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        if keras.config.backend() == "tensorflow":
            from keras_interbert.models import tensorflow_steps

            return tensorflow_steps.test_step(self, *args, **kwargs)
        return super().test_step(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a `tf.distribute` strategy Keras 3.15 first reduces a whole
        # batch across replicas with `strategy.reduce`, which
        # `MultiWorkerMirroredStrategy` cannot do on a nested batch. The
        # pretrainer is built when constructed; only the optimizer is left.
        built = all(layer.built for layer in self._flatten_layers())
        if (keras.config.backend() == "tensorflow" and built
                and self._distribute_strategy is not None):
            self._build_optimizer_eagerly()
            return
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch)

    def _task_config(self):
        config = {"num_region_classes": self.num_region_classes,
                  "itm_dropout": self.itm_dropout}
        if self.contrastive:
            config.update(contrastive=True,
                          contrastive_dim=self.contrastive_dim)
        if self.itm_initializer is not None:
            config["itm_initializer"] = keras.initializers.serialize(
                keras.initializers.get(self.itm_initializer))
        return config

    @classmethod
    def from_preset(cls, preset, contrastive=False, contrastive_dim=None,
                    **overrides):
        """Backbone and heads, randomly initialised, from a named configuration.

        `contrastive` (and `contrastive_dim`) add the optional contrastive
        head; other keyword arguments override the backbone configuration.
        """
        from keras_interbert.models import preset_io
        from keras_interbert.presets import preset_task_config

        if preset_io.is_preset_directory(preset):
            model = preset_io.load_preset(preset)
            if not isinstance(model, cls):
                raise ValueError(f"{preset} holds a {type(model).__name__}, "
                                 f"not an {cls.__name__}.")
            return model
        backbone = InterBERTBackbone.from_preset(preset, **overrides)
        return cls(backbone, contrastive=contrastive,
                   contrastive_dim=contrastive_dim,
                   **preset_task_config(preset))


def unimodal_pooled(backbone, inputs, token_ids, training=None):
    """`(text_pooled, image_pooled)` of each modality encoded alone.

    The captions `token_ids` (with `inputs["text_mask"]`) go through the
    backbone with one empty image slot, the images of `inputs` with one empty
    text token: a masked slot is not attended to, so neither pooled vector
    depends on the other modality (as in the two-stage first stage).
    """
    inputs = {k: ops.convert_to_tensor(inputs[k]) for k in (
        "text_mask", "region_features", "region_locations", "region_mask")}
    token_ids = ops.convert_to_tensor(token_ids)
    features = inputs["region_features"]
    size = ops.shape(token_ids)[0]
    text_mask = inputs["text_mask"]
    text = backbone({
        "token_ids": token_ids,
        "segment_ids": ops.zeros_like(token_ids),
        "text_mask": text_mask,
        "region_features": ops.zeros_like(features[:, :1]),
        "region_locations": ops.zeros_like(inputs["region_locations"][:, :1]),
        "region_mask": ops.zeros_like(inputs["region_mask"][:, :1]),
    }, training=training, pooled_only=True)["text_pooled"]
    empty = ops.zeros((size, 1), dtype=text_mask.dtype)
    image = backbone({
        "token_ids": ops.zeros_like(token_ids[:, :1]),
        "segment_ids": ops.zeros_like(token_ids[:, :1]),
        "text_mask": empty,
        "region_features": features,
        "region_locations": inputs["region_locations"],
        "region_mask": inputs["region_mask"],
    }, training=training, pooled_only=True)["image_pooled"]
    return text, image
