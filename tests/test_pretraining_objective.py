import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import to_numpy
from helpers.distributed_common import build_pretrainer
from helpers.distributed_common import pretraining_batch

from keras_interbert import PretrainingObjective
from keras_interbert.convert.bert import _new_weights as converter_new_weights
from keras_interbert.optimizers import GroupedAdamW
from keras_interbert.optimizers import LinearWarmupLinearDecay
from keras_interbert.optimizers import pretraining_optimizer

LOGGED = {"loss", "msm_loss", "msm_accuracy", "mrm_loss", "itm_loss",
          "itm_accuracy"}
TASK_LOGS = {"msm": {"msm_loss", "msm_accuracy"}, "mrm": {"mrm_loss"},
             "itm": {"itm_loss", "itm_accuracy"}}


# === An independent numpy reading of docs/architecture.md §3.4 ===

def _log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def hand_losses(y, logits, weights=(1.0, 1.0, 1.0)):
    msm_w = y["msm_weights"].astype(np.float64)
    log_p = _log_softmax(logits["msm_logits"])
    rows, cols = np.nonzero(msm_w >= 0)
    ce = np.zeros_like(msm_w)
    ce[rows, cols] = -log_p[rows, cols, y["msm_labels"][rows, cols]]
    msm = (msm_w * ce).sum() / max(msm_w.sum(), 1.0)
    msm_hits = logits["msm_logits"].argmax(-1) == y["msm_labels"]
    msm_acc = (msm_w * msm_hits).sum() / max(msm_w.sum(), 1.0)

    kl = np.zeros(y["mrm_weights"].shape)
    log_q = _log_softmax(logits["mrm_logits"])
    for b, r in zip(*np.nonzero(y["mrm_weights"])):
        t = y["mrm_targets"][b, r].astype(np.float64)
        kl[b, r] = sum(t[c] * (np.log(t[c]) - log_q[b, r, c])
                       for c in range(t.shape[0]) if t[c] > 0)
    matched = (y["itm_labels"] == 0).astype(np.float64)
    mrm_w = y["mrm_weights"] * matched[:, None]
    mrm = (mrm_w * kl).sum() / max(mrm_w.sum(), 1.0)

    log_i = _log_softmax(logits["itm_logits"])
    labels = y["itm_labels"]
    itm = -np.mean([log_i[b, labels[b]] for b in range(len(labels))])
    itm_acc = np.mean(logits["itm_logits"].argmax(-1) == labels)
    total = weights[0] * msm + weights[1] * mrm + weights[2] * itm
    return {"loss": total, "msm_loss": msm, "msm_accuracy": msm_acc,
            "mrm_loss": mrm, "itm_loss": itm, "itm_accuracy": itm_acc}


def floats(values):
    return {k: float(keras.ops.convert_to_numpy(v)) for k, v in values.items()}


