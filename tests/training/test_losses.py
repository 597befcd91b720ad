"""Losses against independent NumPy implementations (float64) on random tensors, rel. error <= 1e-5."""

import numpy as np
import pytest
import tensorflow as tf

from anime_gan.training import losses

RTOL = 1e-5
GAN_TYPES = ("lsgan", "gan", "hinge", "wgan-gp", "wgan-lp", "dragan")


def assert_rel(actual, expected, rtol=RTOL):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-30))
    assert err <= rtol, f"relative error {err:.3g} > {rtol}: {actual} vs {expected}"


def assert_f32_scalar(t):
    assert t.dtype == tf.float32 and t.shape == ()


@pytest.fixture
def rng():
    return np.random.default_rng(20190101)


# ---- independent NumPy references -----------------------------------------------------------------

def np_gram(f):
    n, h, w, c = f.shape
    flat = f.reshape(n, h * w, c).astype(np.float64)
    return np.einsum("npi,npj->nij", flat, flat) / (h * w * c)


def np_yuv(rgb01):
    # BT.601 analogue YUV: Y = .299R + .587G + .114B, U = 0.492111(B - Y), V = 0.877283(R - Y).
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, 0.492111 * (b - y), 0.877283 * (r - y)


def np_huber(a, b, delta=1.0):
    e = np.abs(a - b)
    return np.mean(np.where(e <= delta, 0.5 * e ** 2, delta * e - 0.5 * delta ** 2))


def np_sigmoid_ce(x, label):
    p = 1.0 / (1.0 + np.exp(-x))
    return np.mean(-(label * np.log(p) + (1 - label) * np.log(1 - p)))


def np_adv_parts(real, gray, fake, smooth, gan_type):
    """(d_real, d_gray, d_fake, d_smooth, g_adv) written out per gan type."""
    if gan_type == "lsgan":
        d = (np.mean((real - 1) ** 2), np.mean(gray ** 2), np.mean(fake ** 2), np.mean(smooth ** 2))
        g = np.mean((fake - 1) ** 2)
    elif gan_type in ("gan", "dragan"):
        d = (np_sigmoid_ce(real, 1), np_sigmoid_ce(gray, 0), np_sigmoid_ce(fake, 0), np_sigmoid_ce(smooth, 0))
        g = np_sigmoid_ce(fake, 1)
    elif gan_type == "hinge":
        d = (np.mean(np.maximum(0, 1 - real)), np.mean(np.maximum(0, 1 + gray)),
             np.mean(np.maximum(0, 1 + fake)), np.mean(np.maximum(0, 1 + smooth)))
        g = -np.mean(fake)
    else:  # wgan-gp, wgan-lp
        d = (-np.mean(real), np.mean(gray), np.mean(fake), np.mean(smooth))
        g = -np.mean(fake)
    return d, g


# ---- perceptual and colour losses --------------------------------------------------------------------

def test_content_loss(rng):
    a, b = rng.normal(size=(2, 2, 5, 7, 16)).astype(np.float32)
    out = losses.content_loss(a, b)
    assert_f32_scalar(out)
    assert_rel(out, np.mean(np.abs(a.astype(np.float64) - b)))


def test_gram(rng):
    f = rng.normal(size=(3, 4, 6, 8)).astype(np.float32)
    out = losses.gram(f)
    assert out.dtype == tf.float32 and out.shape == (3, 8, 8)
    assert_rel(out, np_gram(f))


def test_gram_divides_by_hwc():
    # One image, H*W = 2 positions, C = 2: F = [[1, 2], [3, 4]] -> F^T F = [[10, 14], [14, 20]], / (1*2*2).
    f = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(losses.gram(f)[0], np.array([[10, 14], [14, 20]]) / 4.0, rtol=1e-6)


def test_style_loss(rng):
    a, b = rng.normal(size=(2, 2, 6, 5, 12)).astype(np.float32)
    out = losses.style_loss(a, b)
    assert_f32_scalar(out)
    assert_rel(out, np.mean(np.abs(np_gram(a) - np_gram(b))))


