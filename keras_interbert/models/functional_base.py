import keras

from keras_interbert.models.input_checks import check_backbone_inputs


class FunctionalBase(keras.Model):
    """Shared base of the project's functional models.

    Sublayers are created in `__init__` before `keras.Model.__init__` runs
    (the keras-hub layout: layers, functional wiring, config). Under the
    torch backend a module attribute cannot be set before
    `torch.nn.Module.__init__`; the functional graph tracks every layer, so
    plain attribute setting is safe until then. Every call checks the
    backbone input dictionary first and names what is wrong.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialized = True

    def __setattr__(self, name, value):
        is_property = isinstance(getattr(type(self), name, None), property)
        uninitialized = not hasattr(self, "_initialized")
        if keras.config.backend() == "torch" and (is_property or uninitialized):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)

    # Inputs a model accepts beyond the backbone's six.
    extra_input_names = ()

    def _image_feature_dim(self):
        raise NotImplementedError

    def __call__(self, inputs, *args, **kwargs):
        checked = inputs
        if isinstance(inputs, dict) and self.extra_input_names:
            checked = {k: v for k, v in inputs.items()
                       if k not in self.extra_input_names}
        check_backbone_inputs(
            checked, self._image_feature_dim(), type(self).__name__
        )
        return super().__call__(inputs, *args, **kwargs)


class BackboneTask(FunctionalBase):
    """Base of the models that hold an `InterBERTBackbone` as `self.backbone`.

    Serializes the backbone and the dtype policy in `get_config` (subclasses
    add their own arguments with `_task_config`) and rebuilds both in
    `from_config`.
    """

    def _task_config(self):
        return {}

    def _compile_finetuning(self, optimizer, loss, metrics, learning_rate,
                            regression=False, **kwargs):
        """`compile` with the finetuning defaults for each `"auto"` argument.

        `"auto"` optimizer: `finetuning_optimizer(learning_rate=...)` (a
        constant rate); loss: sparse categorical cross-entropy from logits
        (mean squared error for `regression`); metrics: accuracy (none for
        `regression`).
        """
        if isinstance(optimizer, str) and optimizer == "auto":
            from keras_interbert.training.finetuning import finetuning_optimizer

            optimizer = finetuning_optimizer(learning_rate=learning_rate)
        if isinstance(loss, str) and loss == "auto":
            loss = (keras.losses.MeanSquaredError() if regression else
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if isinstance(metrics, str) and metrics == "auto":
            metrics = [] if regression else [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "backbone": keras.layers.serialize(self.backbone),
        }
        config.update(self._task_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
