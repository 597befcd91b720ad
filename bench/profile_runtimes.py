"""Where the time goes in ONNX Runtime and OpenVINO: kernel time summed by op type.

    python -m bench.profile_runtimes                        # v1, 256x256
    python -m bench.profile_runtimes --arch=v2 --size=720x1280 --runs=3

The generator (seeded random weights, as in bench.bench_runtimes) is converted once with
`anime_gan.deploy.onnx.to_onnx`, then run on one uint8 image:

- ONNX Runtime (CPU provider, `--threads` intra-op threads) with `enable_profiling`: the JSON
  profile's "Node" events (`args.op_name`, `dur`) of the timed runs (the warm-up runs are left out);
- OpenVINO CPU at float32 (`INFERENCE_PRECISION_HINT` f32, LATENCY, as anime_gan.inference.runners sets it),
  compiled for the image's shape, with `PERF_COUNT`: `get_profiling_info()` real time of the
  executed nodes, summed over the timed runs.

Per runtime: a table by op type (ms per call, share of the summed kernel time), then the same time
in groups (convolutions; norms = the element-wise ops and reductions of the instance norms, which
also count the residual Adds and the output scaling; layout; padding; resize; the rest), and the
median wall time per call. For context, the official TF1 graph (when its .meta is present) and
our TensorFlow float32 generator are timed at the same size.

LiteRT is not profiled: its op profiler is not reachable from the Python interpreter API (it needs
the `benchmark_model` tool), so only its wall time is given (`--litert`, int8 dynamic-range).
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import tempfile
import time

import numpy as np

from bench.common import median_ms
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "256x256", "Image size HEIGHTxWIDTH.")
flags.DEFINE_enum("arch", "v1", ["v1", "v2"], "Generator architecture.")
flags.DEFINE_integer("runs", 5, "Profiled runs per runtime (after the warm-up runs).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed runs per runtime first.", lower_bound=1)
flags.DEFINE_integer("threads", 2, "Intra-op threads of each runtime.", lower_bound=1)
flags.DEFINE_integer("top", 14, "Op types listed per runtime (the rest summed as 'other').", lower_bound=1)
flags.DEFINE_enum("ov_precision", "f32", ["f32", "bf16"],
                  "OpenVINO INFERENCE_PRECISION_HINT (anime_gan.inference.runners uses f32; bf16 shows what it would gain).")
flags.DEFINE_bool("litert", True, "Also time (not profile) LiteRT int8 dynamic-range.")

# Op type -> group, for ONNX Runtime and OpenVINO names.
GROUPS = {
    "convolutions": {"Conv", "FusedConv", "ConvTranspose", "ConvInteger", "QLinearConv", "NhwcFusedConv",
                     "Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "FullyConnected"},
    "norms (element-wise + reductions)": {
        "ReduceMean", "GlobalAveragePool", "Sub", "Mul", "Pow", "Sqrt", "Div", "Add", "Reciprocal",
        "InstanceNormalization", "LayerNormalization", "SquaredDifference", "MVN", "Eltwise", "Subgraph",
        "Multiply", "Subtract", "Divide", "Power", "ReduceSum", "Sum", "Mean"},
    "activations": {"LeakyRelu", "Relu", "PRelu", "Tanh", "Clip", "Sigmoid"},
    "layout (Transpose/Reorder/Reshape)": {"Transpose", "Reorder", "ReorderInput", "ReorderOutput", "Reshape",
                                           "Squeeze", "Unsqueeze", "Shape", "Concat", "Slice", "Gather", "Split"},
    "padding": {"Pad", "MirrorPad"},
    "resize": {"Resize", "Interpolate", "Upsample"},
    "casts / rounding": {"Cast", "Convert", "Round", "Floor", "Max", "Min", "Maximum", "Minimum"},
}


def group_of(op):
    for group, ops in GROUPS.items():
        if op in ops:
            return group
    return "other"


def table(title, totals, runs, wall_ms, top):
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    rows = ranked[:top]
    rest = sum(v for _, v in ranked[top:])
    if rest:
        rows.append(("other", rest))
    lines = [f"### {title}: {wall_ms:.1f} ms wall per call (median), {total / runs:.1f} ms summed kernel time",
             "", "| op type | ms per call | % |", "|---|---|---|"]
    lines += [f"| {op} | {ms / runs:.2f} | {100 * ms / total:.1f} |" for op, ms in rows]
    grouped = collections.defaultdict(float)
    for op, ms in totals.items():
        grouped[group_of(op)] += ms
    lines += ["", "| group | ms per call | % |", "|---|---|---|"]
    lines += [f"| {g} | {ms / runs:.2f} | {100 * ms / total:.1f} |"
              for g, ms in sorted(grouped.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def profile_onnxruntime(path, image):
    """({op type: summed kernel ms over the timed runs}, median wall ms, float32 [-1, 1] output)."""
    import onnxruntime as ort

    from anime_gan.deploy.onnx import FLOAT_OUTPUT_NAME, INPUT_NAME, OUTPUT_NAME

    options = ort.SessionOptions()
    options.intra_op_num_threads = FLAGS.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(path), "ort_profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda: session.run([OUTPUT_NAME, FLOAT_OUTPUT_NAME], {INPUT_NAME: image})  # noqa: E731
    for _ in range(FLAGS.warmup):
        run()
    wall = median_ms(run, FLAGS.runs, warmup=0)
    y = run()[1]
    profile = session.end_profiling()
    with open(profile) as f:
        events = json.load(f)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) != FLAGS.warmup + FLAGS.runs + 1:
        raise RuntimeError(f"expected {FLAGS.warmup + FLAGS.runs + 1} model_run events in {profile}, got {len(runs)}")
    start = runs[FLAGS.warmup]["ts"]
    totals = collections.defaultdict(float)
    for e in events:
        timed_run = start <= e.get("ts", -1) < runs[-1]["ts"]  # not the warm-up nor the output run
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and timed_run:
            totals[e["args"]["op_name"]] += e["dur"] / 1000.0  # µs -> ms
    return dict(totals), wall, y


def conv_gflop(model):
    """GFLOP (2 x multiply-adds) of the (group) convolutions of a statically shaped OpenVINO model."""
    macs = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution"):
            continue
        out = [int(d) for d in op.get_output_shape(0)]
        weights = [int(d) for d in op.input(1).get_shape()]
        per_output = np.prod(weights[1:]) if kind == "Convolution" else np.prod(weights[2:])
        macs += int(np.prod(out)) * int(per_output)
    return 2 * macs / 1e9


def profile_openvino(path, image):
    """({node type: summed real ms over the timed runs}, median wall ms, conv GFLOP per call,
    float32 [-1, 1] output)."""
    import openvino as ov

    from anime_gan.deploy.onnx import FLOAT_OUTPUT_NAME, INPUT_NAME

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({INPUT_NAME: list(image.shape)})
    config = {"INFERENCE_PRECISION_HINT": FLAGS.ov_precision, "INFERENCE_NUM_THREADS": FLAGS.threads,
              "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    gflop = conv_gflop(model)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    run = lambda: request.infer({INPUT_NAME: image})  # noqa: E731
    for _ in range(FLAGS.warmup):
        run()
    totals = collections.defaultdict(float)
    times = []
    for _ in range(FLAGS.runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000.0)
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                totals[info.node_type] += info.real_time.total_seconds() * 1000.0
    return dict(totals), statistics.median(times), gflop, np.asarray(request.get_tensor(FLOAT_OUTPUT_NAME).data)


def main(argv):
    del argv
    import tensorflow as tf

    from anime_gan.deploy.onnx import to_onnx
    from anime_gan.inference.runtimes import calibration_image, psnr_db
    from bench.bench_runtimes import seeded_generators

    try:
        h, w = (int(v) for v in FLAGS.size.lower().split("x"))
    except ValueError:
        raise app.UsageError(f"--size={FLAGS.size!r} is not HEIGHTxWIDTH, e.g. 256x256.")
    print(f"load: {os.getloadavg()}; {FLAGS.arch} {w}x{h}, {FLAGS.threads} threads, "
          f"{FLAGS.warmup} warm-up + {FLAGS.runs} timed runs")
    values, generators = seeded_generators()
    generator = generators[FLAGS.arch]
    big = calibration_image(max(h, w))  # photo-like: smooth gradients plus noise
    image = np.ascontiguousarray(big[:, :h, :w])
    x_float = image.astype(np.float32) / 127.5 - 1.0

    # TensorFlow context (the targets are ratios to the official graph).
    context = {}
    from references.official_graph import OFFICIAL_META, OfficialGenerator

    if OFFICIAL_META.exists():
        official = OfficialGenerator(OFFICIAL_META)
        official.assign(values)
        official(x_float), official(x_float)
        context["official TF1 graph (v1)"] = median_ms(lambda: official(x_float), FLAGS.runs, warmup=0)
        official.close()
    f = tf.function(generator.call, input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32)])
    f(x_float), f(x_float)
    context[f"ours TF float32 ({FLAGS.arch})"] = median_ms(lambda: f(x_float).numpy(), FLAGS.runs, warmup=0)

    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, f"{FLAGS.arch}.onnx")
        with open(path, "wb") as out:
            out.write(to_onnx(generator).SerializeToString())
        if FLAGS.litert:
            try:
                from anime_gan.deploy.tflite import TFLiteRunner, write_tflite

                tfl = write_tflite(generator, os.path.join(workdir, "int8.tflite"), precision="int8",
                                   height=h, width=w)
                runner = TFLiteRunner(tfl, threads=FLAGS.threads)
                runner(image), runner(image)
                context["LiteRT int8 dynamic-range (wall only)"] = median_ms(lambda: runner(image), FLAGS.runs,
                                                                             warmup=0)
                del runner
            except Exception as e:  # noqa: BLE001 - a context line only
                print(f"LiteRT skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

        results = {}
        totals, wall, y_ort = profile_onnxruntime(path, image)
        results["ONNX Runtime"] = wall
        print()
        print(table(f"ONNX Runtime {FLAGS.arch} {w}x{h}", totals, FLAGS.runs, wall, FLAGS.top))
        totals, wall, gflop, y_ov = profile_openvino(path, image)
        results[f"OpenVINO {FLAGS.ov_precision}"] = wall
        print()
        print(f"OpenVINO {FLAGS.ov_precision} against ONNX Runtime: {psnr_db(y_ort, y_ov):.1f} dB PSNR")
        print(table(f"OpenVINO {FLAGS.ov_precision} {FLAGS.arch} {w}x{h}", totals, FLAGS.runs, wall, FLAGS.top))
        conv_ms = sum(ms for op, ms in totals.items() if group_of(op) == "convolutions") / FLAGS.runs
        print(f"\nconvolutions: {gflop:.1f} GFLOP per call, {gflop / conv_ms * 1000:.0f} GFLOP/s in OpenVINO "
              f"({conv_ms:.0f} ms)")

    base = context.get("official TF1 graph (v1)")
    print("\n| case | wall ms (median) | × official graph |\n|---|---|---|")
    for name, ms in {**context, **results}.items():
        ratio = f"{ms / base:.2f}" if base else "n/a"
        print(f"| {name} | {ms:.1f} | {ratio} |")
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    app.run(main)
