"""Export a trained InterBERT task for TensorFlow Serving, then validate it.

    python recipes/export_serving.py runs/retrieval/retriever.keras \
        --name retrieval [--output-dir saved_models] [--max-regions 101]

The same options as `python -m keras_interbert.export` (see
docs/serving.md); this recipe always validates the export against the
model. The `.keras` file may come from any backend: the export runs on
TensorFlow.
"""
import os
import sys

# Before Keras is imported: the exporter writes TensorFlow graphs.
os.environ["KERAS_BACKEND"] = "tensorflow"

from keras_interbert.export.__main__ import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--validate" not in argv:
        argv.append("--validate")
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main, argv))
