import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs

from keras_interbert import InterBERTBackbone
from keras_interbert import InterBERTPretrainer


# Keras's iterators under JAX and PyTorch warn when a data set of unknown
# length ends, which is this test's second case.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize("known_length", [True, False])
def test_evaluate_logs_the_mean_over_a_data_set_of_any_length(known_length):
    # A data set whose length tf.data cannot know (a filter) once made
    # TensorFlow add a phantom empty batch to the count-weighted metrics.
    model = InterBERTPretrainer(InterBERTBackbone(**TINY_BACKBONE), 11)
    model.compile(optimizer="adam")
    batches = []
    rng = np.random.default_rng(0)
    for seed in range(3):
        x = random_backbone_inputs(seed=seed)
        y = {"msm_labels": rng.integers(1, 120, (2, 7)).astype("int32"),
             "msm_weights": (rng.random((2, 7)) < 0.5).astype("float32"),
             "mrm_targets": np.full((2, 5, 11), 1 / 11, "float32"),
             "mrm_weights": np.array([[0, 1, 0, 0, 0], [0, 0, 1, 1, 0]], "float32"),
             "itm_labels": np.array([0, seed % 2], "int32")}
        batches.append((x, y))
    expected = {}
    for x, y in batches:
        for k, v in model.pretraining_losses(y, model(x, training=False)).items():
            expected.setdefault(k, []).append(
                float(keras.ops.convert_to_numpy(v)))
    ds = tf.data.Dataset.from_generator(
        lambda: iter(batches),
        output_signature=tf.nest.map_structure(
            lambda a: tf.TensorSpec(a.shape, a.dtype), batches[0]))
    if known_length:
        ds = ds.apply(tf.data.experimental.assert_cardinality(3))
    logs = model.evaluate(ds, verbose=0, return_dict=True)
    # Every batch has the same size and ITM count: plain means.
    for name in ("loss", "itm_loss", "itm_accuracy"):
        assert logs[name] == pytest.approx(np.mean(expected[name]), rel=1e-5), name
