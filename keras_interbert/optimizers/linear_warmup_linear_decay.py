import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_interbert")
class LinearWarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to a peak learning rate, then linear decay to 0.

    BERT's `warmup_linear` schedule, counted in optimizer updates. The update
    numbered `n = step + 1` (Keras passes the 0-based `step`) uses
    `peak * n / warmup_steps` while `n <= warmup_steps`, then
    `peak * (total_steps - n) / (total_steps - warmup_steps)`, never below 0.
    So the first update already has a non-zero rate and the last one
    (`n = total_steps`) has rate 0, as in the original `BertAdam`.

    Args:
        peak_learning_rate: float. The rate reached at the end of warmup.
        total_steps: int. Number of optimizer updates of the whole run.
        warmup_steps: int. Number of warmup updates (0: decay from the start).
        name: optional name of the schedule.

    Examples:
    ```python
    schedule = LinearWarmupLinearDecay(1e-4, total_steps=100, warmup_steps=10)
    float(schedule(0))   # 1e-05, the first update
    float(schedule(9))   # 1e-04, the end of warmup
    float(schedule(99))  # 0.0, the last update
    ```
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps=0,
                 name=None):
        if int(total_steps) < 1:
            raise ValueError(
                "LinearWarmupLinearDecay: `total_steps` must be at least 1; "
                f"received {total_steps}."
            )
        if not 0 <= int(warmup_steps) <= int(total_steps):
            raise ValueError(
                "LinearWarmupLinearDecay: `warmup_steps` must be between 0 and "
                f"`total_steps` ({total_steps}); received {warmup_steps}."
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def __call__(self, step):
        update = ops.cast(step, "float32") + 1.0
        peak = self.peak_learning_rate
        warmup = float(self.warmup_steps)
        rising = peak * update / max(warmup, 1.0)
        remaining = ops.maximum(float(self.total_steps) - update, 0.0)
        falling = peak * remaining / max(self.total_steps - warmup, 1.0)
        return ops.where(update <= warmup, rising, falling)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "name": self.name,
        }
