"""Tiny datasets and commands shared by the training tests."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
STYLE = "Tiny"


def make_tiny_dataset(root, n_photo=8, n_style=8, n_val=2, side=32, seed=0):
    """The official layout with smooth random images (blurred noise: photo-like statistics)."""
    import cv2

    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)

    def image(kind):
        small = rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8)
        img = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        if kind == "style":  # flat, saturated colours, as a cartoon
            img = (img // 64) * 64 + 32
        return img

    for folder, n, kind in (("train_photo", n_photo, "photo"), (f"{STYLE}/style", n_style, "style"),
                            (f"{STYLE}/smooth", n_style, "style"), ("val", n_val, "photo")):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{i:03d}.png"), image(kind))
    return str(root)


def tiny_args(dataset_dir, checkpoint_dir, **overrides):
    flags = dict(dataset_dir=dataset_dir, dataset=STYLE, checkpoint_dir=checkpoint_dir, img_size=32,
                 batch_size=2, ch=8, epoch=2, init_epoch=1, vgg_weights="random", seed=3,
                 export_saved_model=False, progress=False)
    flags.update(overrides)
    return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in flags.items()]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return e


def train_command(args):
    return [sys.executable, "-m", "anime_gan.train", *args]


def run_train(args, timeout=600, **kwargs):
    return subprocess.run(train_command(args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


class cpu_hog:
    """`with cpu_hog(n):` n busy-loop processes beside the test, each ending by itself after `seconds`
    and killed when the block ends (also on failure)."""

    def __init__(self, n=1, seconds=300):
        self.n, self.seconds, self.procs = n, seconds, []

    def __enter__(self):
        code = f"import time\nend = time.time() + {float(self.seconds)}\nwhile time.time() < end:\n    pass\n"
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen([sys.executable, "-c", code]))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = []
        return False
