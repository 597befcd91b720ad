"""The profiler summary behind docs/benchmarks.md's "where the time goes": it must count the ops that ran."""

import time

import numpy as np
import tensorflow as tf

from bench.profile_generator import op_times_ms, profile_case, table


def test_op_times_count_the_ops_that_ran(tmp_path):
    a = tf.constant(np.random.default_rng(0).uniform(size=(384, 384)).astype(np.float32))
    f = tf.function(lambda: tf.reduce_sum(tf.nn.relu(tf.linalg.matmul(a, a))))
    f()
    steps = 3
    t0 = time.perf_counter()
    trace = profile_case(lambda: f().numpy(), str(tmp_path), steps)
    wall_ms = (time.perf_counter() - t0) * 1000
    totals = op_times_ms(trace)
    kinds = {op.lower() for op in totals}
    # The three ops of the function appear under their TF (or oneDNN-renamed) types ...
    assert any("matmul" in k for k in kinds), totals
    assert "relu" in kinds and "sum" in kinds, totals
    # ... each with time, and together no more than the profiled calls took (one executor thread).
    assert all(ms >= 0 for ms in totals.values())
    assert 0 < sum(totals.values()) <= wall_ms
    # No runtime bookkeeping ("ExecutorState::Process", "EagerLocalExecute: f") is counted as an op.
    assert not any(":" in op or " " in op for op in totals)
    text = table("tiny", totals, steps, top=2)
    assert text.count("\n| ") == 3 + 1  # header + two op types + "other"
