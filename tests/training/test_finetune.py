"""Fine-tuning (--init_from): the run's G starts as the init model exactly, one GAN step moves it a
little, the init phase is skipped unless --init_epoch is given, a checkpoint wins over --init_from,
and a wrong or missing model is one sentence. Tiny data sets (tests/helpers.py), v2 with the v2 code's
loss weights; the init models are seeded random generators saved as our weights files."""

import os
import pathlib
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from anime_gan.errors import ConfigError, PathNotFoundError
from anime_gan.training.config import TrainConfig
from anime_gan.training.loop import TrainingRun, train
from anime_gan.training.setup import make_strategy
from anime_gan.weights import load_generator, save_generator
from helpers import ENV, STYLE, logged, make_tiny_dataset, read_metrics, seeded_generator

V2 = dict(arch="v2", g_lr=2e-5, d_lr=4e-5, g_adv_weight=300.0, d_adv_weight=300.0, con_weight=1.5, sty_weight=2.5,
          color_weight=10.0, tv_weight=1.0, d_real_weight=1.7, d_gray_weight=1.7, d_fake_weight=1.7,
          d_smooth_weight=1.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two v2 models (different seeds), a v1 model and a v2 model with the PyTorch port's forward."""
    root = tmp_path_factory.mktemp("models")
    found = {}
    for name, seed, arch, options in (("v2", 7, "v2", {}), ("v2_other", 8, "v2", {}), ("v1", 9, "v1", {}),
                                      ("port", 10, "v2", dict(resize="align_corners", epsilon=1e-5))):
        save_generator(seeded_generator(seed, arch=arch, **options), root / name)
        found[name] = str(root / name)
    return found


@pytest.fixture(scope="module")
def photo():
    """skimage's astronaut at 256², as the generator's float input in [-1, 1]."""
    skimage = pytest.importorskip("skimage")
    rgb = cv2.imread(os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png"))[..., ::-1]
    rgb = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
    return rgb[None].astype(np.float32) / 127.5 - 1.0


def _cfg(tiny, checkpoint_dir, **kw):
    base = dict(dataset_dir=tiny, dataset=STYLE, checkpoint_dir=str(checkpoint_dir), img_size=32, batch_size=2, ch=8,
                epoch=1, init_epoch=0, steps_per_epoch=1, vgg_weights="random", seed=3, export_saved_model=False,
                epoch_weights=False, progress=False, **V2)
    base.update(kw)
    return TrainConfig(**base)


def psnr(a, b):
    """PSNR in dB of two generator outputs in [-1, 1], on the 0..255 scale, unrounded."""
    mse = np.mean(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) * 127.5) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def _weights(generator):
    return [w.numpy() for w in generator.weights]


def test_before_any_step_g_is_the_init_model_exactly(tiny, models, photo, tmp_path):
    cfg = _cfg(tiny, tmp_path / "run", init_from=models["v2"]).resolved()
    run = TrainingRun(cfg, make_strategy(cfg.strategy), True, cfg.checkpoint_dir)
    resume = run.find_resume()
    init = run.load_init(resume)
    run.load_data()
    run.build()
    with logged("anime_gan") as messages:
        run.restore(resume, init)
    reference = load_generator(models["v2"])
    g = run.model.generator
    assert len(g.weights) == len(reference.weights)
    for a, b in zip(_weights(g), _weights(reference)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g(photo).numpy(), reference(photo).numpy())
    assert [m for m in messages if m.startswith("Fine-tuning from")] == [
        f"Fine-tuning from {models['v2']}: G starts from its weights, D and the optimizers start fresh; "
        f"no init phase (--init_epoch=0)."]


@pytest.fixture(scope="module")
def one_step(tiny, models, tmp_path_factory):
    """A fine-tuning run of one GAN step from models["v2"]."""
    cfg = _cfg(tiny, tmp_path_factory.mktemp("one_step") / "run", init_from=models["v2"])
    return cfg, train(cfg)


def test_one_gan_step_moves_g_a_little(one_step, models, photo):
    cfg, result = one_step
    assert [(r["step"], r["phase"]) for r in read_metrics(result.metrics_path)] == [(1, "gan")]
    init, other = load_generator(models["v2"]), load_generator(models["v2_other"])
    # Fresh Adam: its first step is lr * m/(sqrt(v) + eps) with m, v from this one gradient, i.e. about
    # g_lr * sign(gradient) for every weight: no weight moves more than g_lr, nearly all by g_lr.
    moved = np.concatenate([np.abs(a - b).ravel() for a, b in zip(_weights(result.model.generator), _weights(init))])
    assert moved.max() <= cfg.g_lr * 1.05
    assert np.mean(np.abs(moved - cfg.g_lr) <= 0.05 * cfg.g_lr) > 0.9
    before, after = init(photo).numpy(), result.model.generator(photo).numpy()
    value, unrelated = psnr(before, after), psnr(before, other(photo).numpy())
    print(f"PSNR of G after one GAN step against the init model, astronaut 256²: {value:.2f} dB "
          f"(another seeded model: {unrelated:.2f} dB)")
    # Every weight moving along its gradient's sign adds up: this random model's output moves to about
    # 20 dB (the real Hayao weights: 39 dB at this g_lr, docs/training.md), far from an unrelated model's.
    assert np.abs(after - before).max() > 0
    assert 15.0 < value < 40.0 and value > unrelated + 6.0
    # The final weights written are that generator.
    for a, b in zip(_weights(load_generator(result.generator_dir)), _weights(result.model.generator)):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_wins_over_init_from(one_step, models):
    cfg, result = one_step
    with logged("anime_gan") as messages:
        again = train(TrainConfig(**{**vars(cfg), "init_from": models["v2_other"]}))
    assert again.steps_this_run == 0 and again.steps == 1
    for a, b in zip(_weights(again.model.generator), _weights(result.model.generator)):
        np.testing.assert_array_equal(a, b)
    assert [m for m in messages if "--init_from" in m] == [
        f"--init_from={models['v2_other']} is not used: {cfg.checkpoint_dir} holds this run's checkpoints, and "
        f"resuming wins (pass --restart or another --checkpoint_dir to start from it again)."]


@pytest.mark.slow
def test_init_epoch_given_runs_the_init_phase(tiny, models, tmp_path):
    result = train(_cfg(tiny, tmp_path / "run", init_from=models["v2"], init_epoch=1))
    assert [r["phase"] for r in read_metrics(result.metrics_path)] == ["init"]


def _one_sentence(message):
    assert "\n" not in message and message.endswith("."), message
    assert message.count(". ") == message.count("e.g. "), message


@pytest.mark.parametrize("model, arch, words", [
    ("v1", "v2", ["holds an AnimeGAN (v1) generator but --arch=v2 trains AnimeGANv2", "pass --arch=v1"]),
    ("v2", "v1", ["holds an AnimeGANv2 generator but --arch=v1 trains AnimeGAN (v1)", "pass --arch=v2",
                  "configs/finetune_v2.cfg"]),
    ("port", "v2", ["the PyTorch port's forward (epsilon=1e-05, resize=align_corners)", "hayao-v2"]),
])
def test_a_model_of_another_architecture_is_one_sentence(tiny, models, tmp_path, model, arch, words):
    cfg = _cfg(tiny, tmp_path / "run", init_from=models[model], arch=arch)
    with pytest.raises(ConfigError) as e:
        train(cfg)
    message = str(e.value)
    _one_sentence(message)
    assert message.startswith(f"--init_from={models[model]} ")
    for w in words:
        assert w in message
    assert not list((tmp_path / "run").glob("ckpt-*"))


def test_a_missing_model_is_one_sentence(tiny, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(PathNotFoundError) as e:
        train(_cfg(tiny, tmp_path / "run", init_from=str(missing)))
    _one_sentence(str(e.value))
    assert str(e.value).startswith(f"--init_from={missing}: no model at {missing} ")
    # A catalogue name not downloaded yet names the command that downloads it.
    monkeypatch.setenv("ANIME_GAN_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(PathNotFoundError) as e:
        train(_cfg(tiny, tmp_path / "run2", init_from="hayao-v2"))
    _one_sentence(str(e.value).replace("`python -m anime_gan.pretrained download hayao-v2`", "CMD"))
    assert "python -m anime_gan.pretrained download hayao-v2" in str(e.value)


def test_the_command_skips_the_init_phase_unless_init_epoch_is_given(tmp_path):
    """train.config_from_flags in a light process (no TensorFlow): --init_epoch's default becomes 0 with
    --init_from; given on the command line or in a flagfile, it is kept."""
    flagfile = tmp_path / "given.cfg"
    flagfile.write_text("--init_epoch=3\n")
    finetune = pathlib.Path(__file__).resolve().parents[2] / "anime_gan" / "configs" / "finetune_v2.cfg"
    cases = [([], 5), (["--init_from=m"], 0), (["--init_from=m", "--init_epoch=2"], 2),
             (["--init_from=m", "--init_epoch=5"], 5), (["--init_from=m", f"--flagfile={flagfile}"], 3),
             ([f"--flagfile={finetune}"], 0), ([f"--flagfile={finetune}", "--init_epoch=1"], 1)]
    code = textwrap.dedent(f"""
        import sys
        from absl import flags
        from anime_gan import train
        train.define_flags()
        for args in {[a for a, _ in cases]!r}:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["train", *args])
            cfg = train.config_from_flags()
            print(cfg.init_epoch, cfg.init_from)
        print("tensorflow" in sys.modules)
        """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "False"
    assert [int(line.split()[0]) for line in lines[:-1]] == [n for _, n in cases]
    assert lines[-3].split()[1:] == ["hayao-v2"]  # finetune_v2.cfg starts from the official Hayao weights


@pytest.mark.slow
def test_one_step_from_the_official_hayao_weights(tiny, photo, tmp_path):
    """The real AnimeGANv2 Hayao weights (the maintainers' reference, dequantised) as init, at
    finetune_v2.cfg's g_lr: one GAN step moves the output by little (50.5 dB here with ch=8's D; 44.7 dB
    with the command's full-width D, docs/training.md)."""
    from references import v2_reference as R

    if not os.path.isfile(R.REFERENCE_V2):
        pytest.skip(R.SKIP_REASON)
    g = R.official_generator()
    save_generator(g, tmp_path / "hayao-v2-reference")
    result = train(_cfg(tiny, tmp_path / "run", init_from=str(tmp_path / "hayao-v2-reference"), g_lr=1e-5))
    value = psnr(g(photo).numpy(), result.model.generator(photo).numpy())
    print(f"PSNR after one GAN step from the Hayao weights (g_lr 1e-5), astronaut 256²: {value:.2f} dB")
    assert 35.0 < value < 60.0
