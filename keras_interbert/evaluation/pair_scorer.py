import hashlib

import keras
import numpy as np

from keras_interbert.models.input_checks import BACKBONE_INPUT_NAMES


class PairScorer:
    """Scores batches of (caption, image) pairs with a cross-encoder.

    The score of a pair is the image-text matching log-odds
    `itm_logits[:, 0] - itm_logits[:, 1]` (class 0 = matched). It orders the
    pairs exactly as the match probability `softmax(itm_logits)[:, 0]` does,
    but does not saturate: a float32 probability is exactly 1.0 for every
    margin above about 17, which would turn a confident model's best
    candidates into ties.

    `model` may be any Keras model whose output is a dict holding
    `itm_logits` `[B, 2]` (an `InterBERTPretrainer`, a retrieval task). A
    functional model is cut down to the part that computes `itm_logits`, so
    no other head runs (the pretrainer's masked-segment logits alone are
    `B x T x 30522` floats). Anything else callable is taken as a scoring
    function: it receives the six backbone inputs as numpy arrays and
    returns the scores `[B]`, or a dict holding `itm_logits`.

    Args:
        model: a Keras model or a callable, as above.
        name: a name for messages and score-file fingerprints (default: the
            model's name or the function's qualified name).
        jit_compile: `"auto"`, `True` or `False`: how the cut-down model of
            a functional `model` runs, as Keras' `jit_compile`. `"auto"` is
            Keras' choice (no XLA on a CPU-only machine, PyTorch eager);
            `True` compiles it with XLA (TensorFlow, JAX) or `torch.compile`
            (PyTorch: about 1.25x the pairs per second of eager on a CPU,
            after a first call that compiles for minutes; one compilation
            per batch shape, and grid scoring keeps one shape). The scores
            are the same within float32 rounding.

    Examples:
    ```python
    scorer = PairScorer(keras.saving.load_model("pretrained.keras"))
    scores = scorer(x)  # float32 [B], x the six backbone inputs
    scorer = PairScorer(lambda x: x["region_mask"].sum(axis=1) * 1.0)
    ```
    """

    def __init__(self, model, name=None, jit_compile="auto"):
        if not callable(model):
            raise TypeError("model must be a Keras model or a callable; "
                            f"received {type(model).__name__}.")
        if not (jit_compile == "auto" if isinstance(jit_compile, str)
                else isinstance(jit_compile, (bool, np.bool_))):
            raise ValueError("jit_compile must be 'auto', True or False; "
                             f"received {jit_compile!r}.")
        self.jit_compile = (jit_compile if jit_compile == "auto"
                            else bool(jit_compile))
        self.model = model
        self._predict = None
        if isinstance(model, keras.Model):
            self.name = name or model.name
            self._predict = self._keras_predictor(model)
        else:
            self.name = name or getattr(model, "__qualname__",
                                        type(model).__name__)

    def _keras_predictor(self, model):
        output = getattr(model, "output", None) if _is_functional(model) else None
        if isinstance(output, dict):
            if "itm_logits" not in output:
                raise ValueError(
                    f"model {model.name!r} outputs {sorted(output)}; a "
                    "cross-encoder scorer needs 'itm_logits' [B, 2].")
            inputs, logits = model.input, output["itm_logits"]
            from keras_interbert.models.interbert_pretrainer import (
                InterBERTPretrainer,
            )
            if isinstance(model, InterBERTPretrainer):
                # Its matching head on the backbone's pooled-only call (the
                # retriever's graph already makes that call).
                inputs = model.backbone.input
                pooled = model.backbone(inputs, pooled_only=True)
                logits = model.itm_head(pooled["text_pooled"],
                                        pooled["image_pooled"])
            submodel = keras.Model(inputs, logits, name=f"{model.name}_itm")
            if self.jit_compile != "auto":
                submodel.jit_compile = self.jit_compile
            return submodel.predict_on_batch

        def predict(x):
            outputs = model(x, training=False)
            if not isinstance(outputs, dict) or "itm_logits" not in outputs:
                raise ValueError(
                    f"model {model.name!r} must return a dict with "
                    f"'itm_logits' [B, 2]; received {type(outputs).__name__}.")
            return outputs["itm_logits"]

        return predict

    def __call__(self, inputs):
        x = {k: np.asarray(inputs[k]) for k in BACKBONE_INPUT_NAMES}
        if self.jit_compile is True and keras.config.backend() == "torch":
            # `torch.compile` refuses read-only arrays (`tf.data`'s numpy
            # batches are views of TensorFlow's buffers): copy those.
            x = {k: v if v.flags.writeable else v.copy()
                 for k, v in x.items()}
        batch = len(x["token_ids"])
        if self._predict is not None:
            return _margin(self._predict(x), batch, self.name)
        outputs = self.model(x)
        if isinstance(outputs, dict):
            if "itm_logits" not in outputs:
                raise ValueError(
                    f"scorer {self.name!r} returned a dict with keys "
                    f"{sorted(outputs)}; expected 'itm_logits' [B, 2].")
            return _margin(outputs["itm_logits"], batch, self.name)
        scores = np.asarray(keras.ops.convert_to_numpy(outputs), np.float32)
        if scores.shape != (batch,):
            raise ValueError(f"scorer {self.name!r} must return scores [B="
                             f"{batch}]; received shape {scores.shape}.")
        return scores

    def fingerprint(self):
        """A digest of the scorer: the model's weights, or the function's name.

        Resumed scoring refuses a score file written by another scorer.
        """
        digest = hashlib.sha1(self.name.encode("utf-8"))
        if isinstance(self.model, keras.Model):
            for weight in self.model.weights:
                digest.update(weight.path.encode("utf-8"))
                digest.update(np.ascontiguousarray(
                    keras.ops.convert_to_numpy(weight.value)).tobytes())
        return digest.hexdigest()


def _is_functional(model):
    return hasattr(model, "_outputs_struct")


def _margin(logits, batch, name):
    logits = np.asarray(keras.ops.convert_to_numpy(logits), np.float32)
    if logits.shape != (batch, 2):
        raise ValueError(f"{name!r}: itm_logits must be [B={batch}, 2]; "
                         f"received shape {logits.shape}.")
    return logits[:, 0] - logits[:, 1]