def gradients(loss_fn, variables):
    """d loss_fn() / d variables on the current backend (None: unconnected)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, [v.value for v in variables])
    if BACKEND == "torch":
        import torch

        loss = loss_fn()
        return torch.autograd.grad(loss, [v.value for v in variables],
                                   allow_unused=True)
    import jax

    def stateless(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return loss_fn()

    return jax.grad(stateless)([v.value for v in variables])


def is_zero(gradient):
    return gradient is None or not np.any(keras.ops.convert_to_numpy(gradient))


def fixed_batch():
    return pretraining_batch(batch=4, seed=0, itm_labels=[0, 1, 0, 0])


# === The objective ===

def test_losses_match_a_hand_computation():
    model = build_pretrainer()
    x, y = fixed_batch()
    # The batch has what the formulas must get right: uneven target counts,
    # a negative pair with masked regions, exact zeros in the targets.
    assert (y["mrm_weights"][1] > 0).any() and y["itm_labels"][1] == 1
    assert (y["mrm_targets"][y["mrm_weights"] > 0] == 0).any()
    logits = model(x, training=False)
    expected = hand_losses(y, to_numpy(logits))
    got = floats(model.pretraining_losses(y, logits))
    assert set(got) == LOGGED
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)

    weights = (0.5, 2.0, 1.5)
    model.compile(optimizer="sgd", msm_weight=weights[0],
                  mrm_weight=weights[1], itm_weight=weights[2])
    weighted = hand_losses(y, to_numpy(logits), weights)["loss"]
    total = model.compute_loss(x, y, logits, training=False)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(total)),
                               weighted, rtol=1e-5)
    # The same values through `evaluate` (the TensorFlow `test_step`, the
    # default one elsewhere) and its metric trackers.
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert set(logs) == LOGGED
    expected = hand_losses(y, to_numpy(logits), weights)
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-5, err_msg=name)


def gathered_batch(x, y, extra_slots=3):
    """The batch with its MSM targets at `msm_positions` ([B, M], as the
    pipeline gives them): each row's targets first, then padding slots
    (position 0, label 0, weight 0) up to the largest count plus
    `extra_slots`."""
    counts = (y["msm_weights"] > 0).sum(1)
    width = counts.max() + extra_slots
    positions = np.zeros((len(counts), width), "int32")
    labels = np.zeros((len(counts), width), "int32")
    weights = np.zeros((len(counts), width), "float32")
    for row in range(len(counts)):
        where = np.flatnonzero(y["msm_weights"][row])
        positions[row, :len(where)] = where
        labels[row, :len(where)] = y["msm_labels"][row, where]
        weights[row, :len(where)] = y["msm_weights"][row, where]
    return (dict(x, msm_positions=positions),
            dict(y, msm_labels=labels, msm_weights=weights))


def test_flat_msm_positions_give_the_padded_heads_rows():
    # `msm_flat_positions` (the targets alone, indices into the flattened
    # [B * T] text) gives the rows of the padded layout's logits that hold a
    # target, the other outputs unchanged, and the same losses.
    model = build_pretrainer()
    x, y = gathered_batch(*fixed_batch())
    padded = to_numpy(model(x, training=False))
    slots = np.argwhere(y["msm_weights"] != 0)
    length = x["token_ids"].shape[1]
    flat = (slots[:, 0] * length
            + x["msm_positions"][slots[:, 0], slots[:, 1]]).astype("int32")
    alone_x = {k: v for k, v in x.items() if k != "msm_positions"}
    alone = to_numpy(model(dict(alone_x, msm_flat_positions=flat),
                           training=False))
    assert alone["msm_logits"].shape == (1, len(slots),
                                         padded["msm_logits"].shape[-1])
    np.testing.assert_allclose(
        alone["msm_logits"][0],
        padded["msm_logits"][slots[:, 0], slots[:, 1]], rtol=1e-5, atol=1e-5)
    for name in ("mrm_logits", "itm_logits"):
        np.testing.assert_allclose(alone[name], padded[name], rtol=1e-5,
                                   atol=1e-6)
    alone_y = dict(y, msm_labels=y["msm_labels"][slots[:, 0], slots[:, 1]][None],
                   msm_weights=y["msm_weights"][slots[:, 0], slots[:, 1]][None])
    got = floats(model.pretraining_losses(alone_y, alone))
    expected = floats(model.pretraining_losses(y, padded))
    assert set(got) == LOGGED
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="not both"):
        model(dict(x, msm_flat_positions=flat))


@pytest.mark.tensorflow_only
def test_tensorflow_step_trains_on_the_msm_targets_alone(monkeypatch):
    # The TensorFlow train and test steps drop the padding slots of the
    # masked-segment targets (`tensorflow_steps._msm_targets_alone`): two
    # updates and an evaluation must give what the padded layout gives.
    from keras_interbert.models import tensorflow_steps

    x, y = gathered_batch(*fixed_batch())
    seen = []
    alone = tensorflow_steps._msm_targets_alone

    def spy(model, x, y):
        x, y = alone(model, x, y)
        seen.append("msm_flat_positions" in x)
        return x, y

    results = []
    for step in (lambda model, x, y: (x, y), spy):
        monkeypatch.setattr(tensorflow_steps, "_msm_targets_alone", step)
        model = build_pretrainer()
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False,
                            verbose=0).history
        logs = model.evaluate(x, y, batch_size=4, verbose=0,
                              return_dict=True)
        results.append((history, logs, model.get_weights()))
    assert seen and all(seen)
    (history, logs, weights), (history2, logs2, weights2) = results
    assert set(history) == set(logs) == LOGGED
    for name in LOGGED:
        np.testing.assert_allclose(history2[name], history[name], rtol=1e-5,
                                   err_msg=name)
        np.testing.assert_allclose(logs2[name], logs[name], rtol=1e-5,
                                   err_msg=name)
    for a, b in zip(weights, weights2):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_mrm_ignores_negative_pairs_and_counts_globally():
    rng = np.random.default_rng(1)
    _, y = fixed_batch()
    logits = {
        "msm_logits": rng.normal(size=(4, 9, 120)).astype("float32"),
        "mrm_logits": rng.normal(size=(4, 6, 11)).astype("float32"),
        "itm_logits": rng.normal(size=(4, 2)).astype("float32"),
    }
    objective = PretrainingObjective()
    base = floats(objective(y, logits))
    changed = {k: v.copy() for k, v in logits.items()}
    changed["mrm_logits"][1] += rng.normal(size=(6, 11)).astype("float32")
    # Row 1 is a negative pair: its regions are masked but not trained...
    assert floats(objective(y, changed))["mrm_loss"] == pytest.approx(
        base["mrm_loss"], rel=1e-6)
    # ...while its text still is (MSM includes negatives).
    changed["msm_logits"][1] += 3.0 * rng.normal(size=(9, 120)).astype(
        "float32")
    assert floats(objective(y, changed))["msm_loss"] != pytest.approx(
        base["msm_loss"], rel=1e-3)
    # A prediction equal to the target distribution has zero KL.
    exact = {k: v.copy() for k, v in logits.items()}
    exact["mrm_logits"] = np.log(np.maximum(y["mrm_targets"], 1e-12))
    assert floats(objective(y, exact))["mrm_loss"] == pytest.approx(
        0.0, abs=1e-5)
    # No target anywhere: a zero (not NaN) loss.
    empty = dict(y, msm_weights=np.zeros_like(y["msm_weights"]))
    assert floats(objective(empty, logits))["msm_loss"] == 0.0


@pytest.mark.parametrize("task", ["msm", "mrm", "itm"])
def test_switching_a_task_off_removes_its_loss_and_gradient(task):
    model = build_pretrainer()
    x, y = fixed_batch()
    weights = {"msm_weight": 1.0, "mrm_weight": 1.0, "itm_weight": 1.0}
    weights[f"{task}_weight"] = 0.0
    objective = PretrainingObjective(**weights)
    head = getattr(model, f"{task}_head")
    shared = {id(v) for v in model.backbone.weights}
    head_variables = [v for v in head.weights if id(v) not in shared]
    others = [v for name in ("msm", "mrm", "itm") if name != task
              for v in getattr(model, f"{name}_head").weights
              if id(v) not in shared]

    def loss_fn():
        return objective(y, model(x, training=False))["loss"]

    grads = gradients(loss_fn, head_variables + others)
    assert all(is_zero(g) for g in grads[:len(head_variables)])
    assert not all(is_zero(g) for g in grads[len(head_variables):])

    initial = to_numpy(model(x, training=False))
    expected = hand_losses(y, initial)
    model.compile(optimizer=pretraining_optimizer(learning_rate=1e-2),
                  **weights)
    # The head's variables are frozen, so neither Adam nor weight decay
    # touches them.
    assert not any(v.trainable for v in head_variables)
    before = [keras.ops.convert_to_numpy(v) for v in head_variables]
    others_before = [keras.ops.convert_to_numpy(v) for v in others]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert set(history.history) == LOGGED - TASK_LOGS[task]
    enabled = [t for t in ("msm", "mrm", "itm") if t != task]
    np.testing.assert_allclose(
        history.history["loss"][0],
        sum(expected[f"{t}_loss"] for t in enabled), rtol=1e-5)
    for b, v in zip(before, head_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), b)
    assert any(np.abs(keras.ops.convert_to_numpy(v) - b).max() > 0
               for b, v in zip(others_before, others))

    # Switching it back on trains it again.
    model.compile(optimizer="sgd")
    assert all(v.trainable for v in head_variables)


def test_compile_and_targets_errors():
    model = build_pretrainer()
    with pytest.raises(ValueError, match="`loss` must be None"):
        model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="`mrm_weight` must be a number >= 0"):
        model.compile(optimizer="sgd", mrm_weight=-1.0)
    with pytest.raises(ValueError, match="must be > 0; received all 0"):
        model.compile(optimizer="sgd", msm_weight=0, mrm_weight=0,
                      itm_weight=0)
    x, y = fixed_batch()
    y.pop("mrm_targets")
    with pytest.raises(ValueError, match=r"MRM task needs.*\['mrm_targets'\]"):
        model.pretraining_losses(y, model(x))
    model.compile()  # "auto": the published optimizer, constant rate
    assert isinstance(model.optimizer, GroupedAdamW)
    assert model.task_weights == {"msm": 1.0, "mrm": 1.0, "itm": 1.0,
                                  "itc": 0.0}
    with pytest.raises(ValueError, match="sample_weight"):
        model.compute_loss(x, y, model(x), sample_weight=np.ones(4))


# === The optimizer ===

def test_decay_groups_and_bert_initialised_variables():
    model = build_pretrainer()
    optimizer = pretraining_optimizer(total_steps=100)
    variables = model.trainable_variables
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.LayerNormalization)]
    no_decay = {id(v) for layer in norms for v in layer.weights}
    no_decay |= {id(v) for v in variables
                 if v.name in ("bias", "output_bias")}
    assert len(no_decay) > 20
    for v in variables:
        assert optimizer.uses_weight_decay(v) == (id(v) not in no_decay), v.path
    # Embedding matrices are decayed.
    assert optimizer.uses_weight_decay(
        model.backbone.token_embedding.embeddings)

    # The 0.1x group is exactly what the BERT converter loads, less the MLM
    # head (which the original trains at the full rate).
    new = {id(v) for v in converter_new_weights(model, True)}
    from_bert = {id(v) for v in model.backbone.trainable_variables
                 if id(v) not in new}
    for v in variables:
        expected = 0.1 if id(v) in from_bert else 1.0
        assert optimizer.learning_rate_multiplier(v) == pytest.approx(
            expected), v.path
    assert optimizer.learning_rate_multiplier(
        model.msm_head.transform_dense.kernel) == 1.0


def _twin_variables():
    """The same kernel under a BERT-initialised path and under a new one."""
    # Small values, so that float32 resolves steps of 1e-5 finely.
    kernel = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    kernel *= 0.01
    layers = [keras.layers.Dense(4, name="text_stream_layer_0"),
              keras.layers.Dense(4, name="image_stream_layer_0")]
    for layer in layers:
        layer.build((None, 3))
        layer.kernel.assign(kernel)
    return layers[0].kernel, layers[1].kernel, kernel


def test_bert_variables_move_ten_times_less():
    bert, new, kernel = _twin_variables()
    optimizer = pretraining_optimizer()  # 1e-4 and 1e-5, weight decay 0.01
    gradient = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    optimizer.apply([gradient, gradient], [bert, new])
    bert_step = keras.ops.convert_to_numpy(bert) - kernel
    new_step = keras.ops.convert_to_numpy(new) - kernel
    assert np.abs(new_step).max() > 5e-5
    np.testing.assert_allclose(bert_step, 0.1 * new_step, rtol=1e-3,
                               atol=1e-9)


def test_clipping_is_per_variable():
    big = keras.Variable(np.zeros((4,), "float32"), name="big")
    small = keras.Variable(np.zeros((3,), "float32"), name="small")
    optimizer = GroupedAdamW(learning_rate=1e-3, weight_decay=0.0,
                             clipnorm=1.0, beta_1=0.5)
    big_grad = np.array([30.0, -40.0, 0.0, 0.0], "float32")  # norm 50
    small_grad = np.array([0.3, 0.0, -0.4], "float32")  # norm 0.5
    optimizer.apply([big_grad, small_grad], [big, small])
    # Adam's first moment after one step is (1 - beta_1) * the gradient it
    # was given: the clipped one.
    momentum = {v.name: keras.ops.convert_to_numpy(v)
                for v in optimizer.variables if v.name.endswith("momentum")}
    np.testing.assert_allclose(momentum["big_momentum"] / 0.5,
                               big_grad / 50.0, rtol=1e-6)
    # A global-norm clip (norm 50.0025) would have shrunk this one too.
    np.testing.assert_allclose(momentum["small_momentum"] / 0.5, small_grad,
                               rtol=1e-6)


def warmup_linear(x, warmup):
    """`BertAdam`'s schedule factor at the fraction `x` of training."""
    if x < warmup:
        return x / warmup
    return max((x - 1.0) / (warmup - 1.0), 0.0)


