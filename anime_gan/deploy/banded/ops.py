"""TensorFlow helpers of the banded graphs, built to keep those graphs small.

The banded graphs are large (a loop per pass, thousands of small ops for the rows of each band),
and every op costs time and memory where they are traced, saved and loaded (a SavedModel's Python
loader takes ~40 KB per op). Hence: one constant per value and graph (`const`), rows passed on
without ops where a node is pointwise, no op for a factor of 1 or a term of 0.
"""

from __future__ import annotations

import weakref

import tensorflow as tf

# Tracing builds thousands of ops: AutoGraph has nothing to convert here (the loops are explicit
# tf.while_loops) and would only add seconds.
plain_python = tf.autograph.experimental.do_not_convert

_CONSTANTS = weakref.WeakKeyDictionary()  # graph -> {(value, dtype): constant}


def const(value, dtype=tf.int32):
    """The constant `value` (an int or a tuple), one per graph being built."""
    if tf.executing_eagerly():
        return tf.constant(value, dtype)
    cache = _CONSTANTS.setdefault(tf.compat.v1.get_default_graph(), {})
    if (value, dtype) not in cache:
        with tf.control_dependencies(None):  # made outside any control-dependency scope
            cache[value, dtype] = tf.constant(value, dtype)
    return cache[value, dtype]


def affine(x, mul, add):
    """x * mul + add."""
    if mul != 1:
        x = x * const(mul)
    return x + const(add) if add else x


def slice_rows(x, lo, hi):
    """x[lo:hi] along the first of its three axes."""
    zero, all_ = const(0), const(-1)
    return tf.slice(x, tf.stack([lo, zero, zero]), tf.stack([hi - lo, all_, all_]))

