"""The InterBERT pretraining objective (docs/architecture.md §3.4), in `keras.ops`.

The objective is split in two so that it is exact under data parallelism:
`statistics` gives per-batch *sums* (loss sums, target counts, correct
predictions) over the examples a replica sees, and `combine` divides the
local loss sums by the *global* counts. Summed over replicas, the local
losses (and so their gradients) are the single-device loss on the whole
batch, whatever share of the targets each replica holds.
"""
import keras
from keras import ops

TASKS = ("msm", "mrm", "itm", "itc")

# The `y` entries each task reads.
TARGET_KEYS = {
    "msm": ("msm_labels", "msm_weights"),
    "mrm": ("mrm_targets", "mrm_weights", "itm_labels"),
    "itm": ("itm_labels",),
    "itc": ("itm_labels",),
}

# The metrics each task logs, and the count that weights each of them when
# averaged over steps (so an epoch value is a sum over targets divided by the
# number of targets).
TASK_METRICS = {
    "msm": (("msm_loss", "msm_count"), ("msm_accuracy", "msm_count")),
    "mrm": (("mrm_loss", "mrm_count"),),
    "itm": (("itm_loss", "itm_count"), ("itm_accuracy", "itm_count")),
    "itc": (("itc_loss", "itc_count"), ("itc_accuracy", "itc_count")),
}

_TINY = 1e-30


def _log_softmax(logits):
    return logits - ops.logsumexp(logits, axis=-1, keepdims=True)