def test_warmup_then_linear_decay_schedule():
    total = 50
    optimizer = pretraining_optimizer(total_steps=total)  # 10% warmup
    schedule = optimizer._learning_rate
    assert isinstance(schedule, LinearWarmupLinearDecay)
    assert schedule.warmup_steps == 5
    for step in range(total):
        # `BertAdam` counts updates from 1.
        expected = 1e-4 * warmup_linear((step + 1) / total, 0.1)
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-11), step
    assert float(schedule(total + 3)) == 0.0
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule))
    assert clone.get_config() == schedule.get_config()


def test_accumulation_advances_the_schedule_once_per_update():
    schedule = LinearWarmupLinearDecay(1e-2, total_steps=6, warmup_steps=3)

    def run(optimizer):
        variable = keras.Variable(np.zeros((2,), "float32"), name="w")
        values = []
        for _ in range(6):
            optimizer.apply([keras.ops.ones((2,), "float32")], [variable])
            values.append(float(keras.ops.convert_to_numpy(variable)[0]))
        return np.diff([0.0] + values)

    steps = run(GroupedAdamW(learning_rate=schedule, weight_decay=0.0,
                             epsilon=1e-12, gradient_accumulation_steps=2))
    # Adam with a constant gradient moves by the learning rate: micro-batches
    # 1, 3, 5 only accumulate; updates 0, 1, 2 use schedule(0, 1, 2).
    expected = [0.0, -float(schedule(0)), 0.0, -float(schedule(1)), 0.0,
                -float(schedule(2))]
    np.testing.assert_allclose(steps, expected, rtol=1e-5, atol=1e-9)
    # Keras' own AdamW evaluates the schedule at the micro-batch count.
    keras_steps = run(keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=0.0, epsilon=1e-12,
        gradient_accumulation_steps=2))
    assert keras_steps[1] == pytest.approx(-float(schedule(1)), rel=1e-5)


