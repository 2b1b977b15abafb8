"""Dataset functions traced as they are written."""
import tensorflow as tf


def plain(fn):
    """`fn`, for `Dataset.map`, `filter` or `flat_map`, without AutoGraph.

    tf.data passes a function through AutoGraph before tracing it, which
    rewrites its source and that of every function it calls so that Python
    `if` and `for` on tensors become graph control flow. The pipelines'
    functions have none (their branches are on Python values, their
    conditionals `tf.where` / `tf.cond`), so the rewrite only adds time,
    mostly the first time a process converts a function (building the text
    and multiple-choice datasets in a fresh process: 3.8 s against 4.6 s,
    the median of 7 rounds of `benchmarks/trace_costs.py`; 1.0-1.2x over
    three runs). A function that did branch on a tensor
    fails at its first trace with TensorFlow's "using a tf.Tensor as a
    Python bool is not allowed" error.
    """
    return tf.autograph.experimental.do_not_convert(fn)
