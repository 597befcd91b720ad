"""The README's main job end to end: `make train` = demo.cfg on a fresh machine, offline.

Builds the demo set into a temporary folder, trains both phases, and checks what the user is told and
what they get: a checkpoint, samples that visibly differ from the photos, a loss plot, the
untrained-VGG warning at the start and the end (offline, VGG19 falls back to random weights), and,
where VGG19 ImageNet weights are available, samples whose colours moved toward the style set's.
"""

import glob
import time

import numpy as np
import pytest

from helpers import REPO, run_train

# A sample differs "visibly" from its photo when the mean absolute difference is above 10 grey levels
# (4% of the range): JPEG round trips and 1-level rounding stay below ~2, and the smallest colour
# steps people notice on flat regions are ~2-3 levels, so 10 over the whole image is unmistakable.
VISIBLE_MAD = 10.0


def colour_histogram(images, bins=8):
    """Joint RGB histogram (bins^3 cells), normalised to sum 1, of uint8 RGB images."""
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64) * bins // 256
    idx = (pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2]
    h = np.bincount(idx, minlength=bins ** 3).astype(np.float64)
    return h / h.sum()


def read_rgb(path):
    import cv2

    return cv2.imread(str(path))[..., ::-1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One run of demo.cfg (data build + both phases + export), shared by the tests below."""
    tmp_path = tmp_path_factory.mktemp("demo")
    dataset, ckpt = tmp_path / "dataset", tmp_path / "ckpt"
    t0 = time.time()
    r = run_train([f"--flagfile={REPO / 'anime_gan' / 'configs' / 'demo.cfg'}", f"--dataset_dir={dataset}",
                   f"--checkpoint_dir={ckpt}", "--progress=false"], timeout=1800)
    print(f"demo run (data build + training + export): {time.time() - t0:.0f} s")
    return r, dataset, ckpt


def _last_grid(ckpt):
    samples = sorted(glob.glob(str(ckpt / "samples" / "epoch_*.png")))
    grid = read_rgb(samples[-1]).astype(np.float64)
    half = grid.shape[1] // 2
    return samples, half, grid[:, :half], grid[:, half:]


@pytest.mark.slow
def test_make_train_demo_run(demo_run):
    r, dataset, ckpt = demo_run
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    # Where everything is, printed at the end.
    for what in ("checkpoint (resume):", "samples:", "loss plot:", "TensorBoard:"):
        assert what in r.stdout
    if "RANDOM weights" in out:
        # at the start and again at the end, in the commands' plain `warning: ` format
        assert out.count("warning: the perceptual VGG19 has RANDOM weights") == 2

    assert glob.glob(str(ckpt / "ckpt-*.index"))
    from anime_gan.weights import load_generator

    load_generator(ckpt / "generator")
    plot = ckpt / "logs" / "loss_curves.png"
    assert plot.exists() and plot.stat().st_size > 0 and read_rgb(plot).std() > 0

    # The last sample grid: rows of photo | generated.
    samples, _, photos, generated = _last_grid(ckpt)
    assert len(samples) == 6 - 2 + 1  # after every epoch from the end of init (epoch 2 of 6) on
    mad = np.abs(generated - photos).mean()
    assert mad > VISIBLE_MAD, mad


@pytest.mark.slow
def test_demo_colours_move_toward_the_style_set(demo_run):
    r, dataset, ckpt = demo_run
    assert r.returncode == 0
    if "RANDOM weights" in r.stdout + r.stderr:
        # Offline no VGG19 ImageNet weights can be had. With the image-keeping random VGG the init
        # phase reproduces the photos roughly, but the short GAN phase drives the colours away from
        # the style set, not toward it (histogram L1 to the style set 1.15-1.49 against the photos'
        # 0.78, no trend over 7 GAN epochs): what this checks needs a perceptual network that knows
        # images. Like the tests that need the official weights, this one needs a resource.
        pytest.skip("needs VGG19 ImageNet weights (Keras cache or --vgg_weights); offline the perceptual "
                    "network is random and the demo cannot learn colours")
    # Colours moved toward the style set during the GAN phase: the last sample's colour histogram
    # is closer (L1) to the style images' than the first sample's (end of the init phase) was.
    samples, half, photos, generated = _last_grid(ckpt)
    style = [read_rgb(p) for p in sorted(glob.glob(str(dataset / "Demo" / "style" / "*")))]
    h_style = colour_histogram(style)
    first = read_rgb(samples[0])
    d_first = np.abs(colour_histogram([first[:, half:]]) - h_style).sum()
    d_last = np.abs(colour_histogram([generated.astype(np.uint8)]) - h_style).sum()
    d_photo = np.abs(colour_histogram([photos.astype(np.uint8)]) - h_style).sum()
    print(f"colour histogram L1 to the style set: photos {d_photo:.3f}, end of init {d_first:.3f}, end {d_last:.3f}")
    assert d_last < d_first