def test_fit_with_accumulation_makes_one_update_per_two_batches():
    x, y = fixed_batch()
    twice = ({k: np.concatenate([v, v]) for k, v in x.items()},
             {k: np.concatenate([v, v]) for k, v in y.items()})
    results = []
    for accumulation, data in ((None, (x, y)), (2, twice)):
        model = build_pretrainer()
        # schedule(0) = 7.5e-3, schedule(1) = 5e-3: the update must use the
        # first, as a single step on one batch does.
        model.compile(optimizer=pretraining_optimizer(
            total_steps=4, learning_rate=1e-2, clipnorm=0.05,
            gradient_accumulation_steps=accumulation))
        model.fit(*data, batch_size=4, epochs=1, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 1
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-5)


# === Training ===

def test_fit_lowers_the_loss_on_a_fixed_batch():
    model = build_pretrainer(dropout=True)
    x, y = fixed_batch()
    model.compile(optimizer=pretraining_optimizer(
        learning_rate=2e-3, bert_learning_rate=2e-3))
    history = model.fit(x, y, batch_size=4, epochs=12, verbose=0).history
    assert set(history) == LOGGED
    for name in ("loss", "msm_loss", "mrm_loss", "itm_loss"):
        assert history[name][-1] < history[name][0], (name, history[name])
    assert history["loss"][-1] < 0.9 * history["loss"][0]


