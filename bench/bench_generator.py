"""Generator inference: ours (tf.function, with and without XLA, float32 and bfloat16; AnimeGAN and
AnimeGANv2) against the official (v1) TF1 graph in the same process, with achieved GFLOP/s against a measured matmul peak.

    python -m bench.bench_generator          # prints JSON rows

Timings are interleaved medians (ours, official, ours, ...) of wall time and of process CPU time.
XLA variants are timed apart with fewer repeats: on a 2-core CPU they are several times slower.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from references.official_graph import OFFICIAL_META
from bench.common import interleaved_timings, median_ms

SIZES = [(256, 256), (720, 1280)]  # (height, width)


def generator_flops(generator, height, width):
    """Floating-point operations of one forward pass, counted by TF's profiler on the traced graph."""
    fn = tf.function(lambda x: generator(x)).get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(fn.graph, options=opts)
    return float(info.total_float_ops)


def matmul_peak_gflops(dtype, n=2048, repeats=5):
    """Achieved GFLOP/s of an n x n x n matmul: the machine's practical peak for this dtype."""
    a = tf.cast(tf.random.uniform((n, n), dtype=tf.float32), dtype)
    f = tf.function(lambda: tf.linalg.matmul(a, a))
    ms = median_ms(lambda: f().numpy(), repeats=repeats)
    return 2.0 * n**3 / (ms / 1000.0) / 1e9


def make_generator(policy, values):
    """A Generator built under `policy` holding the official-layout weights `values`."""
    from anime_gan.nets import build_generator
    from anime_gan.weights import tf1_to_generator

    return tf1_to_generator(values, build_generator(policy))


def psnr_db(a, b):
    """PSNR of b against a, for images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def run(repeats=None, quick=False, sizes=None, xla=None, xla_repeats=None):
    """Rows of {case, median_ms, cpu_ms, gflops, percent_of_matmul_peak, ratio_to_official, ...}.

    quick: 256x256 only, 3 repeats, no XLA (unless sizes, repeats or xla say otherwise).
    """
    repeats = repeats or (3 if quick else 7)
    sizes = sizes or ([(256, 256)] if quick else SIZES)
    xla = (not quick) if xla is None else xla
    from anime_gan.nets.generator import Generator
    from references.official_graph import OfficialGenerator, random_official_weights

    probe = Generator()
    probe.build()
    shapes = {n: tuple(v.shape) for n, v in probe.tf1_variable_map().items()}
    values = random_official_weights(shapes, seed=0)
    g32 = make_generator("float32", values)
    gbf16 = make_generator("mixed_bfloat16", values)
    # AnimeGANv2 (random weights, seeded; the same weights under both policies).
    from anime_gan.nets import build_generator

    keras.utils.set_random_seed(0)
    v2_32 = build_generator("float32", arch="v2")
    v2_bf16 = build_generator("mixed_bfloat16", arch="v2")
    v2_bf16.set_weights(v2_32.get_weights())
    official = None
    if OFFICIAL_META.exists():
        official = OfficialGenerator(OFFICIAL_META)
        official.assign(values)

    peak = {"float32": matmul_peak_gflops(tf.float32), "bfloat16": matmul_peak_gflops(tf.bfloat16)}
    rows = []
    for h, w in sizes:
        large = h * w > 256 * 256
        x = np.random.default_rng(0).uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        flops = generator_flops(g32, h, w)
        flops_v2 = generator_flops(v2_32, h, w)
        spec = [tf.TensorSpec([1, h, w, 3], tf.float32)]
        fns = {
            "ours float32": tf.function(g32.call, input_signature=spec),
            "ours bfloat16": tf.function(gbf16.call, input_signature=spec),
            "ours v2 float32": tf.function(v2_32.call, input_signature=spec),
            "ours v2 bfloat16": tf.function(v2_bf16.call, input_signature=spec),
        }
        timed = {name: (lambda f=f: f(x).numpy()) for name, f in fns.items()}
        if official is not None:
            timed["official graph"] = lambda: official(x)
        n = max(3, repeats // 2) if large else repeats
        times = interleaved_timings(timed, repeats=n, warmup=1 if large else 2)
        if xla:
            for name, g in (("ours float32 XLA", g32), ("ours bfloat16 XLA", gbf16)):
                fns[name] = tf.function(g.call, input_signature=spec, jit_compile=True)
                # The first call compiles; XLA is slow on this CPU, so few repeats.
                nx = xla_repeats or (1 if large else 3)
                times.update(interleaved_timings({name: lambda f=fns[name]: f(x).numpy()}, repeats=nx, warmup=1))
        ref32 = fns["ours float32"](x).numpy()
        ref32_v2 = fns["ours v2 float32"](x).numpy()
        for name, (ms, cpu_ms) in times.items():
            dtype = "bfloat16" if "bfloat16" in name else "float32"
            v2 = " v2 " in name
            gflops = (flops_v2 if v2 else flops) / (ms / 1000.0) / 1e9
            row = {
                "case": f"{name} {w}x{h}",
                "median_ms": round(ms, 1),
                "cpu_ms": round(cpu_ms, 1),
                "gflops": round(gflops, 1),
                "percent_of_matmul_peak": round(100.0 * gflops / peak[dtype], 1),
            }
            if "official graph" in times and name != "official graph":
                row["ratio_to_official"] = round(ms / times["official graph"][0], 3)
            if name.startswith("ours bfloat16"):
                row["speedup_vs_ours_float32"] = round(times["ours float32"][0] / ms, 2)
                row["psnr_vs_float32_db"] = round(psnr_db(ref32, fns[name](x).numpy()), 1)
            if name == "ours v2 bfloat16":
                row["speedup_vs_ours_v2_float32"] = round(times["ours v2 float32"][0] / ms, 2)
                row["psnr_vs_v2_float32_db"] = round(psnr_db(ref32_v2, fns[name](x).numpy()), 1)
            if name == "ours float32 XLA":
                row["max_abs_diff_vs_ours_float32"] = float(np.abs(fns[name](x).numpy() - ref32).max())
            if name == "official graph":
                row["max_abs_diff_vs_ours_float32"] = float(np.abs(official(x) - ref32).max())
            rows.append(row)
        rows.append({"case": f"FLOPs of G at {w}x{h}", "gflop": round(flops / 1e9, 2),
                     "v2_gflop": round(flops_v2 / 1e9, 2)})
    rows.append({"case": "matmul peak 2048^3", "float32_gflops": round(peak["float32"], 1),
                 "bfloat16_gflops": round(peak["bfloat16"], 1)})
    if official is not None:
        official.close()
    else:
        rows.append({"case": "official graph", "note": f"skipped: {OFFICIAL_META} not found"})
    return [{"section": "generator", **r} for r in rows]


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
