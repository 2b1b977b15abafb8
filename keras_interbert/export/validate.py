"""Offline validation of a serving export (the server binary is not needed).

    python -m keras_interbert.export.validate saved_models/retrieval/1 \
        [--model trained.keras] [--atol 1e-5]

Checks, failing with a list of every problem found:

- the export loads in a fresh process that imports TensorFlow and
  tensorflow-text only (`fresh_process.py`, run by path), and every
  signature answers requests of batch sizes 1 and 16; the batch of 16
  holds a text longer than the packed length, an empty string, an image
  without regions, an image with more regions than slots and padding rows
  holding NaN;
- every op of the graph is a core TensorFlow or a tensorflow-text op (no
  `PyFunc`/`EagerPyFunc`, nothing project-defined);
- every warmup record replays through its signature;
- `saved_model_cli show --all` reads the export and lists every signature
  with its inputs;
- with `--model`, every output matches the Keras model's own, computed on
  the same requests by the project's preprocessing (`to_backbone_regions`
  per image), within `--atol`.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from keras_interbert.export.warmup import example_inputs

METADATA_FILE = os.path.join("assets.extra", "interbert_export.json")
FRESH_PROCESS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "fresh_process.py")
VALIDATION_BATCH_SIZES = (1, 16)


class ExportValidationError(AssertionError):
    """An export that fails validation; the message lists every problem."""


def read_metadata(export_dir):
    path = os.path.join(export_dir, METADATA_FILE)
    if not os.path.exists(path):
        raise ExportValidationError(
            f"{export_dir}: no {METADATA_FILE}; not an export of "
            "keras_interbert.export.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _signature_of(metadata, name):
    """The metadata of signature `name` (`serving_default` is an alias)."""
    if name == "serving_default":
        name = metadata["serving_default"]
    return metadata["signatures"][name]


def validation_inputs(metadata, signature, batch_size, seed=0):
    """Requests for `signature`, with the edge cases in a batch of >= 5.

    Rows 0-4 of a large enough batch: a text twice the packed length, an
    empty string, an image with zero regions, an image whose regions all
    count and outnumber the slots, and padding rows holding NaN. Every image
    is given `max_regions + 3` region rows.
    """
    slots = metadata.get("max_regions") or 4
    if signature == "serving_default":
        signature = metadata["serving_default"]
    x = example_inputs(metadata, signature, batch_size, seed=seed,
                       num_given_regions=slots + 3)
    if "image_bytes" in metadata["signatures"][signature]["inputs"]:
        from keras_interbert.export.image_serving import example_image_bytes

        x["image_bytes"] = example_image_bytes(batch_size, seed)
    if batch_size >= 5:
        words = " ".join(["horse", "beach", "runs", "brown"]
                         * metadata["sequence_length"])
        for name in ("text", "question"):
            if name in x:
                x[name][0] = words
                x[name][1] = ""
        if "options" in x:
            x["options"][0, 0] = words
            x["options"][1, 1] = ""
        if "num_regions" in x:
            given = x["region_features"].shape[1]
            x["num_regions"][2] = 0
            x["num_regions"][3] = given
            x["num_regions"][4] = 2
            x["region_features"][4, 2:] = np.nan
            x["region_boxes"][4, 2:] = np.nan
    return x


def _npz_inputs(requests):
    """`{signature: [inputs, ...]}` as a flat dict for `fresh_process.py`."""
    flat = {}
    for signature, batches in requests.items():
        for i, inputs in enumerate(batches):
            for name, value in inputs.items():
                if name == "image_bytes":
                    value = np.array([bytes(v).hex() for v in value])
                elif value.dtype == object:
                    value = value.astype(str)
                flat[f"{signature}#{i}/{name}"] = value
    return flat


def run_fresh_process(export_dir, inputs=None, timeout=600):
    """Runs `fresh_process.py` on an export; returns `(report, outputs)`.

    Args:
        export_dir: the export.
        inputs: optional flat `{"SIGNATURE/INPUT": array}`; a signature
            name may carry a `#suffix` to send several requests to it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        # The process runs in another folder: the path must be absolute.
        command = [sys.executable, FRESH_PROCESS, os.path.abspath(export_dir),
                   os.path.join(tmp, "report.json")]
        if inputs:
            np.savez(os.path.join(tmp, "inputs.npz"), **inputs)
            command += ["--inputs", os.path.join(tmp, "inputs.npz"),
                        "--outputs", os.path.join(tmp, "outputs.npz")]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        env.pop("KERAS_BACKEND", None)
        result = subprocess.run(command, capture_output=True, text=True,
                                env=env, timeout=timeout,
                                cwd=os.path.dirname(FRESH_PROCESS))
        if result.returncode != 0:
            raise ExportValidationError(
                f"{export_dir}: the fresh TensorFlow process failed:\n"
                f"{result.stderr[-4000:]}")
        with open(os.path.join(tmp, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
        outputs = {}
        if inputs:
            with np.load(os.path.join(tmp, "outputs.npz")) as data:
                outputs = {k: data[k] for k in data.files}
    return report, outputs


def start_saved_model_cli(export_dir):
    """Starts `saved_model_cli show --dir DIR --all` (see `finish_...`)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
         "show", "--dir", export_dir, "--all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish_saved_model_cli(process, export_dir, timeout=600):
    """The text `saved_model_cli show --all` printed."""
    stdout, stderr = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise ExportValidationError(
            f"saved_model_cli show --all failed on {export_dir}:\n"
            f"{stderr[-4000:]}")
    return stdout


def pipeline_inputs(export_dir, metadata, inputs, columns=("text",)):
    """Backbone inputs of a request, built by the project's data pipeline.

    Text goes through `InterBERTTokenizer` (the export's vocabulary) and
    `InterBERTTextPacker` as configured in the export; each image goes
    through `to_backbone_regions` on its first `num_regions` rows, one
    example at a time (the serving graph does the same batched, by its own
    code). `columns` names the text inputs packed together.
    """
    import tensorflow as tf

    from keras_interbert.data.region_features import to_backbone_regions
    from keras_interbert.preprocessing import InterBERTTextPacker
    from keras_interbert.preprocessing import InterBERTTokenizer

    tokenizer = InterBERTTokenizer(
        os.path.join(export_dir, "assets", "vocabulary.txt"),
        lowercase=metadata["lowercase"], special_tokens_in_strings=False)
    packer = InterBERTTextPacker(
        metadata["sequence_length"], cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id,
        truncate_after_packing=metadata["truncate_after_packing"])
    ids = [tokenizer(tf.constant(np.asarray(inputs[c]).astype(str).tolist(),
                                 tf.string)) for c in columns]
    x = {k: v.numpy() for k, v in packer(*ids).items()}
    if "num_regions" not in inputs:
        return x
    rows = []
    for i in range(len(inputs["num_regions"])):
        n = int(inputs["num_regions"][i])
        height, width = inputs["image_size"][i]
        rows.append(to_backbone_regions(
            {"features": inputs["region_features"][i, :n],
             "boxes": inputs["region_boxes"][i, :n],
             "image_h": height, "image_w": width},
            max_regions=metadata["max_regions"], policy="skip",
            include_class_probs=False))
    for k in ("region_features", "region_locations", "region_mask"):
        x[k] = np.stack([r[k].numpy() for r in rows])
    return x


def as_numpy(value):
    """A backend tensor as float32 numpy (for the Keras references)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), np.float32)


def softmax(logits):
    """Softmax over the last axis, in numpy."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def keras_reference(model, export_dir, metadata, signature, inputs,
                    image_extractor=None):
    """The Keras model's outputs for one request (see `pipeline_inputs`).

    Runs under any Keras backend. `score_image` needs `image_extractor`
    (without it nothing is compared): the images go through the Python
    extraction pipeline (`keras_interbert.vision.extract_regions`), then
    the `score` reference. Every other signature is answered by its
    task's `reference` (`keras_interbert.export.tasks`).
    """
    if signature == "score_image":
        if image_extractor is None:
            return {}
        from keras_interbert.export.image_serving import python_score_inputs

        return keras_reference(
            model, export_dir, metadata, "score", python_score_inputs(
                image_extractor, inputs,
                metadata["image_extractor"]["grid_levels"]))

    from keras_interbert.export.tasks import task_named

    task = task_named(metadata["task"])
    if signature not in metadata["signatures"]:
        raise ValueError(f"unknown signature {signature!r}; the export has "
                         f"{sorted(metadata['signatures'])}.")
    return task.reference(model, export_dir, metadata, signature, inputs)


def _check_report(report, metadata, problems):
    if report["other_ops"]:
        problems.append("ops outside core TensorFlow and tensorflow-text: "
                        f"{report['other_ops']}")
    if report["forbidden_ops"]:
        problems.append(f"forbidden ops: {report['forbidden_ops']}")
    if report["project_modules"]:
        problems.append("the fresh process imported project modules: "
                        f"{report['project_modules']}")
    warmup = report["warmup"]
    if not warmup["present"]:
        problems.append("no assets.extra/tf_serving_warmup_requests")
    elif not warmup["records"]:
        problems.append("the warmup file holds no records")
    problems.extend(f"warmup {f}" for f in warmup["failures"])
    expected = set(metadata["signature_names"]) | {"serving_default"}
    found = set(report["signatures"])
    if found != expected:
        problems.append(f"signatures {sorted(found)}; expected "
                        f"{sorted(expected)}")
    for name in expected & found:
        described = _signature_of(metadata, name)
        got = report["signatures"][name]
        if set(got["inputs"]) != set(described["inputs"]):
            problems.append(f"signature {name}: inputs {sorted(got['inputs'])}"
                            f", expected {sorted(described['inputs'])}")
        if set(got["outputs"]) != set(described["outputs"]):
            problems.append(f"signature {name}: outputs {got['outputs']}, "
                            f"expected {sorted(described['outputs'])}")


def validate_export(export_dir, model=None, atol=1e-5,
                    batch_sizes=VALIDATION_BATCH_SIZES, run_cli=True,
                    image_extractor=None):
    """Validates an export; raises `ExportValidationError` listing problems.

    Args:
        export_dir: the export (a version directory).
        model: optional Keras model (or `.keras` path) to match outputs
            against.
        atol: largest absolute difference from the Keras outputs.
        batch_sizes: batch sizes of the requests sent to every signature.
        run_cli: also read the export with `saved_model_cli show --all`.
        image_extractor: the `RegionFeatureExtractor` (or `.keras` path) of
            a `score_image` export, to match that signature too.

    Returns:
        A summary dict: the fresh process's report, the largest difference
        from the Keras model per signature output, and the number of
        requests answered.
    """
    export_dir = os.fspath(export_dir)
    metadata = read_metadata(export_dir)
    requests = {name: [validation_inputs(metadata, name, b, seed=b)
                       for b in batch_sizes]
                for name in metadata["signature_names"] + ["serving_default"]}
    # Both read the export: run them side by side.
    cli_process = start_saved_model_cli(export_dir) if run_cli else None
    try:
        report, outputs = run_fresh_process(export_dir, _npz_inputs(requests))
    except BaseException:
        if cli_process is not None:
            cli_process.kill()
        raise
    problems = []
    _check_report(report, metadata, problems)
    for key, value in outputs.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            problems.append(f"{key}: non-finite outputs")
        if key.endswith("/match_probability") and not np.all(
                (value >= 0) & (value <= 1)):
            problems.append(f"{key}: probabilities outside [0, 1]")
    for signature, batches in requests.items():
        for i, inputs in enumerate(batches):
            size = len(next(iter(inputs.values())))
            for output in _signature_of(metadata, signature)["outputs"]:
                value = outputs.get(f"{signature}#{i}/{output}")
                if value is None or value.shape[:1] != (size,):
                    problems.append(
                        f"{signature} (batch {size}): output {output} is "
                        f"{None if value is None else value.shape}")
    differences = {}
    if model is not None:
        if isinstance(model, (str, os.PathLike)):
            from keras_interbert.models.loading import load_interbert

            model = load_interbert(model)
        if isinstance(image_extractor, (str, os.PathLike)):
            import keras

            image_extractor = keras.saving.load_model(image_extractor,
                                                      compile=False)
        for signature, batches in requests.items():
            name = (metadata["serving_default"]
                    if signature == "serving_default" else signature)
            for i, inputs in enumerate(batches):
                expected = keras_reference(model, export_dir, metadata, name,
                                           inputs, image_extractor)
                for output, want in expected.items():
                    got = outputs[f"{signature}#{i}/{output}"]
                    diff = float(np.max(np.abs(got.astype(np.float64)
                                               - want.astype(np.float64))))
                    key = f"{signature}/{output}"
                    differences[key] = max(differences.get(key, 0.0), diff)
                    if diff > atol:
                        problems.append(
                            f"{key} (batch {len(want)}) differs from the "
                            f"Keras model by {diff:.3g} > {atol}")
    cli = None
    if run_cli:
        cli = finish_saved_model_cli(cli_process, export_dir)
        for name in report["signatures"]:
            if f"signature_def['{name}']" not in cli:
                problems.append(f"saved_model_cli does not list {name}")
        for name in _signature_of(metadata, "serving_default")["inputs"]:
            if f"inputs['{name}']" not in cli:
                problems.append(f"saved_model_cli does not list input {name}")
    if problems:
        raise ExportValidationError(
            f"{export_dir} fails validation:\n- " + "\n- ".join(problems))
    return {"report": report, "differences": differences,
            "requests": sum(len(b) for b in requests.values()),
            "saved_model_cli": cli}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.export.validate",
        description="Validate a SavedModel export offline.")
    parser.add_argument("export_dir")
    parser.add_argument("--model", help="the .keras file the export was made "
                        "from, to match outputs against")
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--image-extractor", default=None,
                        help="the extractor .keras of a score_image export")
    parser.add_argument("--no-cli", action="store_true",
                        help="skip `saved_model_cli show --all`")
    args = parser.parse_args(argv)
    try:
        summary = validate_export(args.export_dir, model=args.model,
                                  image_extractor=args.image_extractor,
                                  atol=args.atol, run_cli=not args.no_cli)
    except ExportValidationError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    report = summary["report"]
    print(f"{args.export_dir}: OK")
    print(f"  signatures: {sorted(report['signatures'])}")
    print(f"  requests answered: {summary['requests']} (batch sizes "
          f"{list(VALIDATION_BATCH_SIZES)}, edge cases included)")
    print(f"  ops: {len(report['ops'])} ({len(report['core_ops'])} core "
          f"TensorFlow, tensorflow-text: {report['tensorflow_text_ops']})")
    print(f"  warmup records replayed: {report['warmup']['records']}")
    for key, diff in sorted(summary["differences"].items()):
        print(f"  max |SavedModel - Keras| {key}: {diff:.2e}")
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
