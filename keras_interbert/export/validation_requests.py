"""The requests an export is validated with and the processes that answer
them: a fresh TensorFlow process (`fresh_process.py`) and `saved_model_cli`.
"""
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
