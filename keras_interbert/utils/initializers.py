import keras


def interbert_kernel_initializer(stddev=0.02):
    """N(0, stddev): the initializer of every InterBERT kernel and embedding.

    0.02 is the published configuration's value (BERT's `initializer_range`).
    """
    return keras.initializers.RandomNormal(stddev=stddev)


def backbone_kernel_initializer(backbone):
    """The kernel initializer of a task head on `backbone`.

    Heads use the backbone's `initializer_range`, so a head added to a small
    configuration starts at the same scale as the layers below it.
    """
    return interbert_kernel_initializer(backbone.initializer_range)
