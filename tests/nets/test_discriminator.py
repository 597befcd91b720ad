"""Discriminator and spectral-norm conv against hand formulas, NumPy and finite differences."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from anime_gan.nets.discriminator import Discriminator, SpectralConv2D

REPO = pathlib.Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- NumPy references (independent)

def np_l2n(v):
    return v / (np.sqrt(np.sum(v * v)) + 1e-12)


def np_power_iteration(kernel, u):
    """One step of the official power iteration on the kernel reshaped to [k*k*in, out]."""
    w = kernel.reshape(-1, kernel.shape[-1])
    v = np_l2n(u @ w.T)
    u_new = np_l2n(v @ w)
    sigma = (v @ w @ u_new.T).item()
    return sigma, u_new


def np_conv(x, kernel, stride):
    """3x3 conv with the original's zero padding (stride 1: 1 all round; stride 2: 1 top/left only)."""
    k = kernel.shape[0]
    pad = (1, 1) if stride == 1 else (1, 0)
    xp = np.pad(x, [(0, 0), pad, pad, (0, 0)])
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]), dtype=np.float64)
    for a in range(k):
        for b in range(k):
            patch = xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride, :]
            out += np.einsum("nhwc,co->nhwo", patch.astype(np.float64), kernel[a, b].astype(np.float64))
    return out


def u_values(d):
    return [np.array(c.u) for c in d.spectral_convs()]


# ---------------------------------------------------------------- parameter counts

def test_parameter_count_default_matches_hand_formula():
    d = Discriminator()
    d.build()
    # (in, out) of each 3x3 conv, read off the original's discriminator (docs/original.md) for ch=64, n_dis=3, RGB input.
    convs = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 1)]
    norms = [128, 256, 256]
    trainable = sum(9 * i * o for i, o in convs) + sum(2 * c for c in norms)
    u_total = sum(o for _, o in convs)
    assert trainable == 1_128_800 and u_total == 865  # the hand sums, written out
    n_trainable = sum(int(np.prod(w.shape)) for w in d.trainable_weights)
    n_frozen = sum(int(np.prod(w.shape)) for w in d.non_trainable_weights)
    assert n_trainable == trainable
    assert n_frozen == u_total
    assert d.count_params() == trainable + u_total


@pytest.mark.parametrize("ch,n_dis,sn", [(16, 4, True), (8, 1, True), (32, 2, False)])
def test_parameter_count_general_formula(ch, n_dis, sn):
    d = Discriminator(ch=ch, n_dis=n_dis, sn=sn)
    d.build((None, None, None, 3))
    # Follow the original's loop by hand: c starts at ch/2, each stage 2c (stride 2) then 4c.
    c = ch // 2
    convs, norms, width = [(3, c)], [], c
    for _ in range(1, n_dis):
        convs += [(width, 2 * c), (2 * c, 4 * c)]
        norms.append(4 * c)
        width, c = 4 * c, 2 * c
    convs += [(width, 2 * c), (2 * c, 1)]
    norms.append(2 * c)
    trainable = sum(9 * i * o for i, o in convs) + sum(2 * n for n in norms)
    assert sum(int(np.prod(w.shape)) for w in d.trainable_weights) == trainable
    frozen = sum(o for _, o in convs) if sn else 0
    assert sum(int(np.prod(w.shape)) for w in d.non_trainable_weights) == frozen


# ---------------------------------------------------------------- shapes and bad input

def test_output_shape_256_and_odd_sizes():
    d = Discriminator()
    y = d(np.zeros((1, 256, 256, 3), np.float32))
    assert y.shape == (1, 64, 64, 1) and y.dtype == tf.float32
    y = d(np.random.default_rng(0).uniform(-1, 1, (2, 37, 53, 3)).astype(np.float32))
    assert y.shape == (2, 37 // 4, 53 // 4, 1)
    d2 = Discriminator(ch=8, n_dis=2)
    assert d2(np.zeros((1, 7, 5, 3), np.float32)).shape == (1, 3, 2, 1)


def test_too_small_input_is_a_clear_error():
    d = Discriminator(ch=8, n_dis=3)
    with pytest.raises(ValueError, match="at least 4"):
        d(np.zeros((1, 3, 8, 3), np.float32))
    with pytest.raises(ValueError, match="n_dis"):
        Discriminator(n_dis=0)


# ---------------------------------------------------------------- spectral-norm conv vs NumPy

@pytest.mark.parametrize("stride", [1, 2])
def test_spectral_conv_forward_matches_numpy(stride):
    keras.utils.set_random_seed(1)
    layer = SpectralConv2D(5, strides=stride)
    x = np.random.default_rng(2).normal(size=(2, 7, 6, 4)).astype(np.float32)
    layer.build(x.shape)
    kernel = np.array(layer.kernel, np.float64)
    u0 = np.array(layer.u, np.float64)
    sigma, u1 = np_power_iteration(kernel, u0)
    expected = np_conv(x, kernel / sigma, stride)

    y = layer(x, training=True).numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(layer.u), u1, rtol=1e-5, atol=1e-6)

    # Inference: same iteration from the (now updated) stored u, without storing.
    sigma2, _ = np_power_iteration(kernel, u1)
    u_before = np.array(layer.u)
    y = layer(x, training=False).numpy()
    np.testing.assert_allclose(y, np_conv(x, kernel / sigma2, stride), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.array(layer.u), u_before)


