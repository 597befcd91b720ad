"""`load_generator`, `stylize --model` and `export --checkpoint_dir` read what a training run writes:
the run folder (final weights, else its newest training checkpoint), a `ckpt-N` prefix, a SavedModel;
anything else is refused in one sentence."""

import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from helpers import ENV, REPO, STYLE, logged, make_tiny_dataset, to_uint8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny training run, in-process: 2 init steps, a checkpoint after each
    (ckpt-1 mid-epoch, ckpt-2 at the end), final weights in generator/."""
    from anime_gan.training import loop as training

    root = tmp_path_factory.mktemp("train")
    data = make_tiny_dataset(root / "data", n_photo=4, n_style=2, n_val=1, side=32)
    cfg = training.TrainConfig(
        dataset_dir=data, dataset=STYLE, checkpoint_dir=str(root / "run"), img_size=32, batch_size=2, ch=8,
        epoch=1, init_epoch=1, steps_per_epoch=2, checkpoint_every_steps=1, vgg_weights="random", seed=5,
        export_saved_model=False, progress=False)
    result = training.train(cfg)
    assert sorted(p.name for p in pathlib.Path(cfg.checkpoint_dir).glob("ckpt-*.index")) == [
        "ckpt-1.index", "ckpt-2.index"]
    return pathlib.Path(cfg.checkpoint_dir), result.model.generator


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(-1, 1, (1, 24, 20, 3)).astype(np.float32))


def assert_same_generator(loaded, trained, photo):
    for a, b in zip(loaded.weights, trained.weights, strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), a.path
    assert np.array_equal(loaded(photo).numpy(), trained(photo).numpy())  # bit-equal output


def load(path):
    """The generator and the notes `load_generator` logged ("note: <text>." -> <text>)."""
    from anime_gan.weights import load_generator

    with logged("anime_gan.weights.loading") as messages:
        generator = load_generator(path)
    return generator, [m.removeprefix("note: ").removesuffix(".") for m in messages]


def test_run_folder_gives_the_final_weights(run, photo):
    run_dir, trained = run
    generator, notes = load(run_dir)
    assert_same_generator(generator, trained, photo)
    assert notes == [f"{run_dir} is a training run: using its final weights {run_dir / 'generator' / 'generator.weights.h5'}"]


def test_run_folder_without_final_weights_falls_back_to_the_newest_checkpoint(run, photo, tmp_path):
    run_dir, trained = run
    unfinished = tmp_path / "run"
    shutil.copytree(run_dir, unfinished)
    shutil.rmtree(unfinished / "generator")  # a run still in progress, or killed
    generator, notes = load(unfinished)
    assert_same_generator(generator, trained, photo)  # ckpt-2 holds the final step
    assert len(notes) == 1 and f"newest training checkpoint {unfinished / 'ckpt-2'} (step 2, epochs done 1)" in notes[0]

    (unfinished / "checkpoint").unlink()  # no CheckpointManager index: the highest ckpt-N is taken
    generator, notes = load(unfinished)
    assert_same_generator(generator, trained, photo)
    assert str(unfinished / "ckpt-2") in notes[0]


def test_checkpoint_prefix_gives_that_checkpoint(run, photo):
    run_dir, trained = run
    generator, notes = load(run_dir / "ckpt-2")
    assert_same_generator(generator, trained, photo)
    assert notes == [f"using the generator of the training checkpoint {run_dir / 'ckpt-2'} (step 2, epochs done 1)"]
    index_named, _ = load(run_dir / "ckpt-2.index")
    assert_same_generator(index_named, trained, photo)
    # ckpt-1 is one init step earlier: read from its own checkpoint, not the newest.
    earlier, _ = load(run_dir / "ckpt-1")
    reader = tf.train.load_checkpoint(str(run_dir / "ckpt-1"))
    for i, w in enumerate(earlier.weights):
        # A variable is stored once, under its first path: the output kernel as generator/out_kernel.
        key = "generator/out_kernel" if w is earlier.out_kernel else f"generator_weights/{i}"
        np.testing.assert_array_equal(w.numpy(), reader.get_tensor(f"{key}/.ATTRIBUTES/VARIABLE_VALUE"))
    assert not np.array_equal(earlier(photo).numpy(), trained(photo).numpy())


def test_training_checkpoint_under_a_policy(run):
    run_dir, trained = run
    from anime_gan.weights import load_generator

    generator = load_generator(run_dir / "ckpt-2", policy="mixed_bfloat16")
    assert generator.m.compute_dtype == "bfloat16"
    for a, b in zip(generator.weights, trained.weights, strict=True):
        assert np.array_equal(a.numpy(), b.numpy())


@pytest.mark.slow  # two command-line runs (~25 s)
def test_export_and_stylize_commands_accept_the_run_folder(run, photo, tmp_path):
    run_dir, trained = run
    out = tmp_path / "models" / "1"
    proc = subprocess.run([sys.executable, "-m", "anime_gan.export", f"--checkpoint_dir={run_dir}", f"--output={out}",
                           "--max_side=64"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"note: {run_dir} is a training run: using its final weights" in proc.stderr
    generator, notes = load(out)  # a SavedModel folder is a model path too
    assert notes == []
    assert_same_generator(generator, trained, photo)

    rgb = np.random.default_rng(1).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "photo.png"), rgb[..., ::-1])
    proc = subprocess.run([sys.executable, "-m", "anime_gan.stylize", f"--model={run_dir}",
                           f"--input={tmp_path / 'photo.png'}", f"--output={tmp_path / 'anime.png'}"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using its final weights" in proc.stderr
    result = cv2.imread(str(tmp_path / "anime.png"))[..., ::-1]
    expected = to_uint8(trained(rgb[None].astype(np.float32) / 127.5 - 1.0).numpy()[0])
    assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1


def test_stylize_reads_an_unfinished_run(run, tmp_path):
    from anime_gan.inference import load_model

    run_dir, trained = run
    unfinished = tmp_path / "run"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("generator"))
    image = np.random.default_rng(2).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    expected = to_uint8(trained(image.astype(np.float32) / 127.5 - 1.0).numpy())
    assert np.abs(load_model(unfinished)(image).astype(int) - expected.astype(int)).max() <= 1


def test_anything_else_is_refused_in_one_sentence(run, tmp_path):
    from anime_gan.errors import ModelError, PathNotFoundError
    from anime_gan.deploy.export import export
    from anime_gan.inference import load_model
    from anime_gan.weights import load_generator

    run_dir, _ = run
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    looked_for = (f"no model in {empty}: looked for saved_model.pb, generator.weights.h5, a training run's "
                  "generator/generator.weights.h5 and a checkpoint (a training run's ckpt-N or an official TF1 "
                  "one) in it and found none.")
    for call in (load_generator, load_model, lambda p: export(str(p), str(tmp_path / "out"))):
        with pytest.raises(PathNotFoundError) as info:
            call(empty)
        assert str(info.value) == looked_for

    accepted = ("pass a SavedModel folder, a folder holding generator.weights.h5, a training run folder (its "
                "generator/generator.weights.h5, else its newest ckpt-N), a training checkpoint prefix such as "
                "run/ckpt-12, a .weights.h5 file, an official TF1 checkpoint prefix, a .pt file of the PyTorch port or a "
                "catalogue name such as hayao-v2.")
    with pytest.raises(PathNotFoundError) as info:
        load_generator(run_dir / "ckpt-9")
    assert str(info.value) == f"no model at {run_dir / 'ckpt-9'} (nothing by that name, nor {run_dir / 'ckpt-9'}.index); {accepted}"
    with pytest.raises(ModelError) as info:
        load_generator(empty / "notes.txt")
    assert str(info.value) == f"{empty / 'notes.txt'} is not a model file; {accepted}"

    # A TF2 checkpoint of something else: told apart from a TF1 one, refused by what it lacks.
    other = tf.train.Checkpoint(x=tf.Variable(1.0)).save(str(tmp_path / "other" / "ckpt"))
    with pytest.raises(ModelError) as info:
        load_generator(other)
    assert str(info.value) == (f"{other} is a TF2 checkpoint but not one of anime_gan.train's "
                               "(129 of the generator's 129 variables have no value in it).")
    for message in (str(info.value), looked_for, accepted):
        assert "\n" not in message
