import keras

from keras_interbert.models.input_checks import check_backbone_inputs


def tf_data_types():
    """`(tf.data.Dataset,)`, or `()` where TensorFlow is not installed."""
    try:
        import tensorflow as tf
    except ImportError:
        return ()
    return (tf.data.Dataset,)


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

    def save_to_preset(self, preset_dir, overwrite=False):
        """Writes the task, its backbone, weights and preprocessor to
        `preset_dir` (see `keras_interbert.models.preset_io`); the task
        class's `from_preset(preset_dir)` loads them."""
        from keras_interbert.models import preset_io

        return preset_io.save_to_preset(self, preset_dir, overwrite=overwrite)

    # === Preprocessor (keras-hub's Task contract) ===
    def set_preprocessor(self, preprocessor):
        """Keeps `preprocessor` (or `None`) after checking its vocabulary.

        Called by subclasses after the functional model is built. A
        preprocessor's tokenizer must give ids the backbone's embedding
        table has: a vocabulary of another size is refused here, naming
        both sizes, rather than failing (or silently reading wrong rows)
        later.
        """
        if isinstance(preprocessor, dict):
            preprocessor = keras.layers.deserialize(preprocessor)
        if preprocessor is not None:
            names = getattr(preprocessor, "raw_input_names", None)
            if not callable(preprocessor) or names is None:
                raise ValueError(
                    f"{type(self).__name__}: `preprocessor` must be one of "
                    "keras_interbert's preprocessors; received "
                    f"{type(preprocessor).__name__}.")
        self.preprocessor = preprocessor
        # A tokenizer loaded from a `.keras` file gets its vocabulary (an
        # asset) after construction: then the check waits for first use.
        self._preprocessor_checked = False
        if preprocessor is not None and (
                preprocessor.tokenizer.vocabulary is not None):
            self._check_preprocessor()

    def _check_preprocessor(self):
        if self._preprocessor_checked:
            return
        size = self.preprocessor.vocabulary_size
        expected = self.backbone.vocabulary_size
        if size != expected:
            raise ValueError(
                f"{type(self).__name__}: the preprocessor's vocabulary has "
                f"{size} word pieces, the backbone's embedding table "
                f"{expected}; they must be the same vocabulary.")
        options = getattr(self.preprocessor, "num_options", None)
        if options is not None and options != self.num_options:
            raise ValueError(
                f"{type(self).__name__}: the preprocessor gives {options} "
                f"options per question, the model scores {self.num_options}.")
        width = getattr(self.preprocessor, "image_feature_dim", None)
        if width is not None and width != self.backbone.image_feature_dim:
            raise ValueError(
                f"{type(self).__name__}: the preprocessor gives "
                f"{width}-d image slots, the backbone takes "
                f"{self.backbone.image_feature_dim}-d ones.")
        self._preprocessor_checked = True

    def _is_raw(self, x):
        names = getattr(getattr(self, "preprocessor", None),
                        "raw_input_names", ())
        if isinstance(x, tf_data_types()):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            return isinstance(spec, dict) and names and names[0] in spec
        return isinstance(x, dict) and bool(names) and names[0] in x

    def _preprocessed(self, x, y=None, sample_weight=None, batch_size=None,
                      shuffle=False):
        """`x` (raw dict or dataset of raw batches) as a preprocessed dataset.

        In-memory arrays are batched (`batch_size`, default 32) and, with
        `shuffle`, reshuffled every epoch; a dataset is mapped as it is.
        """
        import tensorflow as tf
        from keras_interbert.data.tracing import plain

        self._check_preprocessor()
        if isinstance(x, tf.data.Dataset):
            return x.map(plain(self.preprocessor),
                         num_parallel_calls=tf.data.AUTOTUNE)
        data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        dataset = tf.data.Dataset.from_tensor_slices(data)
        if shuffle:
            count = int(dataset.cardinality())
            dataset = dataset.shuffle(max(count, 1),
                                      reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size or 32)
        if not isinstance(data, tuple):
            return dataset.map(plain(self.preprocessor))
        return dataset.map(plain(lambda *args: self.preprocessor(*args)))

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None,
            validation_data=None, **kwargs):
        if self._is_raw(x):
            # Arrays are shuffled here, as `fit` would; the dataset made of
            # them is then taken as it is.
            x = self._preprocessed(x, y, sample_weight, batch_size,
                                   shuffle=kwargs.pop("shuffle", True))
            y = sample_weight = batch_size = None
            kwargs["shuffle"] = False
        if validation_data is not None:
            parts = (keras.utils.unpack_x_y_sample_weight(validation_data)
                     if isinstance(validation_data, tuple)
                     else (validation_data,))
            if self._is_raw(parts[0]):
                validation_data = self._preprocessed(*parts)
        self._build_optimizer_eagerly()
        return super().fit(x, y, batch_size=batch_size,
                           sample_weight=sample_weight,
                           validation_data=validation_data, **kwargs)

    def _build_optimizer_eagerly(self):
        """Creates the optimizer's variables before `fit` traces its step.

        Under TensorFlow without a distribution strategy, Keras builds the
        optimizer inside the first traced training step, where each slot
        variable costs far more to create than eagerly (the tiny
        pretrainer's first `fit` call on one batch in a fresh process:
        4.6-5.8 s with the build here, against 9.8-10.1 s;
        `benchmarks/trace_costs.py`). The variables, their order and their
        zero initial values are the same either way. Models whose layers
        are not all built yet are left to Keras.
        """
        if (keras.config.backend() == "tensorflow"
                and getattr(self, "optimizer", None) is not None
                and not self.optimizer.built
                and all(layer.built for layer in self._flatten_layers())):
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None,
                 **kwargs):
        if self._is_raw(x):
            x = self._preprocessed(x, y, sample_weight, batch_size)
            y = sample_weight = batch_size = None
        return super().evaluate(x, y, batch_size=batch_size,
                                sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """`keras.Model.predict`; raw inputs go through `self.preprocessor`."""
        if self._is_raw(x):
            x = self._preprocessed(x, batch_size=batch_size)
            batch_size = None
        return super().predict(x, batch_size=batch_size, **kwargs)

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

    def _compile_extras(self):
        """The task's own `compile` arguments, saved with the compile
        config (none by default)."""
        return {}

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config.update(self._compile_extras())
        return config

    def compile_from_config(self, config):
        """Compiles a loaded model as it was saved, with its task's own
        arguments (Keras' version skips models whose `compile` is
        overridden, with a warning, and then leaves the optimizer's state
        unread). `jit_compile` is not carried over: it is a choice for the
        machine and backend that trained (XLA under TensorFlow on a CPU,
        say), not for the one that loads, which gets its default."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("jit_compile", None)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "backbone": keras.layers.serialize(self.backbone),
        }
        if getattr(self, "preprocessor", None) is not None:
            config["preprocessor"] = keras.layers.serialize(self.preprocessor)
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
