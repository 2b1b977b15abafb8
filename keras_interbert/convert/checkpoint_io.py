"""Reading tensors from checkpoints and assigning them to Keras variables."""
import os

import numpy as np


def load_state_dict(path):
    """A `{name: float32 numpy array}` from `.bin`/`.pt`, `.safetensors` or `.npz`.

    A `.npz` may prefix names with `weights/` (as the project's fixtures do);
    the prefix is dropped. Torch is imported only for the pickle formats.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at '{path}'.")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            tensors = load_file(path)
        except Exception as e:  # safetensors' own error type
            raise ValueError(f"Checkpoint '{path}' is not a readable "
                             f".safetensors file ({e}).") from None
    elif lower.endswith(".npz"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"Checkpoint '{path}' is not a readable .npz "
                             f"({e}).") from None
        with data:
            prefixed = any(k.startswith("weights/") for k in data.files)
            tensors = {}
            for key in data.files:
                if prefixed:
                    if key.startswith("weights/"):
                        tensors[key[len("weights/"):]] = data[key]
                elif data[key].dtype.kind in "fiu":
                    tensors[key] = data[key]
    elif lower.endswith((".bin", ".pt", ".pth")):
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors alike
            raise ValueError(f"Checkpoint '{path}' cannot be read as a "
                             f"PyTorch state dict ({type(e).__name__}: "
                             f"{e}).") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"),
                                                  dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(
                f"Checkpoint '{path}' holds a {type(state).__name__}, not a "
                "state dict ({name: tensor}).")
        not_tensors = sorted(str(k) for k, v in state.items()
                             if not isinstance(v, torch.Tensor))
        if not_tensors:
            raise ValueError(
                f"Checkpoint '{path}': the entries {not_tensors[:5]} are not "
                "tensors; expected a state dict ({name: tensor}).")
        tensors = {k: v.detach().float().numpy() for k, v in state.items()}
    else:
        raise ValueError(
            f"Unsupported checkpoint '{path}': expected a file ending in "
            "'.bin', '.pt', '.pth', '.safetensors' or '.npz'."
        )
    if not tensors:
        raise ValueError(f"Checkpoint '{path}' holds no tensors.")
    # Strip a `module.` prefix left by DataParallel/DistributedDataParallel.
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    # A NaN or infinite weight makes every output NaN; refuse it here, where
    # the file and the tensor can be named.
    bad = sorted(k for k, v in tensors.items() if not np.isfinite(v).all())
    if bad:
        count = int(sum((~np.isfinite(tensors[k])).sum() for k in bad))
        raise ValueError(
            f"Checkpoint '{path}' holds {count} NaN or infinite values, in "
            f"the tensors {bad[:5]}{' ...' if len(bad) > 5 else ''}; the "
            "checkpoint is damaged.")
    return tensors


class WeightAssigner:
    """Assigns source tensors to Keras variables and accounts for both sides.

    `take(name)` marks a source tensor consumed; `assign(variable, value)`
    marks a variable assigned. `finish()` raises a `ValueError` listing any
    source tensor not consumed and any variable of `model` not assigned
    (besides `allow_unassigned`), so a converter can never silently drop or
    miss a weight.
    """

    def __init__(self, source, source_label):
        self.source = source
        self.source_label = source_label
        self.consumed = set()
        self.assigned = set()

    def has(self, name):
        return name in self.source

    def take(self, name):
        if name not in self.source:
            raise ValueError(
                f"{self.source_label}: tensor '{name}' is missing from the "
                "checkpoint."
            )
        self.consumed.add(name)
        return self.source[name]

    def skip(self, name):
        """Consume a tensor on purpose (e.g. a buffer with no weight)."""
        self.consumed.add(name)

    def assign(self, variable, value, what, layout=None):
        """`layout(value)` turns the source layout into the variable's."""
        value = np.asarray(value)
        source_shape = value.shape
        if layout is not None:
            try:
                value = layout(value)
            except ValueError:
                value = None
        if value is None or tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"{self.source_label}: '{what}' has shape {source_shape}, "
                f"which does not fit the Keras variable '{variable.path}' of "
                f"shape {tuple(variable.shape)}."
            )
        variable.assign(value.astype(variable.dtype))
        self.assigned.add(id(variable))

    def finish(self, model, allow_unassigned=()):
        leftover = sorted(set(self.source) - self.consumed)
        allowed = {id(v) for v in allow_unassigned}
        unassigned = sorted(
            v.path for v in model.weights
            if id(v) not in self.assigned and id(v) not in allowed
        )
        if leftover or unassigned:
            raise ValueError(
                f"{self.source_label}: conversion incomplete. Tensors of the "
                f"checkpoint not used: {leftover}. Keras weights not "
                f"assigned: {unassigned}."
            )