def test_color_loss(rng):
    # Half random pixels, half saturated colours: V differences of saturated pairs reach 1.23, so the
    # Huber term's linear branch (|d| > 1) is exercised along with the quadratic one.
    shape = (2, 8, 8, 3)
    photo = rng.uniform(-1, 1, shape).astype(np.float32)
    generated = rng.uniform(-1, 1, shape).astype(np.float32)
    photo[:, :4] = rng.choice([-1.0, 1.0], size=(2, 4, 8, 3))
    generated[:, :4] = rng.choice([-1.0, 1.0], size=(2, 4, 8, 3))
    yp, up, vp = np_yuv((photo.astype(np.float64) + 1) / 2)
    yg, ug, vg = np_yuv((generated.astype(np.float64) + 1) / 2)
    assert np.any(np.abs(vp - vg) > 1) and np.any(np.abs(vp - vg) < 1)
    expected = np.mean(np.abs(yp - yg)) + np_huber(up, ug) + np_huber(vp, vg)
    out = losses.color_loss(photo, generated)
    assert_f32_scalar(out)
    assert_rel(out, expected)


def test_color_loss_hand_value():
    # Photo pure red, generated pure cyan: dY = 0.299 - 0.701 = -0.402, dU = 0.492111*(-0.299 - 0.299),
    # dV = 0.877283*(0.701 + 0.701) > 1 (Huber linear branch).
    red = np.array([1, -1, -1], np.float32).reshape(1, 1, 1, 3)
    cyan = np.array([-1, 1, 1], np.float32).reshape(1, 1, 1, 3)
    dy, du, dv = 0.402, 0.492111 * 0.598, 0.877283 * 1.402
    expected = dy + 0.5 * du ** 2 + (dv - 0.5)
    assert_rel(losses.color_loss(red, cyan), expected)


# ---- adversarial losses ------------------------------------------------------------------------------

def _logits(rng):
    # Offsets keep every mean well away from zero, so relative errors are meaningful for wgan.
    return [(rng.normal(size=(2, 8, 8, 1)) * 2 + off).astype(np.float32) for off in (0.7, -0.4, 0.3, -0.9)]


@pytest.mark.parametrize("gan_type", GAN_TYPES)
def test_discriminator_adv_loss(rng, gan_type):
    real, gray, fake, smooth = _logits(rng)
    out = losses.discriminator_adv_loss(real, gray, fake, smooth, gan_type=gan_type)
    d, _ = np_adv_parts(*(x.astype(np.float64) for x in (real, gray, fake, smooth)), gan_type)
    for key, value in zip(("d_real", "d_gray", "d_fake", "d_smooth"), d):
        assert_f32_scalar(out[key])
        assert_rel(out[key], value)
    assert_rel(out["d_adv"], d[0] + d[1] + d[2] + 0.1 * d[3])


@pytest.mark.parametrize("gan_type", GAN_TYPES)
def test_generator_adv_loss(rng, gan_type):
    fake = _logits(rng)[2]
    out = losses.generator_adv_loss(fake, gan_type=gan_type)
    assert_f32_scalar(out)
    assert_rel(out, np_adv_parts(*([fake.astype(np.float64)] * 4), gan_type)[1])


def test_lsgan_is_default(rng):
    real, gray, fake, smooth = _logits(rng)
    assert_rel(losses.generator_adv_loss(fake), np.mean((fake.astype(np.float64) - 1) ** 2))
    d = losses.discriminator_adv_loss(real, gray, fake, smooth)
    assert_rel(d["d_real"], np.mean((real.astype(np.float64) - 1) ** 2))


