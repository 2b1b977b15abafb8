"""The finetuning optimizer and learning-rate schedule (docs/architecture.md §4.1)."""
import keras
from keras import ops

from keras_interbert.optimizers.grouped_adamw import GroupedAdamW
from keras_interbert.optimizers.pretraining_optimizer import NO_DECAY_PATTERNS


@keras.saving.register_keras_serializable(package="keras_interbert")
class WarmupConstantStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then a constant rate multiplied by `factor` at each boundary.

    The schedule of the original finetuning: `BertAdam`'s `warmup_constant`
    (the update numbered `n = step + 1` gets `peak * n / warmup_steps` while
    `n <= warmup_steps`, then `peak`) times a step decay of `factor` for every
    boundary in `decay_steps` that `n` has passed (`n > boundary`).

    Args:
        peak_learning_rate: float. The rate after warmup.
        warmup_steps: int >= 0. Warmup updates.
        decay_steps: increasing update counts after which the rate is
            multiplied by `factor` (e.g. the first updates of epochs 12 and
            16: `[12 * steps_per_epoch, 16 * steps_per_epoch]`).
        factor: float. The decay factor (0.1).

    Examples:
    ```python
    schedule = WarmupConstantStepDecay(4e-5, warmup_steps=10,
                                       decay_steps=[120, 160])
    float(schedule(119)), float(schedule(120))  # 4e-05, 4e-06
    ```
    """

    def __init__(self, peak_learning_rate, warmup_steps=0, decay_steps=(),
                 factor=0.1, name=None):
        steps = [int(s) for s in decay_steps]
        if steps != sorted(steps) or any(s < 0 for s in steps):
            raise ValueError("WarmupConstantStepDecay: `decay_steps` must be "
                             f"increasing and >= 0; received {list(decay_steps)}.")
        if int(warmup_steps) < 0:
            raise ValueError("WarmupConstantStepDecay: `warmup_steps` must be "
                             f">= 0; received {warmup_steps}.")
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = steps
        self.factor = float(factor)
        self.name = name

    def __call__(self, step):
        update = ops.cast(step, "float32") + 1.0
        peak = self.peak_learning_rate
        warmup = float(self.warmup_steps)
        rate = ops.where(update <= warmup, peak * update / max(warmup, 1.0),
                         peak)
        for boundary in self.decay_steps:
            rate = ops.where(update > float(boundary), rate * self.factor, rate)
        return rate

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate,
                "warmup_steps": self.warmup_steps,
                "decay_steps": list(self.decay_steps),
                "factor": self.factor, "name": self.name}


def finetuning_optimizer(total_steps=None, learning_rate=4e-5,
                         warmup_fraction=0.1, steps_per_epoch=None,
                         decay_epochs=(12, 16), decay_factor=0.1,
                         weight_decay=0.01, clipnorm=1.0, ema_momentum=None,
                         beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                         name="finetuning_adamw"):
    """The finetuning optimizer of docs/architecture.md §4.1 (retrieval, VCR, text tasks).

    A `GroupedAdamW` with one learning rate for every variable (no 0.1x BERT
    group in finetuning), no weight decay on biases and LayerNorm, each
    variable's gradient clipped to `clipnorm`, and, when `total_steps` is
    given, `WarmupConstantStepDecay`: linear warmup over `warmup_fraction` of
    the updates, then constant, times `decay_factor` after each epoch in
    `decay_epochs` (needs `steps_per_epoch`). Without `total_steps` the rate
    is constant.

    Args:
        total_steps: optimizer updates of the whole run, or `None`.
        learning_rate: the peak rate (4e-5 for retrieval, 2e-5 for VCR).
        warmup_fraction: share of `total_steps` spent warming up.
        steps_per_epoch: updates per epoch, to place `decay_epochs`.
        decay_epochs: epochs (1-based counts of finished epochs) after which
            the rate drops by `decay_factor`; epochs beyond the run are
            ignored.
        decay_factor: the step decay factor.
        weight_decay: decoupled weight decay.
        clipnorm: per-variable gradient norm limit, or `None`.
        ema_momentum: e.g. 0.9999 to keep an exponential moving average of
            the weights (`use_ema`; evaluate with
            `keras.callbacks.SwapEMAWeights`, and `fit` leaves the EMA weights
            in the model at the end). Note that an average with momentum `m`
            forgets its initial value over about `1 / (1 - m)` updates: 10,000
            for 0.9999, so short runs should not use it.
        beta_1, beta_2, epsilon: Adam constants.
        name: the optimizer's name.
    """
    rate = learning_rate
    if total_steps is not None:
        total_steps = int(total_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1; received {total_steps}.")
        boundaries = []
        if decay_epochs:
            if steps_per_epoch is None:
                raise ValueError("finetuning_optimizer: `decay_epochs` needs "
                                 "`steps_per_epoch`.")
            boundaries = [int(e) * int(steps_per_epoch) for e in decay_epochs
                          if int(e) * int(steps_per_epoch) < total_steps]
        rate = WarmupConstantStepDecay(
            learning_rate, warmup_steps=int(round(warmup_fraction * total_steps)),
            decay_steps=boundaries, factor=decay_factor)
    ema = {}
    if ema_momentum is not None:
        ema = {"use_ema": True, "ema_momentum": float(ema_momentum)}
    return GroupedAdamW(
        learning_rate=rate, weight_decay=weight_decay,
        no_decay_patterns=NO_DECAY_PATTERNS, clipnorm=clipnorm,
        beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name, **ema)
