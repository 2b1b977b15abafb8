import os
import subprocess
import sys

# OpenMP threads that wait for work sleep instead of spinning. PyTorch's CPU
# kernels (GNU OpenMP) spin by default, which on a machine shared with other
# busy processes (`make test` runs three sessions on two cores) burns most of
# the PyTorch session's CPU time in waiting: tests/test_tasks.py -k learns
# took 90 CPU seconds with spinning and 23 without, under that load
# (docs/benchmarks.md). Set before any backend is imported; the processes
# the tests start inherit it. An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# JAX compiles every function it runs with XLA, and the suite runs hundreds
# of small functions once each: most of the JAX session's CPU time is spent
# compiling, little running. These flags make XLA's CPU compiler spend less
# effort on machine-code optimisation and emit fused loops with its older
# emitters, which compile in about half the time of the MLIR-based ones
# (the same operations; results may differ in the last bits, and the
# parity and cross-backend tests hold under them at their tolerances).
# Under JAX, tests/test_tasks.py and tests/test_backbone.py: 260 CPU
# seconds without the first two flags, 169 with them; tests/test_components.py
# and tests/test_pretraining_objective.py: 157 with the first two, 84 with
# all three (docs/benchmarks.md, issue 17). Only where JAX does the work:
# the JAX session and the JAX processes other sessions start
# (`light_xla_env`); an explicit XLA_FLAGS in the environment wins.
LIGHT_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                   "--xla_llvm_disable_expensive_passes=true "
                   "--xla_cpu_use_fusion_emitters=false")


def light_xla_env(env, backend):
    """`env` for a process of `backend`, with LIGHT_XLA_FLAGS under JAX."""
    if backend == "jax" and "XLA_FLAGS" not in env:
        env = dict(env, XLA_FLAGS=LIGHT_XLA_FLAGS)
    return env


os.environ.update(light_xla_env(dict(os.environ),
                                os.environ.get("KERAS_BACKEND")))

import keras_interbert  # noqa: E402,F401  (first: a quiet TensorFlow start-up)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The original code's golden record, kept in the repository (see
# tests/fixtures/README.md for how it was made and what it holds).
FIXTURE = os.path.join(REPO_ROOT, "tests", "fixtures",
                       "original_interbert_tiny.npz")
BACKEND = keras.config.backend()

# A check marked `once` cannot depend on the session's KERAS_BACKEND: it tests
# tf.data pipelines, numpy code or files, or it starts processes that choose
# their own backend. With INTERBERT_ONCE_BACKEND set, it runs only in that
# backend's session: `make test`, which runs the three sessions side by side
# on one machine, names torch (the session whose own tests cost the least), so
# that such a check runs once instead of three times. Unset (a single
# session, `make test-jax`, plain pytest), it runs in every session.
# `every_backend` exempts a test of a module marked `once` (e.g. the one that
# feeds the pipeline's batches to the model).
ONCE_BACKEND = os.environ.get("INTERBERT_ONCE_BACKEND") or None
if ONCE_BACKEND not in (None, "tensorflow", "jax", "torch"):
    raise ValueError("INTERBERT_ONCE_BACKEND must be tensorflow, jax or "
                     f"torch; received {ONCE_BACKEND!r}.")


# A check marked `one_session` does depend on the backend, but only through
# code that other checks run in every session: a recipe's or a page's run
# from end to end (the VCR and text recipes, docs/your-data.md) trains with
# `fit` and reloads its `.keras` file, which tests/test_tasks.py,
# tests/test_components.py and tests/test_contrastive.py do under every
# backend for every task; a weight conversion (tests/test_convert.py) maps
# numpy arrays and runs the backbone's forward pass, which the parity tests
# and one real-checkpoint conversion check under every backend. With
# INTERBERT_ONCE_BACKEND set it runs in that session only, like `once`;
# unset, in every session.