def test_unknown_gan_type():
    with pytest.raises(ValueError, match="lsgan"):
        losses.generator_adv_loss(np.zeros((1, 2, 2, 1), np.float32), gan_type="wgan")


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs_give_float32(rng, dtype):
    a, b = (tf.cast(x, dtype) for x in rng.normal(size=(2, 2, 4, 4, 8)).astype(np.float32))
    a64, b64 = (tf.cast(x, tf.float64).numpy() for x in (a, b))
    assert_rel(losses.content_loss(a, b), np.mean(np.abs(a64 - b64)))
    assert_rel(losses.style_loss(a, b), np.mean(np.abs(np_gram(a64) - np_gram(b64))))
    out = losses.discriminator_adv_loss(a, b, a, b)
    assert out["d_adv"].dtype == tf.float32
    assert losses.generator_adv_loss(a).dtype == tf.float32


# ---- weighted totals -----------------------------------------------------------------------------------

def test_weighted_totals_use_official_weights():
    adv, con, sty, col = 0.37, 1.9, 0.021, 0.44
    # The original's weights: G = 300 adv + 1.5 content + 3.0 style + 10 color; D = 300 D (+ gp); init = 1.5 content.
    assert_rel(losses.generator_loss(adv, con, sty, col), 300 * adv + 1.5 * con + 3.0 * sty + 10 * col)
    assert_rel(losses.generator_loss(adv, con, sty, col, g_adv_weight=1, con_weight=2, sty_weight=3,
                                     color_weight=4), adv + 2 * con + 3 * sty + 4 * col)
    assert_rel(losses.discriminator_loss(0.25), 75.0)
    assert_rel(losses.discriminator_loss(0.25, gp=0.5, d_adv_weight=2.0), 1.0)


def test_init_loss(rng):
    a, b = rng.normal(size=(2, 2, 3, 3, 4)).astype(np.float32)
    l1 = np.mean(np.abs(a.astype(np.float64) - b))
    assert_rel(losses.init_loss(a, b), 1.5 * l1)
    assert_rel(losses.init_loss(a, b, con_weight=1.1), 1.1 * l1)


# ---- gradient penalty ----------------------------------------------------------------------------------
# Tiny discriminators whose input gradient is known in closed form:
#   linear    D(x) = sum_c w_c x_c per pixel     -> d sum(D) / dx = w (everywhere)
#   quadratic D(x) = sum_c v_c x_c^2 per pixel   -> d sum(D) / dx = 2 v x

def linear_d(w):
    return lambda x, training=True: tf.reduce_sum(x * w, axis=-1, keepdims=True)


def quadratic_d(v):
    return lambda x, training=True: tf.reduce_sum(v * tf.square(x), axis=-1, keepdims=True)


def np_penalty(norms, gan_type, ld=10.0):
    if gan_type == "wgan-lp":
        return ld * np.mean(np.maximum(0.0, norms - 1) ** 2)
    return ld * np.mean((norms - 1) ** 2)


@pytest.mark.parametrize("gan_type", ["wgan-gp", "wgan-lp", "dragan"])
def test_gradient_penalty_quadratic_d(rng, gan_type):
    n = 6
    # Per-image scales spread the gradient norms across 1.
    scale = np.linspace(0.6, 2.4, n).reshape(n, 1, 1, 1)
    real = (scale * rng.uniform(-1, 1, (n, 4, 5, 3))).astype(np.float32)
    fake = (scale * rng.uniform(-1, 1, (n, 4, 5, 3))).astype(np.float32)
    alpha = rng.uniform(0, 1, (n, 1, 1, 1)).astype(np.float32)
    noise = rng.uniform(0, 1, real.shape).astype(np.float32)
    v = np.array([0.05, 0.12, 0.08], np.float32)

    r, f, a, z = (x.astype(np.float64) for x in (real, fake, alpha, noise))
    other = r + 0.5 * r.std() * z if gan_type == "dragan" else f
    x_hat = r + a * (other - r)
    norms = np.sqrt(np.sum((2 * v * x_hat) ** 2, axis=(1, 2, 3)))
    assert np.any(norms < 1) and np.any(norms > 1)  # both sides of the wgan-lp hinge
    out = losses.gradient_penalty(quadratic_d(v), real, fake, gan_type, alpha=alpha, noise=noise)
    assert_f32_scalar(out)
    assert_rel(out, np_penalty(norms, gan_type))
    assert_rel(losses.gradient_penalty(quadratic_d(v), real, fake, gan_type, ld=2.5, alpha=alpha,
                                       noise=noise), np_penalty(norms, gan_type, ld=2.5))


