"""Peak memory and time of stylizing one large image: whole-image generator vs bounded (issue 12).

Each (size, path) runs in its own subprocess, one at a time, with a generator of random weights
(weights change neither memory nor time) inside the serving graph's own steps: uint8 -> [-1, 1],
`anime_gan.deploy.saved_model.generate` (reflect pad to multiples of 4, G, crop), -> uint8, as one
tf.function with dynamic sizes. The child warms up (traces, and runs the banded graph it will use
on a small image), then reads its peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`, the high-water mark
so far) as the baseline, stylizes one random HxH image and reads it again.

Paths:
  whole    G itself (what serving ran before; ~2.7 KB per pixel: refused above 1536 unless
           --allow_large_whole, as 2048^2 needs 12 GB and 3072^2 ~26 GB)
  bounded  `anime_gan.deploy.banded.MemoryBoundedGenerator` as serving would run it (whole when the image
           fits the budget, else banded by the plan for its size)
  banded   a banded plan of the bounded generator forced at any size: --tier=K (default: the
           plan for the largest images)
  stylize  `anime_gan.inference.stylize(image, model=generator)`: whatever `anime_gan.deploy.saved_model` wires in

    .venv/bin/python tools/measure_inference_memory.py --sizes=512,1024,1536 --paths=whole,bounded,banded
    .venv/bin/python tools/measure_inference_memory.py --sizes=4096 --paths=bounded

Prints a markdown table; --json=FILE also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_WHOLE_SIDE = 1536  # whole, 1536^2 takes ~7 GB; 2048^2 peaked at 12 GB, 3072^2 past 16 GB


def child(args):
    import resource

    import numpy as np
    import tensorflow as tf

    from anime_gan.deploy import banded
    from anime_gan.nets import build_generator
    from anime_gan.image_io import images_to_unit_range, unit_range_to_images
    from anime_gan.deploy.saved_model import generate

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    generator = build_generator("float32", arch=args.arch)
    budget = int(args.budget_gib * 2**30)
    info = {}
    if args.path == "whole":
        runner = generator
    elif args.path == "stylize":
        runner = None
    else:
        bounded = banded.MemoryBoundedGenerator(generator, max_side=args.max_side, memory_budget=budget,
                                                band_bytes=int(args.band_mb * 2**20))
        pixels = args.size * args.size
        tier = len(bounded.tiers) - 1 if args.tier is None else args.tier
        if args.path == "bounded":
            tier = next((k for k, (limit, _) in enumerate(bounded.tiers) if pixels <= limit), tier)
            uses = "whole" if args.batch * pixels <= bounded.whole_pixels else f"banded tier {tier}"
        else:
            uses = f"banded tier {tier}"
        plan = bounded.tiers[tier][1]
        info["plan"] = (uses if uses == "whole" else
                        f"{uses}: {plan.peak_bytes_per_pixel:.0f} B/px stored, {plan.recompute_factor:.2f}x MACs")
        one = bounded.tier_functions[tier]  # one image [1, H, W, 3] -> [1, H, W, 3]
        if args.path == "bounded":
            runner = bounded
        else:
            def runner(x):
                return banded.for_each_image(x, tf.raw_ops.Empty(shape=tf.shape(x), dtype=tf.float32),
                                             lambda image: one(image[tf.newaxis])[0])
        if uses != "whole":
            one(tf.zeros([1, 32, 32, 3]))  # instantiate the banded graph it will use

    if runner is None:
        from anime_gan.inference import stylize

        def run(images):
            return stylize(images, model=generator)
    else:
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)], autograph=False)
        def serve(images):
            return unit_range_to_images(generate(runner, images_to_unit_range(images)))

        def run(images):
            return serve(tf.constant(images)).numpy()

    run(np.zeros((args.batch, 40, 36, 3), np.uint8))  # trace and warm up
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    base = peak_mb()
    wall, cpu = time.perf_counter(), time.process_time()
    out = run(images)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({
        "size": args.size, "batch": args.batch, "path": args.path, "arch": args.arch,
        "baseline_mb": round(base), "peak_mb": round(peak_mb()), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "mean_out": float(np.mean(out)), **info,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,1536")
    parser.add_argument("--paths", default="whole,bounded")
    parser.add_argument("--arch", default="v1", choices=["v1", "v2"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--budget_gib", type=float, default=None, help="memory budget (default: the library's)")
    parser.add_argument("--max_side", type=int, default=None, help="the cap the plans are made for")
    parser.add_argument("--band_mb", type=float, default=None)
    parser.add_argument("--tier", type=int, default=None, help="--paths=banded: which plan (default: the cap's)")
    parser.add_argument("--allow_large_whole", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.budget_gib is None or args.max_side is None or args.band_mb is None:
        sys.path.insert(0, str(REPO))
        from anime_gan import constants
        from anime_gan.deploy.banded import DEFAULT_BAND_BYTES, DEFAULT_MEMORY_BUDGET

        args.budget_gib = args.budget_gib or DEFAULT_MEMORY_BUDGET / 2**30
        args.max_side = args.max_side or constants.DEFAULT_MAX_SIDE
        args.band_mb = args.band_mb or DEFAULT_BAND_BYTES / 2**20
    if args.child:
        return child(args)

    rows = []
    print("| size | batch | path | baseline MB | peak RSS MB | working MB | wall s | CPU s | how |")
    print("|---|---|---|---|---|---|---|---|---|")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    for size in [int(s) for s in args.sizes.split(",")]:
        for path in args.paths.split(","):
            if path == "whole" and size > MAX_WHOLE_SIDE and not args.allow_large_whole:
                print(f"| {size} | {args.batch} | whole | skipped: ~{2.7 * size * size / 1e6:.0f} GB "
                      f"(--allow_large_whole) | | | | | |")
                continue
            cmd = [sys.executable, __file__, "--child", f"--size={size}", f"--path={path}", f"--arch={args.arch}",
                   f"--batch={args.batch}", f"--budget_gib={args.budget_gib}", f"--max_side={args.max_side}",
                   f"--band_mb={args.band_mb}"] + ([f"--tier={args.tier}"] if args.tier is not None else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
            if proc.returncode or not lines:
                print(f"| {size} | {args.batch} | {path} | failed (exit {proc.returncode}): "
                      f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:120]} | | | | | |", flush=True)
                continue
            row = json.loads(lines[-1])
            rows.append(row)
            print(f"| {size} | {args.batch} | {path} | {row['baseline_mb']} | {row['peak_mb']} | "
                  f"{row['peak_mb'] - row['baseline_mb']} | {row['wall_s']} | {row['cpu_s']} | {row.get('plan', '')} |",
                  flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
