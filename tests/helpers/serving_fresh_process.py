"""Loads SavedModel exports in a process that imports TensorFlow only.

Usage: python tests/helpers/serving_fresh_process.py OUT_DIR EXPORT_DIR INPUTS.npz
           [EXPORT_DIR INPUTS.npz ...]

Imports tensorflow, then tensorflow_text (for its ops), and the
tensorflow-serving-api protos to read warmup records; nothing from
keras_interbert. For the k-th export it writes `OUT_DIR/outputs_k.npz`
(`SIGNATURE#i/OUTPUT` for the request `SIGNATURE#i/INPUT` of INPUTS.npz)
and one `OUT_DIR/report.json`: op types (core TensorFlow, tensorflow-text,
other), warmup records replayed, and the project modules loaded (none).
"""
import json
import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

out_dir = sys.argv[1]
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))


def op_types(export_dir):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    calls = {f.signature.name for f in graph.library.function}
    nodes = list(graph.node) + [n for f in graph.library.function
                                for n in f.node_def]
    return {n.op for n in nodes if n.op not in calls}


ops = {d: op_types(d) for d, _ in pairs}
core = {d: {op for op in o if op_def_registry.get(op) is not None}
        for d, o in ops.items()}
import tensorflow_text  # noqa: E402,F401
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

report = {}
for k, (export_dir, inputs_path) in enumerate(pairs):
    loaded = tf.saved_model.load(export_dir)
    outputs = {}
    with np.load(inputs_path) as data:
        requests = {}
        for key in data.files:
            request, name = key.split("/")
            value = data[key]
            requests.setdefault(request, {})[name] = tf.constant(
                value.tolist() if value.dtype.kind == "U" else value,
                tf.string if value.dtype.kind == "U" else None)
    for request, inputs in requests.items():
        result = loaded.signatures[request.split("#")[0]](**inputs)
        for name, value in result.items():
            value = value.numpy()
            outputs[f"{request}/{name}"] = value
    np.savez(os.path.join(out_dir, f"outputs_{k}.npz"), **outputs)

    warmup = 0
    warmup_path = os.path.join(export_dir, "assets.extra",
                               "tf_serving_warmup_requests")
    for raw in tf.data.TFRecordDataset(warmup_path):
        request = prediction_log_pb2.PredictionLog.FromString(
            raw.numpy()).predict_log.request
        loaded.signatures[request.model_spec.signature_name](**{
            name: tf.constant(tf.make_ndarray(proto))
            for name, proto in request.inputs.items()})
        warmup += 1
    other = ops[export_dir] - core[export_dir]
    report[export_dir] = {
        "signatures": sorted(loaded.signatures),
        "core_ops": sorted(core[export_dir]),
        "text_ops": sorted(op for op in other
                           if op_def_registry.get(op) is not None),
        "other_ops": sorted(op for op in other
                            if op_def_registry.get(op) is None),
        "warmup_records": warmup,
    }
report["project_modules"] = sorted(
    m for m in sys.modules if m.startswith("keras_interbert"))
with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