def test_mixed_bfloat16_fit_step_keeps_float32_variables():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = build_pretrainer()
    x, y = fixed_batch()
    model.compile(optimizer=pretraining_optimizer(learning_rate=1e-3))
    before = model.get_weights()
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert all(w.dtype == "float32" for w in model.weights)
    assert all(np.isfinite(v[0]) for v in history.values())
    assert any(np.abs(a - b).max() > 0
               for a, b in zip(model.get_weights(), before))


@pytest.mark.tensorflow_only
def test_mixed_float16_fit_scales_and_unscales_the_loss():
    x, y = fixed_batch()

    def one_sgd_step():
        model = build_pretrainer()
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        before = model.get_weights()
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        after = model.get_weights()
        return model, np.concatenate(
            [(a - b).ravel() for a, b in zip(after, before)])

    _, reference = one_sgd_step()
    keras.config.set_dtype_policy("mixed_float16")
    model, step = one_sgd_step()
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert int(optimizer.step_counter) == 1  # finite gradients, step taken
    assert float(optimizer.dynamic_scale) == 2.0 ** 15
    assert all(w.dtype == "float32" for w in model.weights)
    # A missing unscale would make the step 32768 times larger. (The
    # pretraining optimizer under mixed_float16 runs in
    # test_distributed.py, on two replicas.)
    assert np.linalg.norm(step - reference) < 0.05 * np.linalg.norm(reference)


