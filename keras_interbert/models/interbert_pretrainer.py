import keras
from keras import ops

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
                 dtype=None, **kwargs):
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
            dropout=itm_dropout, kernel_initializer=init, dtype=dtype,
            name="itm_head",
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

        # === Config ===
        self.num_region_classes = num_region_classes
        self.itm_dropout = itm_dropout

        # === Training state ===
        self._objective = PretrainingObjective()
        self._ablation_frozen = ()
        self._task_trackers = {
            name: keras.metrics.Mean(name=name)
            for task in ("msm", "mrm", "itm")
            for name, _ in TASK_METRICS[task]
        }

    extra_input_names = ("msm_positions", "mrm_positions")

    def _image_feature_dim(self):
        return self.backbone.image_feature_dim

    def call(self, inputs, training=None, mask=None):
        # With `msm_positions` ([B, M] int) the masked-segment head computes
        # vocabulary logits only there ([B, M, V]), where its cost goes; with
        # `mrm_positions` ([B, K] int) the region head only at those slots.
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
        return {
            "msm_logits": self.msm_head(features["text_sequence"],
                                        positions=inputs.get("msm_positions")),
            "mrm_logits": self.mrm_head(image),
            "itm_logits": self.itm_head(features["text_pooled"],
                                        features["image_pooled"],
                                        training=training),
        }

    # === Training ===

    def compile(self, optimizer="auto", msm_weight=1.0, mrm_weight=1.0,
                itm_weight=1.0, loss=None, loss_weights=None, metrics=None,
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
        objective = PretrainingObjective(msm_weight, mrm_weight, itm_weight)
        if isinstance(optimizer, str) and optimizer == "auto":
            from keras_interbert.optimizers import pretraining_optimizer

            optimizer = pretraining_optimizer()
        self._objective = objective
        self._freeze_unused_variables(objective.tasks)
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config.update({f"{task}_weight": weight
                           for task, weight in self._objective.weights.items()})
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def task_weights(self):
        """The weights of `msm`, `mrm` and `itm` in the total loss."""
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

        return [
            (("msm",), [v for v in self.msm_head.weights
                        if id(v) not in shared]),
            (("mrm",), self.mrm_head.weights),
            (("itm",), weights([self.itm_head, backbone.text_pooler,
                                backbone.image_pooler])),
            (("msm", "itm"), weights(backbone.text_stream_layers)),
            (("mrm", "itm"), weights(backbone.image_stream_layers)),
        ]

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
            if self.optimizer is not None and not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch)

    def _task_config(self):
        return {"num_region_classes": self.num_region_classes,
                "itm_dropout": self.itm_dropout}

    @classmethod
    def from_preset(cls, preset, **overrides):
        """Backbone and heads, randomly initialised, from a named configuration."""
        from keras_interbert.presets import preset_task_config

        backbone = InterBERTBackbone.from_preset(preset, **overrides)
        return cls(backbone, **preset_task_config(preset))
