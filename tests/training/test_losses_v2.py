"""AnimeGANv2's additions to the losses and the discriminator, against NumPy (docs/original.md, AnimeGANv2)."""

import numpy as np
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.nets.discriminator import Discriminator
from anime_gan.nets.layers import LayerNorm
from anime_gan.training.losses import discriminator_adv_loss, generator_loss, total_variation_loss


def test_total_variation_is_half_the_mean_squared_neighbour_differences():
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32)
    dh, dw = x[:, 1:] - x[:, :-1], x[:, :, 1:] - x[:, :, :-1]
    # TF1: tf.nn.l2_loss(d) / tf.size(d) = sum(d^2) / 2 / size.
    want = (dh.astype(np.float64) ** 2).sum() / 2 / dh.size + (dw.astype(np.float64) ** 2).sum() / 2 / dw.size
    np.testing.assert_allclose(float(total_variation_loss(x)), want, rtol=1e-6)
    assert float(total_variation_loss(np.ones((1, 5, 5, 3), np.float32))) == 0


def test_generator_loss_adds_the_weighted_tv_term():
    parts = dict(adv=0.5, content=2.0, style=3.0, color=4.0, tv=0.25)
    total = generator_loss(parts["adv"], parts["content"], parts["style"], parts["color"], 300, 1.5, 2.5, 10,
                           tv=parts["tv"], tv_weight=1.0)
    assert float(total) == 300 * 0.5 + 1.5 * 2 + 2.5 * 3 + 10 * 4 + 1.0 * 0.25
    assert float(generator_loss(0.5, 2.0, 3.0, 4.0, 300, 1.5, 2.5, 10)) == 300 * 0.5 + 1.5 * 2 + 2.5 * 3 + 10 * 4


def test_discriminator_terms_take_per_style_weights():
    rng = np.random.default_rng(1)
    real, gray, fake, smooth = (rng.normal(size=(2, 4, 4, 1)).astype(np.float32) for _ in range(4))
    parts = discriminator_adv_loss(real, gray, fake, smooth, "lsgan", term_weights=(1.7, 1.7, 1.7, 1.0))
    want = (1.7 * np.mean((real - 1.0) ** 2) + 1.7 * np.mean(fake ** 2) + 1.7 * np.mean(gray ** 2)
            + 1.0 * np.mean(smooth ** 2))
    np.testing.assert_allclose(float(parts["d_adv"]), want, rtol=1e-6)
    v1 = discriminator_adv_loss(real, gray, fake, smooth, "lsgan")
    np.testing.assert_allclose(float(v1["d_adv"]), np.mean((real - 1.0) ** 2) + np.mean(fake ** 2)
                               + np.mean(gray ** 2) + 0.1 * np.mean(smooth ** 2), rtol=1e-6)


def test_layer_norm_discriminator_has_v2s_size_and_normalises_over_h_w_and_c():
    d = Discriminator(norm="layer")
    d.build()
    trainable = sum(int(np.prod(w.shape)) for w in d.trainable_weights)
    assert trainable == 1_128_800
    norm = d.ins_norm_1
    assert isinstance(norm, LayerNorm)
    x = np.random.default_rng(2).normal(2.0, 3.0, size=(2, 6, 5, 128)).astype(np.float32)
    gamma = np.random.default_rng(3).normal(size=128).astype(np.float32)
    norm.gamma.assign(gamma)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    want = (x - mean) / np.sqrt(var + C.LN_EPSILON) * gamma
    np.testing.assert_allclose(norm(tf.constant(x)).numpy(), want, atol=1e-5)
