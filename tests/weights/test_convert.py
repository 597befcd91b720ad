"""The converter: official TF1 checkpoints in, our weights out; anything else refused by name."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from anime_gan import Generator
from anime_gan.errors import EXIT_USER_ERROR, ModelError, PathNotFoundError
from anime_gan.constants import WEIGHTS_FILENAME
from anime_gan.weights import generator_to_tf1, load_generator, read_tf1_checkpoint, tf1_to_generator
from helpers import logged


def _write_tf1_checkpoint(values, prefix):
    """A TF1 checkpoint holding exactly `values`, written by TF1's Saver (independent of our code)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=n) for n, v in values.items()]
        saver = tf.compat.v1.train.Saver(var_list={v.op.name: v for v in variables})
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(prefix), write_meta_graph=False)


@pytest.fixture(scope="module")
def official_values():
    g = Generator()
    g.build()
    rng = np.random.default_rng(11)
    return {n: rng.normal(0, 0.1, v.shape).astype(np.float32) for n, v in g.tf1_variable_map().items()}


def test_round_trip_through_a_tf1_checkpoint(official_values, tmp_path):
    prefix = _write_tf1_checkpoint(official_values, tmp_path / "ckpt" / "model")
    read = read_tf1_checkpoint(prefix)
    g = load_generator(prefix)
    back = generator_to_tf1(g)
    assert set(read) == set(back) == set(official_values)
    for n, v in official_values.items():
        np.testing.assert_array_equal(back[n], v)


def test_training_checkpoint_extras_are_ignored(official_values, tmp_path):
    """A full training checkpoint also holds D and Adam slots; only the generator is taken."""
    values = dict(official_values)
    values["generator/G_MODEL/b1/Conv/weights/Adam"] = np.zeros((3, 3, 3, 64), np.float32)
    values["discriminator/conv_0/w"] = np.zeros((3, 3, 3, 32), np.float32)
    prefix = _write_tf1_checkpoint(values, tmp_path / "model")
    g = load_generator(prefix)
    np.testing.assert_array_equal(generator_to_tf1(g)["generator/G_MODEL/Conv/weights"],
                                  official_values["generator/G_MODEL/Conv/weights"])


def test_mismatched_checkpoints_are_refused_by_name(official_values):
    missing = dict(official_values)
    del missing["generator/G_MODEL/m/r3/r3/w"]
    with pytest.raises(ModelError, match="missing 1: generator/G_MODEL/m/r3/r3/w"):
        tf1_to_generator(missing)

    extra = dict(official_values)
    extra["generator/G_MODEL/A/Conv/weights"] = np.zeros((3, 3, 3, 32), np.float32)
    with pytest.raises(ModelError, match="unexpected 1: generator/G_MODEL/A/Conv/weights"):
        tf1_to_generator(extra)

    shaped = dict(official_values)
    shaped["generator/G_MODEL/u1/Conv/weights"] = np.zeros((3, 3, 64, 64), np.float32)
    with pytest.raises(ModelError, match=r"wrong shape 1: generator/G_MODEL/u1/Conv/weights \(3, 3, 64, 64\)"):
        tf1_to_generator(shaped)


def test_an_incomplete_animeganv2_checkpoint_is_refused(tmp_path):
    # AnimeGANv2's scopes (A, B, C, D, E, out_layer) make it a v2 checkpoint; 2 of its 77 variables are not one.
    values = {
        "generator/G_MODEL/A/Conv/weights": np.zeros((7, 7, 3, 32), np.float32),
        "generator/G_MODEL/out_layer/Conv/weights": np.zeros((1, 1, 32, 3), np.float32),
    }
    prefix = _write_tf1_checkpoint(values, tmp_path / "v2")
    with pytest.raises(ModelError, match="not an official AnimeGANv2 generator checkpoint: missing 75: "):
        load_generator(prefix)


def test_missing_paths_say_what_to_pass(tmp_path):
    with pytest.raises(PathNotFoundError, match="no model at .*nothing.weights.h5 .*; pass a SavedModel folder, "
                                                ".* a .weights.h5 file, an official TF1 checkpoint prefix, a .pt file"):
        load_generator(tmp_path / "nothing.weights.h5")
    with pytest.raises(PathNotFoundError, match="no model in .*: looked for saved_model.pb, generator.weights.h5, "
                                                "a training run's generator/generator.weights.h5 and a checkpoint"):
        load_generator(tmp_path)
    with pytest.raises(PathNotFoundError, match="no TF1 checkpoint at"):
        read_tf1_checkpoint(tmp_path / "absent")


def test_a_folder_naming_an_official_checkpoint_is_read(official_values, tmp_path):
    """The official release folder: a `checkpoint` file naming Hayao-60 (TF1, name-based)."""
    _write_tf1_checkpoint(official_values, tmp_path / "release" / "Hayao-60")
    assert (tmp_path / "release" / "checkpoint").exists()
    with logged("anime_gan") as notes:
        back = generator_to_tf1(load_generator(tmp_path / "release"))
    assert notes == []
    for n, v in official_values.items():
        np.testing.assert_array_equal(back[n], v)


def test_convert_refuses_a_tf2_checkpoint_by_kind(tmp_path):
    g = Generator()
    g.build()
    prefix = tf.train.Checkpoint(generator=g, generator_weights=list(g.weights)).save(str(tmp_path / "run" / "ckpt"))
    with pytest.raises(ModelError, match="is a TF2 checkpoint .*not an official TF1 one"):
        read_tf1_checkpoint(prefix)
    np.testing.assert_array_equal(load_generator(prefix).out_kernel.numpy(), g.out_kernel.numpy())


def test_convert_command(official_values, tmp_path):
    prefix = _write_tf1_checkpoint(official_values, tmp_path / "official" / "Hayao-60")
    out = tmp_path / "converted"
    run = subprocess.run(
        [sys.executable, "-m", "anime_gan.convert", f"--tf1_checkpoint={prefix}", f"--output={out}",
         "--nosaved_model"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (out / WEIGHTS_FILENAME).exists()
    back = generator_to_tf1(load_generator(out))
    for n, v in official_values.items():
        np.testing.assert_array_equal(back[n], v)

    bad = subprocess.run(
        [sys.executable, "-m", "anime_gan.convert", f"--tf1_checkpoint={tmp_path}/nope", f"--output={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == EXIT_USER_ERROR
    assert "no TF1 checkpoint at" in bad.stderr


def test_load_generator_under_a_policy(official_values, tmp_path):
    prefix = _write_tf1_checkpoint(official_values, tmp_path / "model")
    g = load_generator(prefix, policy="mixed_bfloat16")
    assert g.m.compute_dtype == "bfloat16"
    back = generator_to_tf1(g)  # the variables themselves stay float32 and exact
    for n, v in official_values.items():
        np.testing.assert_array_equal(back[n], v)
