"""The Generator against the official graph (ground truth) and against committed golden vectors."""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from anime_gan import Generator
from anime_gan.generator import build_generator
from anime_gan import constants as C
from anime_gan.official_graph import OfficialGenerator, random_official_weights
from anime_gan.weights import convert_checkpoint, load_generator, tf1_to_generator

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "anime_gan/golden/official_generator.npz"


@pytest.fixture(scope="module")
def official(official_meta, tmp_path_factory):
    """The official graph with seeded random weights, saved and converted into our format."""
    og = OfficialGenerator(official_meta)
    og.randomize(seed=7)
    prefix = og.save(tmp_path_factory.mktemp("tf1") / "Hayao-60")
    out_dir = tmp_path_factory.mktemp("converted")
    convert_checkpoint(prefix, out_dir)
    yield og, prefix, load_generator(out_dir)
    og.close()


def test_parameter_count_and_no_biases():
    g = Generator()
    g.build()
    assert g.count_params() == C.GENERATOR_PARAMS == 3_956_096
    assert len(g.weights) == C.GENERATOR_VARIABLES == 129
    assert len(g.tf1_variable_map()) == 129
    assert not any("bias" in v.path for v in g.weights)


def test_variables_map_one_to_one_onto_the_official_index(official_meta):
    prefix = str(official_meta)[: -len(".meta")]
    official = dict(tf.train.list_variables(prefix))
    ours = {name: tuple(v.shape) for name, v in Generator().tf1_variable_map().items()}
    assert ours == {name: tuple(shape) for name, shape in official.items()}
    # one-to-one: no two official names share one of our variables
    ids = [id(v) for v in Generator().tf1_variable_map().values()]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("size", [(256, 256), (64, 96), (100, 76), (37, 53)])
def test_equals_official_graph(official, size):
    og, _, g = official
    x = np.random.default_rng(size[0] * 1000 + size[1]).uniform(-1, 1, (1, *size, 3)).astype(np.float32)
    expected = og(x)
    got = g(x).numpy()
    # sides that are not multiples of 4 lose their last rows/columns exactly as the original does
    assert got.shape == expected.shape == (1, size[0] // 4 * 4, size[1] // 4 * 4, 3)
    assert np.abs(got - expected).max() <= 1e-5
    # Compiled with static shapes, grappler's rewrites must not change a bit either.
    compiled = tf.function(g.call, input_signature=[tf.TensorSpec(x.shape, tf.float32)])
    assert np.abs(compiled(x).numpy() - expected).max() <= 1e-5


def test_batch_of_three_equals_three_single_runs(official):
    og, _, g = official
    x = np.random.default_rng(3).uniform(-1, 1, (3, 64, 96, 3)).astype(np.float32)
    singles = np.concatenate([og(x[i : i + 1]) for i in range(3)])
    assert np.abs(g(x).numpy() - singles).max() <= 1e-5


def test_load_generator_reads_a_tf1_prefix_directly(official):
    og, prefix, _ = official
    x = np.random.default_rng(4).uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    assert np.abs(load_generator(prefix)(x).numpy() - og(x)).max() <= 1e-5


def _golden_generator():
    golden = np.load(GOLDEN)
    g = Generator()
    g.build()
    shapes = {name: tuple(v.shape) for name, v in g.tf1_variable_map().items()}
    values = random_official_weights(shapes, int(golden["seed"]))
    sums = {n: float(values[n].astype(np.float64).sum()) for n in golden["checksum_names"]}
    np.testing.assert_allclose(
        [sums[n] for n in golden["checksum_names"]], golden["checksums"], rtol=1e-12,
        err_msg="NumPy's random stream changed: regenerate the golden file with `make golden`",
    )
    return tf1_to_generator(values, g), golden


def test_golden_vectors_from_the_official_graph():
    """Works in a clone without ../shared: outputs the official graph produced (tools/make_golden.py)."""
    g, golden = _golden_generator()
    sizes = [k[len("input_"):] for k in golden.files if k.startswith("input_")]
    assert len(sizes) >= 3
    for size in sizes:
        got = g(golden[f"input_{size}"]).numpy()
        expected = golden[f"output_{size}"]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5, size


def _psnr(a, b):
    return 10 * np.log10(2.0**2 / np.mean((a.astype(np.float64) - b) ** 2))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_stays_close_to_float32(policy):
    g32, golden = _golden_generator()
    x = np.random.default_rng(5).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    ref = g32(x).numpy()
    values = {n: v.numpy() for n, v in g32.tf1_variable_map().items()}
    g = tf1_to_generator(values, build_generator(policy))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after construction
    y = g(x)
    assert y.dtype == tf.float32
    assert g.compute_dtype == policy.split("_")[1]
    assert _psnr(ref, y.numpy()) >= 30.0


def test_bfloat16_single_image_stays_within_35_db_of_float32():
    """The mixed_bfloat16 inference path (fused instance norm, b1 in float32) at 256x256."""
    g32, _ = _golden_generator()
    x = np.random.default_rng(6).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    ref = g32(x).numpy()
    values = {n: v.numpy() for n, v in g32.tf1_variable_map().items()}
    g = tf1_to_generator(values, build_generator("mixed_bfloat16"))
    compiled = tf.function(g.call, input_signature=[tf.TensorSpec(x.shape, tf.float32)])
    ops = {op.type for op in compiled.get_concrete_function().graph.get_operations()}
    assert "FusedBatchNormV3" in ops  # the fast path is the one judged here
    y = compiled(x)
    assert y.dtype == tf.float32
    assert _psnr(ref, y.numpy()) >= 35.0