@pytest.mark.parametrize("gan_type", ["wgan-gp", "wgan-lp", "dragan"])
def test_gradient_penalty_random_draws_linear_d(rng, gan_type):
    # For a linear D the gradient does not depend on x_hat, so the random alpha/noise path is checked
    # exactly: every image's gradient norm is sqrt(H*W*|w|^2).
    real, fake = rng.uniform(-1, 1, (2, 3, 4, 6, 3)).astype(np.float32)
    w = np.array([0.3, -0.2, 0.25], np.float32)
    norm = np.sqrt(4 * 6 * np.sum(w.astype(np.float64) ** 2))
    out = losses.gradient_penalty(linear_d(w), real, fake, gan_type, seed=3)
    assert_rel(out, np_penalty(np.full(3, norm), gan_type))


def test_gradient_penalty_random_alpha_in_unit_interval(rng):
    # Quadratic D on one-pixel, one-channel images with real = 0 and fake = 1: x_hat = alpha, so the
    # norm is 2 v alpha; with v = 1 the mean penalty pins alpha to [0, 1): |2 alpha - 1| <= 1.
    real = np.zeros((64, 1, 1, 1), np.float32)
    fake = np.ones((64, 1, 1, 1), np.float32)
    out = float(losses.gradient_penalty(quadratic_d(np.float32(1.0)), real, fake, "wgan-gp", ld=1.0, seed=1))
    # E[(2a - 1)^2] = 1/3 for a ~ U[0, 1); with 64 draws it lies well inside (0.15, 0.55).
    assert 0.15 < out < 0.55


@pytest.mark.parametrize("gan_type", ["lsgan", "gan", "hinge"])
def test_no_penalty_for_other_gan_types(gan_type):
    calls = []
    out = losses.gradient_penalty(lambda x, training=True: calls.append(1), np.ones((1, 2, 2, 3), np.float32),
                                  np.ones((1, 2, 2, 3), np.float32), gan_type)
    assert_f32_scalar(out)
    assert float(out) == 0.0 and not calls


def _penalty_weight_gradient(w_value, h, wd, ld=10.0):
    # penalty = ld (n - 1)^2 with n = sqrt(h wd |w|^2) for every image -> d/dw = 2 ld (n - 1) h wd w / n.
    w64 = w_value.astype(np.float64)
    n = np.sqrt(h * wd * np.sum(w64 ** 2))
    return 2 * ld * (n - 1) * h * wd * w64 / n


def test_gradient_penalty_double_backprop_in_tf_function(rng):
    w = tf.Variable([0.3, -0.2, 0.25])
    real, fake = rng.uniform(-1, 1, (2, 2, 4, 5, 3)).astype(np.float32)

    @tf.function
    def step(real, fake):
        with tf.GradientTape() as tape:
            gp = losses.gradient_penalty(lambda x, training=True: tf.reduce_sum(x * w, -1, keepdims=True),
                                         real, fake, "wgan-gp")
        return gp, tape.gradient(gp, w)

    _, grad = step(real, fake)
    assert_rel(grad, _penalty_weight_gradient(w.numpy(), 4, 5))


def test_gradient_penalty_under_distribution_strategy(rng):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        w = tf.Variable([0.3, -0.2, 0.25])
    real, fake = rng.uniform(-1, 1, (2, 2, 4, 5, 3)).astype(np.float32)

    @tf.function
    def step(real, fake):
        def replica_fn(real, fake):
            with tf.GradientTape() as tape:
                gp = losses.gradient_penalty(lambda x, training=True: tf.reduce_sum(x * w, -1, keepdims=True),
                                             real, fake, "dragan")
            return tape.gradient(gp, w)
        return strategy.run(replica_fn, args=(real, fake))

    grad = strategy.experimental_local_results(step(real, fake))[0]
    assert_rel(grad, _penalty_weight_gradient(w.numpy(), 4, 5))
