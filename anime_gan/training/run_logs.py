"""What a training run writes besides checkpoints: one JSON line per step (`metrics.jsonl`),
TensorBoard scalars and sample images, the sample grids of the val images and the loss plot.

`RunLog` is the writer the loop holds (chief only); the functions are also what tests and tools use
to read a run back.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from anime_gan.image_io import unit_range_to_images

SAMPLE_LIMIT = 8  # val images in each sample grid
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss_curves.png"


def read_metrics(path) -> list[dict]:
    """The complete JSON lines of a metrics file (a torn last line from a kill is ignored)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def truncate_metrics(path, last_step: int) -> None:
    """Keeps the records of steps <= last_step (what the restored checkpoint holds), atomically."""
    if not os.path.exists(path):
        return
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave the file as it was, and no partial copy
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def plot_losses(metrics_path, out_path) -> str:
    """A PNG of every loss against the step (init loss, G's and D's totals and parts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    groups = [
        ("init phase", ["init_loss", "content"], "init"),
        ("generator", ["g_loss", "g_adv", "content", "style", "color", "tv"], "gan"),
        ("discriminator", ["d_loss", "d_adv", "d_real", "d_gray", "d_fake", "d_smooth", "gp"], "gan"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, keys, phase) in zip(axes, groups):
        rows = [r for r in records if r.get("phase") == phase]
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("symlog", linthresh=1e-2)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no steps", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    tmp = f"{out_path}.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path


def to_uint8(images):
    """[-1, 1] floats -> uint8 the original's way (`unit_range_to_images`); NaN shows as black-ish 127."""
    return unit_range_to_images(np.nan_to_num(np.asarray(images, np.float32))).numpy()


def sample_grid(generator, val_images) -> np.ndarray:
    """uint8 RGB grid: one row per val image, photo | generated."""
    rows = []
    for _, image in val_images:
        out = generator(image, training=False).numpy()
        h, w = out.shape[1:3]
        rows.append(np.concatenate([to_uint8(image[0, :h, :w]), to_uint8(out[0])], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def _summary_metadata(plugin):
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    return meta.SerializeToString()


def tb_scalar(tag, value, step):
    """A TensorBoard scalar through the core `tf.summary.write` op: tensorflow-cpu 2.21 does not
    install TensorBoard (only needed to *view* the logs), and `tf.summary.scalar` requires it."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_summary_metadata("scalars"))


def tb_image(tag, rgb, step):
    """A TensorBoard image (the images plugin's layout: [width, height, png])."""
    png = tf.io.encode_png(tf.constant(rgb))
    h, w = rgb.shape[:2]
    tensor = tf.stack([tf.constant(str(w)), tf.constant(str(h)), png])
    tf.summary.write(tag, tensor, step=step, metadata=_summary_metadata("images"))


class RunLog:
    """metrics.jsonl (one line per step, written through at once), TensorBoard scalars and images; chief only."""

    def __init__(self, log_dir, enabled):
        self.enabled = enabled
        self.path = os.path.join(log_dir, METRICS_FILE)
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            self.writer = tf.summary.create_file_writer(log_dir)

    def open(self):
        if self.enabled:
            self.file = open(self.path, "ab", buffering=0)

    def step(self, record, losses):
        if not self.enabled:
            return
        line = memoryview((json.dumps(record) + "\n").encode())
        start = os.fstat(self.file.fileno()).st_size
        try:
            while line:  # an unbuffered file: each write reaches the OS now, maybe in parts
                line = line[self.file.write(line):]
        except OSError:  # a full disk: take back the torn line, so the file stays whole lines
            os.ftruncate(self.file.fileno(), start)
            raise
        with self.writer.as_default(step=record["step"]):
            for k, v in losses.items():
                tb_scalar(f"{record['phase']}/{k}", v, record["step"])
            tb_scalar("step_time", record["step_time"], record["step"])

    def image(self, name, rgb, step):
        if self.enabled:
            with self.writer.as_default(step=step):
                tb_image(name, rgb, step)
            self.writer.flush()

    def close(self):
        if self.enabled:
            self.file.close()
            self.writer.flush()
