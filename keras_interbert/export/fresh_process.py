"""Loads an exported SavedModel with TensorFlow alone and reports on it.

Run by path, never imported from the package, so that nothing of
keras_interbert (nor Keras) is loaded: the process imports TensorFlow, then
tensorflow-text for its ops, and the `tensorflow-serving-api` protos to read
the warmup file, as the model server does.

    python keras_interbert/export/fresh_process.py EXPORT_DIR REPORT.json \
        [--inputs INPUTS.npz --outputs OUTPUTS.npz]

The report (JSON) lists every op of the graph, split into core TensorFlow,
tensorflow-text and other ops, the forbidden ops found, each signature's
inputs and outputs, the warmup records replayed (and any that failed), and
the project modules found in `sys.modules` (none, or the check is void).
`INPUTS.npz` holds `SIGNATURE/INPUT` arrays (`SIGNATURE#i/INPUT` for the
i-th of several requests); each request is sent to its signature and its
outputs are written to `OUTPUTS.npz` under the same prefix.
"""
import argparse
import json
import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

FORBIDDEN_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def graph_ops(export_dir):
    """Every op type in the SavedModel's graph and function library."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name for f in graph.library.function}
        nodes = list(graph.node)
        for function in graph.library.function:
            nodes.extend(function.node_def)
        # A node whose op is a library function is a call, not an op.
        ops.update(n.op for n in nodes if n.op not in functions)
    return sorted(ops)


def classify_ops(ops):
    """Splits op names by who registers them; call before tensorflow_text."""
    core = [op for op in ops if op_def_registry.get(op) is not None]
    import tensorflow_text  # noqa: F401  (registers its ops)

    rest = [op for op in ops if op not in core]
    text = [op for op in rest if op_def_registry.get(op) is not None]
    other = [op for op in rest if op not in text]
    return core, text, other


def _to_numpy(value):
    value = value.numpy()
    if value.dtype == object:
        value = value.astype(str)
    return value


def _as_image_bytes(value):
    # Encoded images travel through the .npz as hex strings (binary data
    # does not survive a str array).
    return tf.constant([bytes.fromhex(v) for v in value.astype(str)],
                       tf.string)


def _as_tensor(value):
    if value.dtype.kind in "UO":
        return tf.constant(value.astype(str).tolist() if value.ndim else
                           str(value), tf.string)
    return tf.constant(value)


def replay_warmup(loaded, export_dir):
    """Runs every warmup record through its signature; returns a summary."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return {"present": False, "records": 0, "failures": []}
    from tensorflow_serving.apis import prediction_log_pb2

    records, failures = 0, []
    for raw in tf.data.TFRecordDataset(path):
        records += 1
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        request = log.predict_log.request
        name = request.model_spec.signature_name or "serving_default"
        try:
            inputs = {k: tf.constant(tf.make_ndarray(v))
                      for k, v in request.inputs.items()}
            outputs = loaded.signatures[name](**inputs)
            finite = all(np.all(np.isfinite(v.numpy()))
                         for v in outputs.values() if v.dtype.is_floating)
            if not finite:
                failures.append(f"record {records} ({name}): non-finite "
                                "outputs")
        except Exception as e:  # reported, not raised: list them all
            failures.append(f"record {records} ({name}): "
                            f"{type(e).__name__}: {str(e)[:300]}")
    return {"present": True, "records": records, "failures": failures}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir")
    parser.add_argument("report")
    parser.add_argument("--inputs")
    parser.add_argument("--outputs")
    args = parser.parse_args(argv)

    ops = graph_ops(args.export_dir)
    core, text, other = classify_ops(ops)
    loaded = tf.saved_model.load(args.export_dir)
    signatures = {}
    for name, fn in loaded.signatures.items():
        _, kwargs = fn.structured_input_signature
        signatures[name] = {
            "inputs": {k: {"dtype": v.dtype.name,
                           "shape": None if v.shape.rank is None
                           else v.shape.as_list()}
                       for k, v in sorted(kwargs.items())},
            "outputs": sorted(fn.structured_outputs),
        }
    called = {}
    if args.inputs:
        results = {}
        with np.load(args.inputs, allow_pickle=False) as data:
            requests = {}
            for key in data.files:
                signature, name = key.split("/", 1)
                requests.setdefault(signature, {})[name] = data[key]
        for signature, inputs in requests.items():
            # "NAME#i" is the i-th request to signature NAME.
            outputs = loaded.signatures[signature.split("#")[0]](
                **{k: _as_image_bytes(v) if k == "image_bytes"
                   else _as_tensor(v) for k, v in inputs.items()})
            called[signature] = sorted(outputs)
            for name, value in outputs.items():
                results[f"{signature}/{name}"] = _to_numpy(value)
        np.savez(args.outputs, **results)
    report = {
        "ops": ops,
        "core_ops": core,
        "tensorflow_text_ops": text,
        "other_ops": other,
        "forbidden_ops": [op for op in ops if op in FORBIDDEN_OPS],
        "signatures": signatures,
        "called": called,
        "warmup": replay_warmup(loaded, args.export_dir),
        "project_modules": sorted(
            m for m in sys.modules if m.split(".")[0] == "keras_interbert"),
        "tensorflow_version": tf.__version__,
    }
    with open(args.report, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
