"""One stage of the pretrain -> finetune reload chain, in its own process.

    python tests/helpers/task_round_trip.py pretrain OUT   # fit a tiny pretrainer, save it
    python tests/helpers/task_round_trip.py finetune OUT   # load it, fit a retriever, save it
    python tests/helpers/task_round_trip.py predict OUT NAME  # load NAME.keras, save outputs

Every stage writes the outputs of the model it saved (or loaded) on fixed
inputs to `OUT/<name>.<backend>.npz`, so the test can compare the outputs
after each load with the outputs before each save, across processes and
backends.
"""
import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))  # tests/
from conftest import TINY_BACKBONE  # noqa: E402
from conftest import random_backbone_inputs  # noqa: E402

import keras_interbert  # noqa: E402

NUM_CLASSES = 9


def pretraining_batch(batch=8, seed=1):
    x = random_backbone_inputs(batch=batch, seed=seed)
    rng = np.random.default_rng(seed)
    T, R = x["token_ids"].shape[1], x["region_mask"].shape[1]
    targets = rng.random((batch, R, NUM_CLASSES)).astype("float32")
    y = {
        "msm_labels": rng.integers(0, TINY_BACKBONE["vocabulary_size"],
                                   (batch, T)).astype("int32"),
        "msm_weights": (rng.random((batch, T)) < 0.3).astype("float32"),
        "mrm_targets": targets / targets.sum(-1, keepdims=True),
        "mrm_weights": (rng.random((batch, R)) < 0.3).astype("float32"),
        "itm_labels": rng.integers(0, 2, batch).astype("int32"),
    }
    return x, y


def outputs(model, x):
    out = model.predict(x, verbose=0)
    if not isinstance(out, dict):
        out = {"output": out}
    return {k: np.asarray(v) for k, v in out.items()}


def save(model, out, name, x):
    model.save(os.path.join(out, f"{name}.keras"))
    np.savez(os.path.join(out, f"{name}.saved.npz"), **outputs(model, x))


def main(stage, out, name=None):
    keras.utils.set_random_seed(0)
    x, y = pretraining_batch()
    if stage == "pretrain":
        model = keras_interbert.InterBERTPretrainer(
            keras_interbert.InterBERTBackbone(**TINY_BACKBONE), NUM_CLASSES)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(x, y, epochs=2, batch_size=4, verbose=0)
        save(model, out, "pretrained", x)
    elif stage == "finetune":
        path = os.path.join(out, "pretrained.keras")
        pretrainer = keras_interbert.load_interbert(path)
        np.savez(os.path.join(out, "pretrained.loaded.npz"),
                 **outputs(pretrainer, x))
        # With a preprocessor: the fresh process of the "predict" stage
        # must find its class registered by `import keras_interbert` alone.
        from keras_interbert.preprocessing import InterBERTRetrieverPreprocessor
        from keras_interbert.preprocessing import InterBERTTokenizer

        size = TINY_BACKBONE["vocabulary_size"]
        vocabulary = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                      + [f"w{i}" for i in range(size - 5)])
        preprocessor = InterBERTRetrieverPreprocessor(
            InterBERTTokenizer(vocabulary=vocabulary), sequence_length=7,
            max_regions=4)
        retriever = keras_interbert.InterBERTRetriever.from_pretrained(
            path, preprocessor=preprocessor)
        before = [np.array(v) for v in retriever.trainable_weights]
        retriever.compile(optimizer=keras.optimizers.Adam(1e-3))
        retriever.fit(x, y["itm_labels"], epochs=2, batch_size=4, verbose=0)
        # Attention key biases get no gradient (the softmax over keys
        # cancels a per-query constant); every other variable must move.
        unchanged = [v.path for a, v in zip(before, retriever.trainable_weights)
                     if np.allclose(a, keras.ops.convert_to_numpy(v))
                     and not v.path.endswith("key/bias")]
        assert not unchanged, f"finetuning left {unchanged} unchanged"
        save(retriever, out, "finetuned", x)
    elif stage == "predict":
        path = os.path.join(out, f"{name}.keras")
        model = keras_interbert.load_interbert(path)
        np.savez(os.path.join(out, f"{name}.loaded.npz"), **outputs(model, x))
        # keras.saving itself, with the training state: the task's compile
        # arguments and the optimizer's step come back, without a warning.
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = keras.saving.load_model(path)
        print("preprocessor", type(model.preprocessor).__name__,
              "optimizer iterations", int(model.optimizer.iterations))
    print("backend", keras.config.backend(), "stage", stage, "done")


if __name__ == "__main__":
    main(*sys.argv[1:])
