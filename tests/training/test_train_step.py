"""`AnimeGAN.train_step` against the plain eager reference of tests/gan_reference.py, written from the
original's formulas (docs/original.md): every loss and every updated variable (its docstring gives the
schedule it follows, spectral norm included); then TF1's Adam and the gradient penalty's spectral norm.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from anime_gan.nets.discriminator import Discriminator
from anime_gan.nets.generator import Generator
from anime_gan.training.gan import AnimeGAN, make_adam
from anime_gan.nets.vgg import load_vgg19
from gan_reference import RefAdam, RefSGD, assert_same, ref_gan_step, ref_init_step, restore, state

SIDE, BATCH = 24, 2
LR_INIT, LR_G, LR_D = 1e-4, 8e-5, 1.6e-4
SGD_LR_INIT, SGD_LR_G, SGD_LR_D = 1e-4, 1e-4, 1e-5


# ---- fixtures ------------------------------------------------------------------------------------
def _build(gan_type="lsgan", optimizer="adam"):
    keras.utils.set_random_seed(1)
    G = Generator()
    G.build()
    D = Discriminator(ch=16, n_dis=3, sn=True)
    D.build()
    vgg = load_vgg19("random", seed=3)
    model = AnimeGAN(G, D, vgg, gan_type=gan_type, seed=5)
    if optimizer == "adam":
        model.compile(make_adam(LR_INIT), make_adam(LR_G), make_adam(LR_D))
    else:
        model.compile(*(keras.optimizers.SGD(lr) for lr in (SGD_LR_INIT, SGD_LR_G, SGD_LR_D)))
    rng = np.random.default_rng(0)
    batch = tuple(tf.constant(rng.uniform(-1, 1, (BATCH, SIDE, SIDE, 3)).astype(np.float32)) for _ in range(4))
    # Grayscale inputs have three equal channels, as the data pipeline makes them.
    batch = (batch[0], batch[1], tf.repeat(batch[2][..., :1], 3, -1), tf.repeat(batch[3][..., :1], 3, -1))
    return model, batch


def _ref_optimizer(kind, lr_adam, lr_sgd):
    return RefAdam(lr_adam) if kind == "adam" else RefSGD(lr_sgd)


@pytest.mark.parametrize("kind, gan_type", [("sgd", "lsgan"), ("adam", "lsgan"), ("adam", "wgan-gp")])
def test_gan_step_equals_eager_reference(kind, gan_type):
    model, batch = _build(gan_type, kind)
    before = state(model)
    rng_state = model.rng.state.numpy().copy()
    got = {k: v.numpy() for k, v in tf.function(model.gan_step)(*batch).items()}
    got_vars = state(model)

    # The reference, from the same weights and the same random draw of the penalty's alpha.
    restore(model, before)
    alpha = tf.random.Generator.from_state(rng_state, model.rng.algorithm).uniform([BATCH, 1, 1, 1], 0.0, 1.0)
    d_opt = _ref_optimizer(kind, LR_D, SGD_LR_D)
    g_opt = _ref_optimizer(kind, LR_G, SGD_LR_G)
    ref = ref_gan_step(model.generator, model.discriminator, model.vgg, batch, d_opt, g_opt,
                       gan_type=gan_type, alpha=alpha)
    assert_same(model, got, ref, got_vars, state(model), [d_opt, g_opt], kind, max(LR_G, LR_D))
    # Both nets really moved, well beyond the tolerance.
    n_g = len(model.generator.weights)
    for part in (slice(0, n_g), slice(n_g, None)):
        assert max(np.abs(a - b).max() for a, b in zip(got_vars[part], before[part])) > 5e-5
    if gan_type == "wgan-gp":
        assert float(got["gp"]) > 0


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_init_step_equals_eager_reference(kind):
    model, batch = _build(optimizer=kind)
    before = state(model)
    got = {k: v.numpy() for k, v in tf.function(model.init_step)(batch[0]).items()}
    got_vars = state(model)
    restore(model, before)
    opt = _ref_optimizer(kind, LR_INIT, SGD_LR_INIT)
    ref = ref_init_step(model.generator, model.vgg, batch[0], opt)
    assert_same(model, got, ref, got_vars, state(model), [opt], kind, max(LR_G, LR_D))
    # D is untouched in the init phase (u included: D is never evaluated).
    n_g = len(model.generator.weights)
    for b, a in zip(before[n_g:], got_vars[n_g:]):
        np.testing.assert_array_equal(a, b)


def test_generator_only_step_leaves_discriminator_weights():
    """training_rate > 1: the G-only steps evaluate D once (one power iteration) but do not train it."""
    model, batch = _build()
    D = model.discriminator
    kernels = [v.numpy().copy() for v in D.trainable_variables]
    convs = D.spectral_convs()
    expected_u = [c._power_iteration()[1].numpy() for c in convs]
    out = tf.function(model.gan_step)(*batch, update_discriminator=False)
    assert set(out) == {"g_adv", "content", "style", "color", "g_loss"}
    for b, v in zip(kernels, D.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), b)
    for c, u in zip(convs, expected_u):
        np.testing.assert_allclose(c.u.numpy(), u, atol=1e-6)


def test_optimizers_are_tf1_adam():
    """make_adam is TF1's Adam (beta1 0.5, epsilon 1e-8): gradients of ~1e-7, where epsilon matters."""
    rng = np.random.default_rng(2)
    var = keras.Variable(rng.normal(size=(50,)).astype(np.float32))
    ref_var = keras.Variable(var.numpy())
    start = var.numpy().copy()
    opt, ref = make_adam(1e-3), RefAdam(1e-3)
    opt.build([var])
    for _ in range(3):
        g = (rng.normal(size=(50,)) * 1e-7).astype(np.float32)
        opt.apply_gradients([(tf.constant(g), var)])
        ref.apply([g], [ref_var])
    moved, ref_moved = var.numpy() - start, ref_var.numpy() - start
    # Float32 rounding of weights near 1 is ~6e-8 against moves of ~2e-4 per step.
    np.testing.assert_allclose(moved, ref_moved, rtol=2e-3, atol=2e-7)
    # Epsilon 1e-8 matters here: Keras' default 1e-7 would move each weight ~8x less.
    assert np.abs(moved).mean() > 3e-4


