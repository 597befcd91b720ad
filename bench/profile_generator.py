"""Where the generator's time goes: a TensorBoard profile of the official graph and of ours.

    python -m bench.profile_generator                       # 256x256, logs in bench/profile/
    python -m bench.profile_generator --size=720x1280 --steps=2
    tensorboard --logdir=bench/profile                      # Profile tab (pip install tensorboard-plugin-profile)

Each case (official graph, ours float32, ours mixed_bfloat16) runs warm-up calls, then `--steps` calls
under `tf.profiler.experimental`, into its own run folder. The trace (`*.xplane.pb`) is then read
back here: every TensorFlow op event ("node:OpType") on the host's executor threads is summed by op
type, and the table gives each type's share of the op time and its ms per call.
"""

from __future__ import annotations

import collections
import glob
import os
import pathlib

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "256x256", "Image size HEIGHTxWIDTH.")
flags.DEFINE_integer("steps", 5, "Profiled calls per case.", lower_bound=1)
flags.DEFINE_string("logdir", str(pathlib.Path(__file__).resolve().parent / "profile"),
                    "TensorBoard log folder (one run per case).")
flags.DEFINE_integer("top", 12, "Op types listed per case (the rest are summed as 'other').", lower_bound=1)


def op_times_ms(xplane_path: str) -> dict[str, float]:
    """{op type: summed duration in ms} of the TensorFlow op events in one xplane.pb trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                node, sep, op_type = name.rpartition(":")
                # Op events are "node_name:OpType"; runtime events ("EagerLocalExecute: f",
                # "ExecutorState::Process") have spaces or C++ scopes.
                if not sep or not node or " " in name or "::" in name or not op_type.isidentifier():
                    continue
                totals[op_type] += event.duration_ps / 1e9
    return dict(totals)


def profile_case(fn, logdir: str, steps: int) -> str:
    """Runs fn() `steps` times under the profiler into `logdir`; the path of the trace written."""
    import tensorflow as tf

    before = set(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(steps):
            fn()
    finally:
        tf.profiler.experimental.stop()
    new = set(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))) - before
    if not new:
        raise RuntimeError(f"The profiler wrote no trace under {logdir}.")
    return max(new, key=os.path.getmtime)


def table(name: str, totals: dict[str, float], steps: int, top: int) -> str:
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    rows = ranked[:top]
    rest = sum(v for _, v in ranked[top:])
    if rest:
        rows.append(("other", rest))
    lines = [f"### {name}: {total / steps:.1f} ms of op time per call", "",
             "| op type | share | ms per call |", "|---|---|---|"]
    lines += [f"| {op} | {100 * ms / total:.1f}% | {ms / steps:.1f} |" for op, ms in rows]
    return "\n".join(lines)


def main(argv):
    del argv
    import tensorflow as tf

    from anime_gan.nets import Generator, build_generator
    from references.official_graph import OFFICIAL_META, OfficialGenerator, random_official_weights
    from anime_gan.weights import tf1_to_generator

    try:
        h, w = (int(v) for v in FLAGS.size.lower().split("x"))
    except ValueError:
        raise app.UsageError(f"--size={FLAGS.size!r} is not HEIGHTxWIDTH, e.g. 256x256.")
    probe = Generator()
    probe.build()
    values = random_official_weights({n: tuple(v.shape) for n, v in probe.tf1_variable_map().items()}, seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    spec = [tf.TensorSpec([1, h, w, 3], tf.float32)]
    cases = {}
    official = None
    if OFFICIAL_META.exists():
        official = OfficialGenerator(OFFICIAL_META)
        official.assign(values)
        cases["official graph"] = lambda: official(x)
    else:
        print(f"official graph skipped: {OFFICIAL_META} not found")
    for policy in ("float32", "mixed_bfloat16"):
        f = tf.function(tf1_to_generator(values, build_generator(policy)).call, input_signature=spec)
        cases[f"ours {policy}"] = lambda f=f: f(x).numpy()

    for name, fn in cases.items():
        fn(), fn()  # trace, compile and warm the caches outside the profile
        logdir = os.path.join(FLAGS.logdir, f"{name.replace(' ', '_')}_{w}x{h}")
        trace = profile_case(fn, logdir, FLAGS.steps)
        print(table(f"{name}, {w}x{h}", op_times_ms(trace), FLAGS.steps, FLAGS.top))
        print(f"\ntrace: {trace}\n")
    if official is not None:
        official.close()


if __name__ == "__main__":
    app.run(main)