def _label_cross_entropy(logits, labels):
    """`-log softmax(logits)[label]` without materialising the log-softmax.

    Under TensorFlow, its fused kernel of the same formula
    (`sparse_softmax_cross_entropy_with_logits`, which also gives the
    gradient `softmax - one_hot` in the same pass). `take_along_axis` there
    broadcasts the logits, gathers from them and, backward, scatters into and
    reduces over a tensor of their size: for the masked-segment head (a
    30,522-wide vocabulary at every target slot) that was the largest cost
    of the quickstart's pretraining step after the matrix products; the
    step is about 13% faster without it (docs/benchmarks.md).
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=ops.cast(labels, "int32"), logits=logits)
    labels = ops.expand_dims(ops.cast(labels, "int32"), -1)
    picked = ops.squeeze(ops.take_along_axis(logits, labels, axis=-1), -1)
    return ops.logsumexp(logits, axis=-1) - picked


def _contrastive_terms(logits):
    """Per pair `i` of a `[B, B]` score matrix (row `i` and column `i` match):
    the mean of the cross-entropy of caption `i` over the images and of
    image `i` over the captions."""
    logits = ops.cast(logits, "float32")
    diagonal = ops.diagonal(logits)
    return 0.5 * (ops.logsumexp(logits, axis=1) - diagonal) + 0.5 * (
        ops.logsumexp(logits, axis=0) - diagonal)


def contrastive_loss(logits):
    """Mean symmetric in-batch contrastive loss of a `[B, B]` score matrix."""
    return ops.mean(_contrastive_terms(logits))


def _hits(logits, labels):
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        # `ops.argmax` under TensorFlow first rewrites every -0.0 to the
        # smallest negative float (four more passes over the logits, a
        # vocabulary wide at every masked-segment target); it only matters
        # for a tie between 0.0 and -0.0, which no accuracy depends on.
        predicted = tf.argmax(logits, axis=-1, output_type="int32")
    else:
        predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.cast(ops.equal(predicted, ops.cast(labels, "int32")), "float32")


def _count_rows(tensor):
    """The batch size, computed from the data rather than from the shape.

    A count read off a static shape is a constant: in a TensorFlow graph the
    tracker update that adds it runs even when fetching the batch fails at the
    end of a data set of unknown length, which adds a phantom empty batch to
    every count-weighted metric.
    """
    first = ops.cast(ops.reshape(tensor, (ops.shape(tensor)[0], -1))[:, 0],
                     "float32")
    # A comparison with the values themselves, which graph optimisers cannot
    # fold into a constant as they fold `ones_like` of a static shape.
    present = ops.logical_or(ops.isnan(first), ops.logical_not(ops.isnan(first)))
    return ops.sum(ops.cast(present, "float32"))


class PretrainingObjective:
    """Masked segment + masked region + image-text matching losses.

    - MSM: cross-entropy at the text positions with `msm_weights` (1.0 at the
      targets), negative pairs included: `sum(w * CE) / max(sum(w), 1)`.
    - MRM: `KL(target || softmax(logits))` summed over classes, over the
      regions with `mrm_weights` of *matched* pairs only (`itm_labels == 0`),
      divided by their number (at least 1).
    - ITM: 2-way cross-entropy, mean over the batch.
    - ITC (optional, not in the published objective; off by default): the
      in-batch image-text contrastive loss on `itc_logits` `[B, B]` (every
      caption, encoded alone, against every image, encoded alone). Each
      *matched* pair (`itm_labels == 0`) is a query both ways: the
      cross-entropy of its caption over the batch's images and of its image
      over the batch's captions, averaged; mean over the matched pairs.
      Accuracy: the caption's top image is its own. Under data parallelism
      the candidates are those of the replica's share of the batch.

    Total = `msm_weight * MSM + mrm_weight * MRM + itm_weight * ITM +
    itc_weight * ITC`. A weight of 0 switches its task off: its loss is not
    computed at all.

    Args:
        msm_weight: float. Weight of the masked-segment loss.
        mrm_weight: float. Weight of the masked-region loss.
        itm_weight: float. Weight of the image-text matching loss.
        itc_weight: float. Weight of the image-text contrastive loss (0, the
            published objective, by default).
    """

    def __init__(self, msm_weight=1.0, mrm_weight=1.0, itm_weight=1.0,
                 itc_weight=0.0):
        weights = {"msm": msm_weight, "mrm": mrm_weight, "itm": itm_weight,
                   "itc": itc_weight}
        for task, weight in weights.items():
            if weight is None or not float(weight) >= 0.0:
                raise ValueError(
                    f"`{task}_weight` must be a number >= 0 (0 switches the "
                    f"task off); received {weight!r}."
                )
        self.weights = {task: float(w) for task, w in weights.items()}
        self.tasks = tuple(t for t in TASKS if self.weights[t] > 0.0)
        if not self.tasks:
            raise ValueError(
                "At least one of `msm_weight`, `mrm_weight`, `itm_weight`, "
                "`itc_weight` must be > 0; received all 0."
            )

    def metric_names(self):
        return [name for task in self.tasks for name, _ in TASK_METRICS[task]]

    def metric_counts(self):
        return {name: count for task in self.tasks
                for name, count in TASK_METRICS[task]}

    def check_targets(self, y):
        if not isinstance(y, dict):
            raise ValueError(
                "InterBERTPretrainer targets `y` must be a dict with keys "
                f"{sorted({k for t in self.tasks for k in TARGET_KEYS[t]})}; "
                f"received {type(y).__name__}."
            )
        for task in self.tasks:
            missing = [k for k in TARGET_KEYS[task] if k not in y]
            if missing:
                raise ValueError(
                    f"InterBERTPretrainer targets: the {task.upper()} task "
                    f"needs {list(TARGET_KEYS[task])}; missing {missing} "
                    f"(received keys {sorted(y)})."
                )

    def statistics(self, y, y_pred):
        """Per-batch sums, in float32, over the examples given.

        Returns a dict with `batch_size` and, per enabled task, `<task>_sum`
        (the loss summed over targets), `<task>_count` (the number of
        targets) and, for MSM and ITM, `<task>_correct`.
        """
        self.check_targets(y)
        # One row per pair: the matching logits, which the model always
        # returns (the masked-segment logits may hold the targets alone,
        # [1, N, V], see `InterBERTPretrainer.call`).
        some_logits = y_pred.get("itm_logits",
                                 y_pred[f"{self.tasks[0]}_logits"])
        stats = {"batch_size": _count_rows(some_logits)}
        if "msm" in self.tasks:
            logits = ops.cast(y_pred["msm_logits"], "float32")
            weights = ops.cast(y["msm_weights"], "float32")
            labels = y["msm_labels"]
            stats["msm_sum"] = ops.sum(
                weights * _label_cross_entropy(logits, labels))
            stats["msm_count"] = ops.sum(weights)
            stats["msm_correct"] = ops.sum(weights * _hits(logits, labels))
        if "mrm" in self.tasks:
            logits = ops.cast(y_pred["mrm_logits"], "float32")
            targets = ops.cast(y["mrm_targets"], "float32")
            matched = ops.cast(
                ops.equal(ops.cast(y["itm_labels"], "int32"), 0), "float32")
            weights = ops.cast(y["mrm_weights"], "float32")
            weights = weights * ops.expand_dims(matched, -1)
            # 0 * log(0) = 0: the target's entropy term only where t > 0.
            target_log_target = targets * ops.log(
                ops.maximum(targets, _TINY))
            kl = ops.sum(target_log_target - targets * _log_softmax(logits),
                         axis=-1)
            stats["mrm_sum"] = ops.sum(weights * kl)
            stats["mrm_count"] = ops.sum(weights)
        if "itm" in self.tasks:
            logits = ops.cast(y_pred["itm_logits"], "float32")
            labels = y["itm_labels"]
            stats["itm_sum"] = ops.sum(_label_cross_entropy(logits, labels))
            stats["itm_count"] = _count_rows(logits)
            stats["itm_correct"] = ops.sum(_hits(logits, labels))
        if "itc" in self.tasks:
            if "itc_logits" not in y_pred:
                raise ValueError(
                    "The ITC task needs `itc_logits` from the model: build the "
                    "pretrainer with `contrastive_dim` and feed "
                    "`x['itc_token_ids']` (PretrainingDataConfig(itc=True)); "
                    f"the model returned {sorted(y_pred)}.")
            logits = ops.cast(y_pred["itc_logits"], "float32")
            matched = ops.cast(
                ops.equal(ops.cast(y["itm_labels"], "int32"), 0), "float32")
            stats["itc_sum"] = ops.sum(matched * _contrastive_terms(logits))
            stats["itc_count"] = ops.sum(matched)
            own = ops.arange(ops.shape(logits)[0], dtype="int32")
            stats["itc_correct"] = ops.sum(matched * _hits(logits, own))
        return stats

    def combine(self, stats, totals):
        """The loss to differentiate and the global values to log.

        `stats` are this replica's sums, `totals` the same sums over all
        replicas (equal to `stats` on one device). Returns `(loss, values)`:
        `loss` is this replica's share of the total (local sums over global
        counts), `values` the global `loss` and per-task metrics.
        """
        loss = 0.0
        values = {"loss": 0.0}
        for task in self.tasks:
            count = ops.maximum(totals[f"{task}_count"], 1.0)
            weight = self.weights[task]
            loss = loss + weight * stats[f"{task}_sum"] / count
            task_loss = totals[f"{task}_sum"] / count
            values[f"{task}_loss"] = task_loss
            values["loss"] = values["loss"] + weight * task_loss
            if f"{task}_correct" in totals:
                values[f"{task}_accuracy"] = totals[f"{task}_correct"] / count
        return loss, values

    def __call__(self, y, y_pred):
        """The per-task and total losses of one batch on one device."""
        stats = self.statistics(y, y_pred)
        return self.combine(stats, stats)[1]