# ---- spectral norm with a gradient penalty (docs/original.md) ----
def np_power_iteration(w, u):
    """One power iteration in float64, as the original computes it: u' = l2n(l2n(u W^T) W)."""
    def l2n(x):
        return x / (np.sqrt(np.sum(x * x)) + 1e-12)

    return l2n(l2n(u @ w.T) @ w)


def np_penalty(norms, gan_type, ld=10.0):
    if gan_type == "wgan-lp":
        return ld * np.mean(np.maximum(0.0, norms - 1) ** 2)
    return ld * np.mean((norms - 1) ** 2)


def ref_penalty(D, anime, generated, gan_type, rng):
    """The penalty from D's current state, drawing alpha (then dragan's noise) as the model does."""
    a = anime.numpy().astype(np.float64)
    alpha = rng.uniform([BATCH, 1, 1, 1], 0.0, 1.0).numpy().astype(np.float64)
    if gan_type == "dragan":
        other = a + 0.5 * a.std() * rng.uniform(anime.shape, 0.0, 1.0).numpy()
    else:
        other = generated.numpy().astype(np.float64)
    x_hat = tf.constant((a + alpha * (other - a)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        total = tf.reduce_sum(D(x_hat, training=False))
    grad = tape.gradient(total, x_hat).numpy().astype(np.float64)
    return np_penalty(np.sqrt(np.sum(grad ** 2, axis=(1, 2, 3))), gan_type)


@pytest.mark.parametrize("gan_type", ["wgan-gp", "wgan-lp", "dragan"])
def test_gradient_penalty_reads_the_stored_u(gan_type):
    """The penalty's D evaluation is a fifth evaluation of the D update: it uses W/sigma from the same
    stored u as the other four, and the update stores u' once (one power iteration), not twice."""
    model, (photo, anime, anime_gray, smooth_gray) = _build(gan_type)
    D = model.discriminator
    convs = D.spectral_convs()
    generated = model.generator(photo, training=True)
    w0 = [c.kernel.numpy().reshape(-1, c.filters).astype(np.float64) for c in convs]
    u0 = [c.u.numpy().astype(np.float64) for c in convs]
    before = [v.numpy().copy() for v in D.weights]
    rng_state = model.rng.state.numpy().copy()

    out = tf.function(model.discriminator_step)(anime, anime_gray, generated, smooth_gray)

    # u advanced by exactly one iteration from (W, u) before the update. A second iteration (the
    # penalty's D call storing once more) would be far outside the tolerance for most layers.
    second_step = []
    for c, w, u in zip(convs, w0, u0):
        once = np_power_iteration(w, u)
        np.testing.assert_allclose(c.u.numpy(), once, rtol=0, atol=1e-5, err_msg=c.name)
        second_step.append(np.abs(np_power_iteration(w, once) - once).max())
    assert max(second_step) > 1e-2, second_step

    # The penalty equals the reference computed from the stored u (sigma of the update's other
    # evaluations), with the same random draws: to float32 rounding (measured 3e-8 relative).
    for v, x in zip(D.weights, before):
        v.assign(x)
    draws = lambda: tf.random.Generator.from_state(rng_state, model.rng.algorithm)  # noqa: E731
    ref = ref_penalty(D, anime, generated, gan_type, draws())
    rtol = 2e-6
    np.testing.assert_allclose(float(out["gp"]), ref, rtol=rtol)
    assert float(out["gp"]) > 0
    # ... and not the one from u' (what an evaluation after the storing call used before the fix):
    # instance norm makes D nearly blind to the sigma of most layers, but not to 2e-6 (measured 4e-5).
    for c, w, u in zip(convs, w0, u0):
        c.u.assign(np_power_iteration(w, u).astype(np.float32))
    from_u_prime = ref_penalty(D, anime, generated, gan_type, draws())
    assert abs(from_u_prime - ref) > 10 * rtol * abs(ref), (from_u_prime, ref)