@pytest.mark.parametrize("weights", [(1.0, 0.5, 2.0), (1.0, 0.0, 1.0)],
                         ids=["weighted", "mrm_off"])
def test_compiled_pretrainer_keras_save_and_load(tmp_path, weights):
    model = build_pretrainer()
    x, y = fixed_batch()
    model.compile(
        optimizer=pretraining_optimizer(total_steps=10, learning_rate=1e-3),
        msm_weight=weights[0], mrm_weight=weights[1], itm_weight=weights[2])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "pretrainer.keras")
    model.save(path)
    restored = keras.saving.load_model(path)  # safe mode
    assert type(restored) is type(model)
    assert restored.task_weights == model.task_weights
    optimizer = restored.optimizer
    assert isinstance(optimizer, GroupedAdamW)
    assert optimizer.get_config() == model.optimizer.get_config()
    assert int(optimizer.iterations) == 1
    assert len(restored.trainable_variables) == len(model.trainable_variables)
    expected = to_numpy(model(x, training=False))
    for name, value in to_numpy(restored(x, training=False)).items():
        np.testing.assert_allclose(value, expected[name], atol=1e-6)
    # The file holds the model's weights only once, whatever was frozen.
    uncompiled = keras.saving.load_model(path, compile=False)
    assert all(v.trainable for v in uncompiled.weights)
    for name, value in to_numpy(uncompiled(x, training=False)).items():
        np.testing.assert_allclose(value, expected[name], atol=1e-6)
    if weights[1] == 0.0:
        return
    # Training goes on identically (optimizer state and schedule restored).
    logs = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    restored_logs = restored.fit(x, y, batch_size=4, epochs=1,
                                 verbose=0).history
    assert set(restored_logs) == set(logs)
    for a, b in zip(restored.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