def test_sn_false_uses_the_raw_kernel():
    layer = SpectralConv2D(3, strides=2, sn=False)
    x = np.random.default_rng(3).normal(size=(1, 9, 8, 2)).astype(np.float32)
    y_train = layer(x, training=True).numpy()
    kernel = np.array(layer.kernel)
    np.testing.assert_allclose(y_train, np_conv(x, kernel, 2), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(layer(x).numpy(), y_train)
    assert len(layer.non_trainable_weights) == 0
    d = Discriminator(ch=8, n_dis=2, sn=False)
    d.build()
    assert d.non_trainable_weights == []


def test_sigma_converges_to_largest_singular_value():
    keras.utils.set_random_seed(4)
    layer = SpectralConv2D(4)
    x = np.ones((1, 4, 4, 8), np.float32)
    layer.build(x.shape)
    w = np.array(layer.kernel, np.float64).reshape(-1, 4)
    top = np.linalg.svd(w, compute_uv=False)[0]
    step = tf.function(lambda t: layer(t, training=True))
    for _ in range(50):
        step(x)
    assert abs(float(layer.sigma()) - top) <= 1e-3 * top
    # The kernel a call uses is then W / sigma_max: check the inference output against NumPy.
    expected = np_conv(x, np.array(layer.kernel, np.float64) / top, 1)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=2e-3, atol=1e-5)


def test_gradient_through_sigma_matches_finite_differences():
    rng = np.random.default_rng(5)
    layer = SpectralConv2D(3, strides=1, dtype="float64")
    x = rng.normal(size=(1, 5, 5, 2))
    r = rng.normal(size=(1, 5, 5, 3))  # fixed random cotangent: loss = sum(r * conv)
    layer.build(x.shape)
    kernel = rng.normal(scale=0.3, size=(3, 3, 2, 3))
    u0 = rng.normal(size=(1, 3))
    layer.kernel.assign(kernel)
    layer.u.assign(u0)

    def np_loss(k):
        sigma, _ = np_power_iteration(k, u0)
        return float(np.sum(r * np_conv(x, k / sigma, 1)))

    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(r * layer(tf.constant(x), training=True))
    grad = tape.gradient(loss, layer.kernel).numpy()
    assert abs(float(loss) - np_loss(kernel)) < 1e-10

    eps = 1e-6
    fd = np.zeros_like(kernel)
    for idx in np.ndindex(kernel.shape):
        kp, km = kernel.copy(), kernel.copy()
        kp[idx] += eps
        km[idx] -= eps
        fd[idx] = (np_loss(kp) - np_loss(km)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)

    # The sigma term matters: holding sigma constant would give a visibly different gradient.
    sigma, _ = np_power_iteration(kernel, u0)
    fd_const_sigma = np.zeros_like(kernel)
    for idx in np.ndindex(kernel.shape):
        kp, km = kernel.copy(), kernel.copy()
        kp[idx] += eps
        km[idx] -= eps
        fd_const_sigma[idx] = np.sum(r * (np_conv(x, kp / sigma, 1) - np_conv(x, km / sigma, 1))) / (2 * eps)
    assert np.max(np.abs(grad - fd_const_sigma)) > 1e3 * 1e-8


# ---------------------------------------------------------------- u updates in the full model

