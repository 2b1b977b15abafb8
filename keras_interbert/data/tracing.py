"""Dataset functions traced as they are written."""
import tensorflow as tf


def plain(fn):
    """`fn`, for `Dataset.map`, `filter` or `flat_map`, without AutoGraph.

    tf.data passes a function through AutoGraph before tracing it, which
    rewrites its source and that of every function it calls so that Python
    `if` and `for` on tensors become graph control flow. The pipelines'
    functions have none (their branches are on Python values, their
    conditionals `tf.where` / `tf.cond`), so the rewrite only adds time,
    mostly the first time a process converts a function (the text and
    multiple-choice datasets built in a fresh process: 4.4 s against 5.1 s,
    `benchmarks/trace_costs.py`). A function that did branch on a tensor
    fails at its first trace with TensorFlow's "using a tf.Tensor as a
    Python bool is not allowed" error.
    """
    return tf.autograph.experimental.do_not_convert(fn)
