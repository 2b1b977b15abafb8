"""A quiet TensorFlow start-up on machines without an NVIDIA GPU.

TensorFlow's CUDA-enabled wheel writes several lines to stderr while it
loads and when it first looks for devices: oneDNN and CPU-feature notices,
"Could not find cuda drivers", a `cuInit` error and absl's "All log
messages before absl::InitializeLog()". Some are printed before TensorFlow
reads `TF_CPP_MIN_LOG_LEVEL`, so no setting silences them. On a machine
without a GPU none of them is news, and a newcomer takes them for a broken
install.

`quiet_startup()` sets `TF_CPP_MIN_LOG_LEVEL=2` and `GRPC_VERBOSITY=ERROR`
unless they are set already, and on a machine without an NVIDIA driver it
imports TensorFlow and lists its devices with the process's stderr pointed
at /dev/null, so those lines go nowhere; anything TensorFlow reports later
is shown as usual. Python's absl logger is set to errors only (it carries
SavedModel export's warnings about untraced functions). On a machine with
an NVIDIA driver, or with `INTERBERT_VERBOSE_STARTUP=1`, TensorFlow's
start-up messages are left alone: there they can matter.

`keras_interbert/__init__.py` calls it before it imports anything else, so
importing the package first is enough; `tests/conftest.py` and the recipes
do so before their own first `import keras` or `import tensorflow`.
"""
import contextlib
import os
import sys

_done = False


def _has_nvidia_driver():
    return (os.path.exists("/proc/driver/nvidia")
            or os.path.exists("/dev/nvidiactl"))


@contextlib.contextmanager
def _stderr_discarded():
    """Points file descriptor 2 at /dev/null, C++ writers included."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        # No usable stderr (closed, or not a file descriptor): nothing to do.
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_startup():
    """Silences TensorFlow's start-up notices on a CPU-only machine.

    Safe to call more than once and after TensorFlow was imported (it then
    only sets the defaults that still apply). Returns None.
    """
    global _done
    if _done:
        return
    _done = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    verbose = os.environ.get("INTERBERT_VERBOSE_STARTUP", "") not in ("", "0")
    if (not verbose and "tensorflow" not in sys.modules
            and not _has_nvidia_driver()):
        with _stderr_discarded():
            import tensorflow as tf

            # The first device query is what reports the failed cuInit.
            tf.config.list_physical_devices()
    if not verbose:
        try:
            from absl import logging as absl_logging
        except ImportError:
            return
        absl_logging.set_verbosity(absl_logging.ERROR)