def assign_transformer_layer(assigner, layer, get, label):
    """Loads one BERT block into an `InterBERTTransformerLayer`.

    `get(part)` returns a PyTorch-layout tensor (`Linear` weights `[out, in]`)
    for part names `query.weight`, `query.bias`, `key.*`, `value.*`,
    `attention_output.*`, `attention_layer_norm.{gamma,beta}`,
    `intermediate.*`, `output.*`, `output_layer_norm.{gamma,beta}`.
    """
    attention = layer._self_attention_layer
    heads = attention.num_heads
    head_dim = attention.key_dim
    for part, dense in (
        ("query", attention._query_dense),
        ("key", attention._key_dense),
        ("value", attention._value_dense),
    ):
        assigner.assign(dense.kernel, get(f"{part}.weight"),
                        f"{label}.{part}.weight",
                        lambda w: w.T.reshape(-1, heads, head_dim))
        assigner.assign(dense.bias, get(f"{part}.bias"), f"{label}.{part}.bias",
                        lambda b: b.reshape(heads, head_dim))
    out = attention._output_dense
    assigner.assign(out.kernel, get("attention_output.weight"),
                    f"{label}.attention_output.weight",
                    lambda w: w.T.reshape(heads, head_dim, -1))
    assigner.assign(out.bias, get("attention_output.bias"),
                    f"{label}.attention_output.bias")
    for part, norm in (
        ("attention_layer_norm", layer._self_attention_layer_norm),
        ("output_layer_norm", layer._feedforward_layer_norm),
    ):
        assigner.assign(norm.gamma, get(f"{part}.gamma"), f"{label}.{part}.gamma")
        assigner.assign(norm.beta, get(f"{part}.beta"), f"{label}.{part}.beta")
    for part, dense in (
        ("intermediate", layer._feedforward_intermediate_dense),
        ("output", layer._feedforward_output_dense),
    ):
        assigner.assign(dense.kernel, get(f"{part}.weight"),
                        f"{label}.{part}.weight", np.transpose)
        assigner.assign(dense.bias, get(f"{part}.bias"), f"{label}.{part}.bias")


def assign_dense(assigner, dense, weight, bias, label):
    """A PyTorch `Linear` (`[out, in]` weight) into a Keras `Dense`."""
    assigner.assign(dense.kernel, weight, f"{label}.weight", np.transpose)
    assigner.assign(dense.bias, bias, f"{label}.bias")


def take_layer_norm(assigner, prefix):
    """`(gamma, beta)` of a LayerNorm saved as `weight`/`bias` or `gamma`/`beta`."""
    if assigner.has(f"{prefix}.weight") or not assigner.has(f"{prefix}.gamma"):
        return assigner.take(f"{prefix}.weight"), assigner.take(f"{prefix}.bias")
    return assigner.take(f"{prefix}.gamma"), assigner.take(f"{prefix}.beta")


def assign_layer_norm(assigner, norm, gamma, beta, label):
    assigner.assign(norm.gamma, gamma, f"{label}.weight")
    assigner.assign(norm.beta, beta, f"{label}.bias")


_TORCH_BERT_LAYER_NAMES = {
    "query.weight": "attention.self.query.weight",
    "query.bias": "attention.self.query.bias",
    "key.weight": "attention.self.key.weight",
    "key.bias": "attention.self.key.bias",
    "value.weight": "attention.self.value.weight",
    "value.bias": "attention.self.value.bias",
    "attention_output.weight": "attention.output.dense.weight",
    "attention_output.bias": "attention.output.dense.bias",
    "attention_layer_norm.gamma": "attention.output.LayerNorm.weight",
    "attention_layer_norm.beta": "attention.output.LayerNorm.bias",
    "intermediate.weight": "intermediate.dense.weight",
    "intermediate.bias": "intermediate.dense.bias",
    "output.weight": "output.dense.weight",
    "output.bias": "output.dense.bias",
    "output_layer_norm.gamma": "output.LayerNorm.weight",
    "output_layer_norm.beta": "output.LayerNorm.bias",
}


def torch_layer_getter(assigner, prefix):
    """`get(part)` over a PyTorch BERT block named `{prefix}.attention...`.

    Accepts the old `gamma`/`beta` LayerNorm names as well.
    """

    def get(part):
        name = f"{prefix}.{_TORCH_BERT_LAYER_NAMES[part]}"
        if not assigner.has(name) and "LayerNorm" in name:
            old = name.replace(".weight", ".gamma").replace(".bias", ".beta")
            if assigner.has(old):
                name = old
        return assigner.take(name)

    return get
