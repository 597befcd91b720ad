"""Measures how far float32 kernel choice alone moves the generator's output (issue 10).

The golden file (anime_gan/golden/official_generator.npz, written by tools/make_golden.py) holds
outputs the official graph produced on one machine. float32 convolutions sum in an order that
depends on the machine (ISA, cache sizes, oneDNN on or off, thread count), so a stored output can
only be matched to within the spread those choices cause. This script measures that spread: each
kernel configuration runs in its own subprocess (the environment variables are read when
TensorFlow starts), builds our generator with the golden file's seeded weights, runs it on the
golden inputs, a batch of three and a 256x256 input, and reports

  - max and mean |ours - golden output| per golden size (the batch's first image is the golden
    64x96 input, so it is checked against the 64x96 golden output too);
  - where the maintainers' reference files hold the official graph: max |ours - official| in the same process (the strict
    test, expected 0; the batch against the official graph fed the same batch), max |official -
    golden| (the official graph itself on this machine) and, for the official graph alone, a batch
    of three against its images run one by one (oneDNN may pick other kernels for batch 1);
  - the pairwise spread: max |ours(config a) - ours(config b)| over every pair and input;
  - three deliberately wrong generators (instance norm epsilon 1e-3; SepConv norm epsilon 1e-5
    instead of 1e-6; zero padding instead of reflection) against the golden outputs, to show the
    bound still fails a real bug.

    .venv/bin/python tools/golden_spread.py            # every configuration (about 3 minutes)
    .venv/bin/python tools/golden_spread.py --quick    # default and TF_ENABLE_ONEDNN_OPTS=0 only

The bounds in references/official_graph.py (CROSS_KERNEL_MAX_ABS, CROSS_KERNEL_MEAN_ABS) come from this
table; docs/development.md's "Tests" section quotes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / "anime_gan/golden/official_generator.npz"

# name -> environment overrides. ONEDNN_MAX_CPU_ISA only matters with oneDNN on (the default on
# x86 Linux); with TF_ENABLE_ONEDNN_OPTS=0 TensorFlow's own Eigen kernels run instead.
CONFIGS = {
    "default": {},
    "onednn-off": {"TF_ENABLE_ONEDNN_OPTS": "0"},
    "isa-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "isa-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "isa-avx": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "isa-sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "threads-1": {"TF_NUM_INTRAOP_THREADS": "1"},
    "threads-2": {"TF_NUM_INTRAOP_THREADS": "2"},
    "threads-4": {"TF_NUM_INTRAOP_THREADS": "4"},
    "onednn-off-threads-1": {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1"},
    "onednn-off-threads-4": {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "4"},
}
QUICK = ["default", "onednn-off"]
VARIANTS = {
    "wrong: instance norm eps 1e-3": "eps",
    "wrong: SepConv norm eps 1e-5 (not 1e-6)": "sepeps",
    "wrong: zero padding (not reflect)": "zeropad",
}


# ------------------------------------------------------------------------------------------------
# worker: one configuration, one process


def _wrong(variant):
    """Patches the library into a deliberately wrong generator (for the variant rows only)."""
    import tensorflow as tf

    from anime_gan.nets import layers

    if variant == "zeropad":
        def zero_pad(x, top, bottom, left, right):
            return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="CONSTANT")

        layers.reflect_pad = zero_pad
    return variant


def worker(out_path, variant=None):
    import tensorflow as tf

    threads = os.environ.get("TF_NUM_INTRAOP_THREADS")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))

    sys.path.insert(0, str(REPO))  # the package and references/
    from anime_gan.nets.generator import Generator
    from anime_gan.nets.layers import InstanceNorm
    from references.official_graph import OFFICIAL_META, OfficialGenerator, random_official_weights
    from anime_gan.weights import tf1_to_generator

    variant = _wrong(variant) if variant else None
    golden = np.load(GOLDEN)
    g = Generator()
    g.build()
    shapes = {name: tuple(v.shape) for name, v in g.tf1_variable_map().items()}
    values = random_official_weights(shapes, int(golden["seed"]))
    g = tf1_to_generator(values, g)
    if variant in ("eps", "sepeps"):
        norms = [n for n in g._flatten_layers() if isinstance(n, InstanceNorm)]
        if variant == "sepeps":
            norms = [n for n in norms if n.epsilon == 1e-6]
        assert norms, "no instance norm layer found to make wrong"
        for layer in norms:
            layer.epsilon = 1e-3 if variant == "eps" else 1e-5

    inputs = {k[len("input_"):]: golden[k] for k in golden.files if k.startswith("input_")}
    rng = np.random.default_rng(3)
    extra = rng.uniform(-1, 1, (2, 64, 96, 3)).astype(np.float32)
    inputs["batch3x64x96"] = np.concatenate([golden["input_64x96"], extra])
    inputs["256x256"] = np.random.default_rng(256256).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)

    out = {f"ours_{k}": g(x).numpy() for k, x in inputs.items()}
    out["meta_path"] = np.array(str(OFFICIAL_META))  # the parent names it without importing TensorFlow
    if OFFICIAL_META.exists() and not variant:
        og = OfficialGenerator(OFFICIAL_META)
        og.assign(values)
        # The official input placeholder is [1, H, W, 3]: the batch's images are run one by one
        # (batch 1 may get other kernels than batch 3: a cross-kernel figure), and for the
        # same-process figure the graph is re-imported with a batch-free input (same ops and shapes
        # as our batched call, so the same kernels).
        out.update({f"official_{k}": og(x) for k, x in inputs.items() if len(x) == 1})
        batch = inputs["batch3x64x96"]
        out["official_singles_batch3x64x96"] = np.concatenate([og(batch[i:i + 1]) for i in range(len(batch))])
        og.close()
        out["official_batch3x64x96"] = _official_on_a_batch(values, batch)
    np.savez(out_path, **out)


def _official_on_a_batch(values, x):
    import tensorflow as tf

    from anime_gan import constants as C
    from references.official_graph import OFFICIAL_META

    graph = tf.Graph()
    with graph.as_default():
        ph = tf.compat.v1.placeholder(tf.float32, (None, None, None, 3))
        tf.compat.v1.train.import_meta_graph(str(OFFICIAL_META), clear_devices=True, input_map={C.TF1_INPUT: ph})
        output = graph.get_tensor_by_name(C.TF1_OUTPUT)
        assigns = [v.assign(values[v.op.name]) for v in tf.compat.v1.global_variables()]
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(assigns)
            return session.run(output, {ph: x})


# ------------------------------------------------------------------------------------------------
# parent: run the workers, print the tables


def run_config(name, env_overrides, variant=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "TF_NUM_INTRAOP_THREADS")}
    env.update(env_overrides)
    env["ONEDNN_VERBOSE"] = "1"  # prints the ISA oneDNN dispatches to and each conv's kernel
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "out.npz"
        cmd = [sys.executable, __file__, "--worker", str(path)] + (["--variant", variant] if variant else [])
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: configuration {name} failed:\n{proc.stderr[-3000:]}")
        with np.load(path) as f:
            outputs = {k: f[k] for k in f.files}
    isa = re.search(r"onednn_verbose,.*info,cpu,isa:(.*)", proc.stdout)
    nthr = re.search(r"onednn_verbose,.*info,cpu,runtime:\w+,nthr:(\d+)", proc.stdout)
    convs = sorted(set(re.findall(r"onednn_verbose,.*exec,cpu,convolution,([^,]+),", proc.stdout)))
    if convs and isa:  # oneDNN ran the convolutions: name its ISA briefly, its threads, its kernels
        short = isa.group(1).strip().split(" with ")[0] + (" + AMX" if "AMX" in isa.group(1) else "")
        onednn = f"{short}, {nthr.group(1) if nthr else '?'} thr: {' '.join(convs)}"
    else:
        onednn = "off (TensorFlow's Eigen convolutions)"
    return {"outputs": outputs, "onednn": onednn, "convs": convs, "seconds": time.time() - t0}


def _fmt(v):
    return "—" if v is None else ("0" if v == 0 else f"{v:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="default and oneDNN off only")
    parser.add_argument("--no-variants", action="store_true", help="skip the deliberately wrong generators")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.variant)

    golden = np.load(GOLDEN)
    sizes = [k[len("input_"):] for k in golden.files if k.startswith("input_")]
    names = QUICK if args.quick else list(CONFIGS)
    results = {}
    for name in names:
        results[name] = run_config(name, CONFIGS[name])
        print(f"  ran {name:<22} {results[name]['seconds']:5.1f} s  oneDNN: {results[name]['onednn']}",
              file=sys.stderr)

    def vs_golden(outputs, size):
        # the batch's first image is the golden 64x96 input
        got = outputs[f"ours_{size}"] if size in sizes else outputs["ours_batch3x64x96"][:1]
        d = np.abs(got.astype(np.float64) - golden[f"output_{size if size in sizes else '64x96'}"])
        return d.max(), d.mean()

    checked = sizes + ["batch3x64x96"]
    report = {"cpu": _cpu(), "sizes": checked, "configs": {}, "pairwise": {}, "variants": {}}
    have_official = "official_64x96" in results[names[0]]["outputs"]

    print(f"\nCPU: {report['cpu']}")
    meta = str(results[names[0]]["outputs"]["meta_path"])
    print(f"golden: {GOLDEN.relative_to(REPO)}; official graph: {meta if have_official else 'absent'}\n")
    print("## ours vs golden, per kernel configuration (max |Δ| / mean |Δ|; batch = its first image)\n")
    print("| configuration | oneDNN | " + " | ".join(checked) + " | same-process max |ours − official| "
          "| max |official − golden| | official graph: batch − one by one |")
    print("|---|---|" + "---|" * len(checked) + "---|---|---|")
    for name in names:
        out = results[name]["outputs"]
        row, entry = [], {"onednn": results[name]["onednn"], "convs": results[name]["convs"]}
        for size in checked:
            mx, mean = vs_golden(out, size)
            entry[size] = {"max": float(mx), "mean": float(mean)}
            row.append(f"{_fmt(mx)} / {_fmt(mean)}")
        same = off_golden = batch_single = None
        if have_official:
            batch_single = float(np.abs(out["official_batch3x64x96"] - out["official_singles_batch3x64x96"]).max())
            same = max(float(np.abs(out[f"ours_{k}"] - out[f"official_{k}"]).max())
                       for k in [k[len("ours_"):] for k in out if k.startswith("ours_")])
            off_golden = max(float(np.abs(out[f"official_{s}"].astype(np.float64) - golden[f"output_{s}"]).max())
                             for s in sizes)
        entry["same_process_vs_official"] = same
        entry["official_vs_golden"] = off_golden
        entry["official_batch_vs_one_by_one"] = batch_single
        report["configs"][name] = entry
        print(f"| {name} | {results[name]['onednn']} | " + " | ".join(row)
              + f" | {_fmt(same)} | {_fmt(off_golden)} | {_fmt(batch_single)} |")

    keys = [k[len("ours_"):] for k in results[names[0]]["outputs"] if k.startswith("ours_")]
    print("\n## pairwise spread between configurations: max |ours(a) − ours(b)| over every input\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    worst = (0.0, None)
    for a in names:
        row = []
        for b in names:
            d = max(float(np.abs(results[a]["outputs"][f"ours_{k}"] - results[b]["outputs"][f"ours_{k}"]).max())
                    for k in keys)
            row.append(_fmt(d))
            if a < b:
                report["pairwise"][f"{a} vs {b}"] = d
                worst = max(worst, (d, f"{a} vs {b}"), key=lambda t: t[0])
        print(f"| {a} | " + " | ".join(row) + " |")
    per_input = {k: max(float(np.abs(results[a]["outputs"][f"ours_{k}"] - results[b]["outputs"][f"ours_{k}"]).max())
                        for a, b in itertools.combinations(names, 2)) if len(names) > 1 else 0.0
                 for k in keys}
    print("\nworst pair per input: " + ", ".join(f"{k} {_fmt(v)}" for k, v in per_input.items()))
    report["pairwise_per_input"] = per_input

    max_golden = max(report["configs"][n][s]["max"] for n in names for s in checked)
    mean_golden = max(report["configs"][n][s]["mean"] for n in names for s in checked)
    print(f"\nlargest pairwise spread on this machine: {_fmt(worst[0])} ({worst[1]})")
    print(f"largest max |ours − golden| over configurations: {_fmt(max_golden)}; "
          f"largest mean |ours − golden|: {_fmt(mean_golden)}")
    report["largest_pairwise"] = worst[0]
    report["largest_vs_golden"] = {"max": max_golden, "mean": mean_golden}

    if not args.no_variants:
        print("\n## deliberately wrong generators vs golden (default configuration)\n")
        print("| variant | " + " | ".join(sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        for vname, variant in VARIANTS.items():
            out = run_config(vname, {}, variant)["outputs"]
            row, entry = [], {}
            for size in sizes:
                mx, mean = vs_golden(out, size)
                entry[size] = {"max": float(mx), "mean": float(mean)}
                row.append(f"{_fmt(mx)} / {_fmt(mean)}")
            report["variants"][vname] = entry
            print(f"| {vname} | " + " | ".join(row) + " |")

    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


def _cpu():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