# INTERBERT_TEST_CPU=FILE: one tab-separated row per test appended to FILE,
# `cpu_seconds  children_cpu_seconds  wall_seconds  test id`: the CPU time
# of this process (all its threads) and of the processes the test started
# and waited for, over the test's setup, call and teardown (a session
# fixture counts in the first test that uses it). `make test` runs three
# sessions on two cores, so CPU time, not wall time, says what a test costs
# (docs/benchmarks.md, eighth pass). Give each session its own file.
TEST_CPU_FILE = os.environ.get("INTERBERT_TEST_CPU")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not TEST_CPU_FILE:
        yield
        return
    import time

    before, start = os.times(), time.monotonic()
    yield
    after, wall = os.times(), time.monotonic() - start
    own = (after.user - before.user) + (after.system - before.system)
    children = ((after.children_user - before.children_user)
                + (after.children_system - before.children_system))
    with open(TEST_CPU_FILE, "a", encoding="utf-8") as f:
        f.write(f"{own:.1f}\t{children:.1f}\t{wall:.1f}\t{item.nodeid}\n")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tensorflow_only" in item.keywords and BACKEND != "tensorflow":
            item.add_marker(pytest.mark.skip(
                reason="tensorflow_only: needs the TensorFlow backend"))
        elif ("one_session" in item.keywords
              and ONCE_BACKEND not in (None, BACKEND)):
            item.add_marker(pytest.mark.skip(
                reason="one_session: its backend-dependent parts are checked "
                "in every session by other tests (tests/conftest.py); runs "
                "in the "
                f"{ONCE_BACKEND} session (INTERBERT_ONCE_BACKEND)"))
        elif ("once" in item.keywords and "every_backend" not in item.keywords
              and ONCE_BACKEND not in (None, BACKEND)):
            item.add_marker(pytest.mark.skip(
                reason="once: independent of KERAS_BACKEND, runs in the "
                f"{ONCE_BACKEND} session (INTERBERT_ONCE_BACKEND)"))


@pytest.fixture(autouse=True)
def _reset_policy():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


# Each backend reads the `.keras` files that one other backend wrote, in a
# ring that makes every backend a writer once and a reader once
# (tensorflow <- torch <- jax <- tensorflow). One writer process per session
# serves tests/test_cross_backend.py, tests/test_tasks.py (the round trip)
# and, under TensorFlow, tests/test_export.py. The ring puts the costliest
# writer (JAX, which compiles every function it trains) in the PyTorch
# session, the one with time to spare.
WRITER_BACKEND = {"tensorflow": "torch", "jax": "tensorflow",
                  "torch": "jax"}.get(BACKEND, "tensorflow")


@pytest.fixture(scope="session")
def saved_by_other_backend(tmp_path_factory):
    """A folder written by tests/helpers/cross_backend_save.py under
    WRITER_BACKEND.

    Holds `model.keras` and `outputs.npz` (a tiny pretrainer and its outputs);
    for the training replay, `trainer.keras` and `trained.npz`; and for the
    pretrain -> finetune round trip of tests/test_tasks.py, `pretrained.keras`
    and `pretrained.saved.npz`. Tests copy what they change.
    """
    out = tmp_path_factory.mktemp(f"saved_under_{WRITER_BACKEND}")
    env = light_xla_env(dict(os.environ, KERAS_BACKEND=WRITER_BACKEND,
                             TF_CPP_MIN_LOG_LEVEL="3"), WRITER_BACKEND)
    script = os.path.join(REPO_ROOT, "tests", "helpers",
                          "cross_backend_save.py")
    result = subprocess.run(
        [sys.executable, script, str(out), "0", "--train", "--round-trip"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"saved under {WRITER_BACKEND}" in result.stdout
    return out


@pytest.fixture(scope="session")
def fixture_npz():
    if not os.path.exists(FIXTURE):
        pytest.fail(f"The golden fixture is missing: {FIXTURE}")
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


TINY_BACKBONE = dict(
    vocabulary_size=120,
    num_single_stream_layers=1,
    num_text_layers=1,
    num_image_layers=1,
    hidden_dim=32,
    num_heads=2,
    intermediate_dim=64,
    num_image_heads=4,
    image_intermediate_dim=48,
    pooled_dim=40,
    image_feature_dim=24,
    max_sequence_length=32,
)


def random_backbone_inputs(batch=2, text_len=7, regions=5, feature_dim=24,
                           vocabulary_size=120, seed=0):
    """Backbone inputs with some padding on both sides."""
    rng = np.random.default_rng(seed)
    text_mask = np.ones((batch, text_len), "int32")
    region_mask = np.ones((batch, regions), "int32")
    if batch > 1:
        text_mask[1, text_len - 2:] = 0
        region_mask[1, regions - 2:] = 0
    token_ids = rng.integers(1, vocabulary_size, (batch, text_len)).astype("int32")
    token_ids[text_mask == 0] = 0
    boxes = np.sort(rng.random((batch, regions, 2, 2)), axis=2)
    x1, y1 = boxes[..., 0, 0], boxes[..., 0, 1]
    x2, y2 = boxes[..., 1, 0], boxes[..., 1, 1]
    locations = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], -1)
    locations[:, 0] = [0, 0, 1, 1, 1]
    features = rng.normal(size=(batch, regions, feature_dim))
    features[region_mask == 0] = 0
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros((batch, text_len), "int32"),
        "text_mask": text_mask,
        "region_features": features.astype("float32"),
        "region_locations": locations.astype("float32"),
        "region_mask": region_mask,
    }


def to_numpy(tree):
    return {k: keras.ops.convert_to_numpy(v) for k, v in tree.items()}
