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

The requests and the processes that answer them are in
`validation_requests.py`, the Keras side in `reference.py`; their names stay
importable from here.
"""
import argparse
import os
import sys

import numpy as np

from keras_interbert.export.reference import as_numpy  # noqa: F401
from keras_interbert.export.reference import keras_reference
from keras_interbert.export.reference import pipeline_inputs  # noqa: F401
from keras_interbert.export.reference import softmax  # noqa: F401
from keras_interbert.export.validation_requests import ExportValidationError
from keras_interbert.export.validation_requests import VALIDATION_BATCH_SIZES
from keras_interbert.export.validation_requests import _npz_inputs
from keras_interbert.export.validation_requests import _signature_of
from keras_interbert.export.validation_requests import finish_saved_model_cli
from keras_interbert.export.validation_requests import read_metadata
from keras_interbert.export.validation_requests import run_fresh_process
from keras_interbert.export.validation_requests import start_saved_model_cli
from keras_interbert.export.validation_requests import validation_inputs


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
