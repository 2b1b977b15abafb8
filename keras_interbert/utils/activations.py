import keras


@keras.saving.register_keras_serializable(package="keras_interbert")
def gelu_approximate(x):
    """GELU with the tanh approximation (Google BERT, keras-hub BERT)."""
    return keras.activations.gelu(x, approximate=True)


def hidden_activation(approximate_gelu):
    """The transformer activation: exact (erf) GELU unless asked otherwise."""
    return gelu_approximate if approximate_gelu else "gelu"
