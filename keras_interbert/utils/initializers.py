import keras


def interbert_kernel_initializer(stddev=0.02):
    """N(0, 0.02), the initializer of every InterBERT kernel and embedding."""
    return keras.initializers.RandomNormal(stddev=stddev)