def test_u_updates_only_in_training_calls():
    d = Discriminator(ch=8, n_dis=3)
    d.build()
    x = np.random.default_rng(6).uniform(-1, 1, (2, 12, 12, 3)).astype(np.float32)
    before = u_values(d)
    d(x)
    d(x, training=False)
    tf.function(lambda t: d(t, training=False))(x)
    for b, a in zip(before, u_values(d)):
        np.testing.assert_array_equal(a, b)

    kernels = [np.array(c.kernel, np.float64) for c in d.spectral_convs()]
    tf.function(lambda t: d(t, training=True))(x)
    after = u_values(d)
    assert len(after) == 7
    for kernel, b, a in zip(kernels, before, after):
        _, expected = np_power_iteration(kernel, b.astype(np.float64))
        np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-6)
        if kernel.shape[-1] > 1:  # a [1, 1] u is always +-1; the others must move
            assert not np.allclose(a, b)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_sn_in_float32(policy):
    x = np.random.default_rng(7).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    keras.utils.set_random_seed(8)
    ref = Discriminator(ch=8, n_dis=2)
    ref.build()
    keras.mixed_precision.set_global_policy(policy)
    try:
        d = Discriminator(ch=8, n_dis=2)
        d.build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for src, dst in zip(ref.weights, d.weights):
        dst.assign(src)
    assert all(w.dtype == "float32" for w in d.weights)
    u0 = u_values(d)
    y = tf.function(lambda t: d(t, training=True))(x)
    assert y.dtype == tf.float32
    expected = ref(x, training=True).numpy()
    np.testing.assert_allclose(y.numpy(), expected, atol=0.05 * np.abs(expected).max())
    # u' is computed in float32 from float32 variables: it equals the NumPy iteration closely.
    for conv, b, a in zip(d.spectral_convs(), u0, u_values(d)):
        _, expected_u = np_power_iteration(np.array(conv.kernel, np.float64), b.astype(np.float64))
        np.testing.assert_allclose(a, expected_u, rtol=1e-5, atol=1e-6)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from anime_gan.nets.discriminator import Discriminator

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        d = Discriminator(ch=8, n_dis=2)
        d.build()
        opt = keras.optimizers.SGD(0.1)
    convs = d.spectral_convs()
    out = {
        "replicas": strategy.num_replicas_in_sync,
        "u_before": [np.array(c.u).tolist() for c in convs],
        "kernels": [np.array(c.kernel).tolist() for c in convs],
    }

    @tf.function
    def train_step(x):
        def replica_step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(d(x, training=True) - 1.0))
            grads = tape.gradient(loss, d.trainable_variables)
            opt.apply_gradients(zip(grads, d.trainable_variables))
            return loss
        return strategy.run(replica_step, args=(x,))

    images = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
    for x in strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(images).batch(4)):
        train_step(x)
    out["u_replicas"] = [[np.array(v).tolist() for v in c.u.value.values] for c in convs]
    out["kernel_changed"] = bool(not np.allclose(np.array(convs[0].kernel), out["kernels"][0]))
    print("RESULT" + json.dumps(out))
""")


def test_mirrored_strategy_training_call_updates_u():
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    assert out["replicas"] == 2
    assert out["kernel_changed"]
    for kernel, b, replicas in zip(out["kernels"], out["u_before"], out["u_replicas"]):
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
        # u' comes from the weights before the optimizer step (the forward pass of the step).
        _, expected = np_power_iteration(np.array(kernel), np.array(b))
        np.testing.assert_allclose(replicas[0], expected, rtol=1e-5, atol=1e-6)


def test_symbolic_training_flag_and_weights_roundtrip(tmp_path):
    layer = SpectralConv2D(3)
    x = np.random.default_rng(9).normal(size=(1, 6, 6, 2)).astype(np.float32)
    layer.build(x.shape)
    call = tf.function(lambda t, training: layer(t, training=training))
    u0 = np.array(layer.u)
    call(x, tf.constant(False))
    np.testing.assert_array_equal(np.array(layer.u), u0)
    call(x, tf.constant(True))
    _, expected = np_power_iteration(np.array(layer.kernel, np.float64), u0.astype(np.float64))
    np.testing.assert_allclose(np.array(layer.u), expected, rtol=1e-5, atol=1e-6)

    # u is part of the saved weights, so a resumed run continues the same power iteration.
    d = Discriminator(ch=8, n_dis=2)
    d.build()
    d(np.zeros((1, 8, 8, 3), np.float32), training=True)
    d.save_weights(tmp_path / "d.weights.h5")
    e = Discriminator(ch=8, n_dis=2)
    e.build()
    e.load_weights(tmp_path / "d.weights.h5")
    for a, b in zip(d.weights, e.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_tf_checkpoint_holds_every_variable_u_included(tmp_path):
    """tf.train.Checkpoint(d=D) must save and restore all of D's variables, the u vectors included."""
    d = Discriminator(ch=8, n_dis=3, sn=True)
    d.build()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    d(x, training=True)  # move every u away from its initial value
    saved = {v.path: v.numpy().copy() for v in d.weights}
    path = tf.train.Checkpoint(d=d).write(str(tmp_path / "ck"))
    stored = [n for n, _ in tf.train.list_variables(path) if n.endswith("VARIABLE_VALUE")]
    assert len(stored) == len(d.weights) == 20

    fresh = Discriminator(ch=8, n_dis=3, sn=True)
    fresh.build()
    tf.train.Checkpoint(d=fresh).read(path).assert_consumed()
    for v in fresh.weights:
        np.testing.assert_array_equal(v.numpy(), saved[v.path])
