"""Runs the official AnimeGAN generator graph (a TF1 MetaGraphDef) in TensorFlow 2 via tf.compat.v1.

This is our ground truth: tests and benchmarks compare our Keras Generator against it. The graph
lives in its own `tf.Graph` and `tf.compat.v1.Session`, so the rest of the process stays eager.
`OFFICIAL_META` is where the graph is found, among the maintainers' reference files (`references.REFERENCES`),
absent from a user's clone, where tests that need it are skipped.
`CROSS_KERNEL_MAX_ABS` / `CROSS_KERNEL_MEAN_ABS` bound how far the generator may differ from the graph's
numbers when other kernels compute them (another CPU, batch size or oneDNN setting; the comment at them).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from anime_gan import constants as C
from references import REFERENCES

OFFICIAL_META = REFERENCES / "official_hayao_generator" / "Hayao-60.ckpt.meta"

# Across kernels (another CPU, oneDNN on/off, another ISA, another batch size) float32 convolutions
# sum in another order. The spread that kernel choice alone causes, measured with
#   .venv/bin/python tools/golden_spread.py
# on an Intel Xeon (AVX-512 + AMX, 2 cores) against the golden file written on an AMD CPU, over
# 11 configurations (default; TF_ENABLE_ONEDNN_OPTS=0; ONEDNN_MAX_CPU_ISA=AVX512_CORE, AVX2, AVX,
# SSE41; TF_NUM_INTRAOP_THREADS=1/2/4, with oneDNN on and off) and the golden sizes, a batch of 3
# and 256x256:
#   max |ours - golden|           2.9e-5..4.2e-5 single images, 5.3e-5 worst (batch, AVX cap);
#                                 3.4e-5 with the default kernels: the AMD vs Intel difference itself
#   max |ours(a) - ours(b)|       5.25e-5 worst pair (default vs ONEDNN_MAX_CPU_ISA=AVX)
#   official graph, batch of 3 vs its images one by one: 0 by default and with oneDNN off,
#                                 4.3e-5 (5.2e-5 for the batch of 3 x 64 x 96 of tests/nets/test_generator.py)
#                                 with the AVX2 cap
#   mean |ours - golden|          3.3e-6..5.0e-6
# The bounds are about 4x the worst measured figure, rounded up. A real bug still fails them
# (tests/nets/test_generator.py, test_golden_bounds_fail_a_wrong_epsilon_and_zero_padding): instance norm
# epsilon 1e-3 gives max 0.094..0.117 / mean 1.0e-2 (470x / 500x the bounds), zero padding max 1.9 / mean 0.40.
CROSS_KERNEL_MAX_ABS = 2e-4  # 3.8x the worst 5.27e-5
CROSS_KERNEL_MEAN_ABS = 2e-5  # 4.0x the worst 4.95e-6


def random_official_weights(shapes, seed):
    """Seeded random values for the official variables, drawn independently of our own code.

    Conv kernels get a Xavier-like uniform scale, instance norm gammas are spread around 1 and betas
    around 0, so that every parameter kind influences the output.
    """
    rng = np.random.default_rng(seed)
    values = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith("/gamma"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("/beta"):
            v = rng.normal(0.0, 0.2, shape)
        else:
            receptive = shape[0] * shape[1]
            depthwise = "depthwise" in name or name.endswith("/w")
            fan_in = receptive * (1 if depthwise else shape[2])
            fan_out = receptive * (1 if depthwise else shape[3])
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            v = rng.uniform(-limit, limit, shape)
        values[name] = v.astype(np.float32)
    return values


class OfficialGenerator:
    """The official generator graph with weights of our choosing.

    >>> og = OfficialGenerator(meta_path)
    >>> og.randomize(seed=0)          # or og.assign({name: array})
    >>> y = og(x)                     # x float32 [N, H, W, 3] in [-1, 1]
    >>> og.save("/tmp/ckpt/Hayao")    # a complete checkpoint in the official layout
    """

    def __init__(self, meta_path):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.saver = tf.compat.v1.train.import_meta_graph(str(meta_path), clear_devices=True)
            self.input = self.graph.get_tensor_by_name(C.TF1_INPUT)
            self.output = self.graph.get_tensor_by_name(C.TF1_OUTPUT)
            self.variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
            # One placeholder + assign op per variable, so assigning never grows the graph.
            self._assign = {}
            for name, var in self.variables.items():
                ph = tf.compat.v1.placeholder(var.dtype.base_dtype, var.shape)
                self._assign[name] = (ph, var.assign(ph))
            self.session = tf.compat.v1.Session(graph=self.graph)

    @property
    def shapes(self):
        return {name: tuple(v.shape.as_list()) for name, v in self.variables.items()}

    def assign(self, values):
        missing = set(self.variables) - set(values)
        if missing:
            raise ValueError(f"no value given for official variables {sorted(missing)}")
        ops, feed = [], {}
        for name, (ph, op) in self._assign.items():
            ops.append(op)
            feed[ph] = values[name]
        self.session.run(ops, feed)

    def randomize(self, seed=0):
        values = random_official_weights(self.shapes, seed)
        self.assign(values)
        return values

    def __call__(self, x):
        return self.session.run(self.output, {self.input: np.asarray(x, np.float32)})

    def save(self, prefix):
        """Writes a TF1 checkpoint (index + data) in the official layout; returns its prefix."""
        with self.graph.as_default():
            saver = tf.compat.v1.train.Saver(var_list=list(self.variables.values()))
            return saver.save(self.session, str(prefix), write_meta_graph=False)

    def close(self):
        self.session.close()
