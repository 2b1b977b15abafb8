"""SavedModel export for TensorFlow Serving (raw text in, tokenized in the graph).

`export_for_serving` writes a task as `saved_models/<name>/<version>/`;
`python -m keras_interbert.export` is its command line and
`python -m keras_interbert.export.validate DIR` checks an export offline
(docs/serving.md).
"""
from keras_interbert.export.export_options import ExportOptions
from keras_interbert.export.exporter import export_for_serving
from keras_interbert.export.exporter import next_version
from keras_interbert.export.exporter import serving_task
