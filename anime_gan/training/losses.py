"""AnimeGAN's losses (paper section 3.2, official code): pure functions of tensors.

Every function casts its inputs to float32 first (under mixed precision, features and logits arrive
as float16/bfloat16) and returns a float32 scalar. "mean" is over all elements. Images are in [-1, 1].
Adversarial losses exist for every `constants.GAN_TYPES` entry; lsgan is the official default and the
only one the official code ever ran (its gradient penalty could not execute, see `gradient_penalty`).
"""

from __future__ import annotations

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.errors import ConfigError



def _f32(x):
    return tf.cast(x, tf.float32)


def check_gan_type(gan_type):
    """The one check of a gan_type name (flags, the model and every loss use it)."""
    if gan_type not in C.GAN_TYPES:
        raise ConfigError(f"--gan_type must be one of {', '.join(C.GAN_TYPES)} (got {gan_type!r}).")


def _l1(a, b):
    return tf.reduce_mean(tf.abs(_f32(a) - _f32(b)))


def content_loss(vgg_photo, vgg_generated):
    """mean |VGG(p) - VGG(G(p))|: keeps the photo's content."""
    return _l1(vgg_photo, vgg_generated)


def gram(features):
    """Gram matrix per image: F^T F / (H*W*C) with F the [H*W, C] reshaping. [N,H,W,C] -> [N,C,C]."""
    features = _f32(features)
    shape = tf.shape(features)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    flat = tf.reshape(features, [n, h * w, c])
    size = tf.cast(h * w * c, tf.float32)
    return tf.matmul(flat, flat, transpose_a=True) / size


def style_loss(vgg_anime_gray, vgg_generated):
    """mean |gram(VGG(x_gray)) - gram(VGG(G(p)))|: the grayscale anime's texture, not its colours."""
    return _l1(gram(vgg_anime_gray), gram(vgg_generated))


def _huber(a, b, delta=1.0):
    # tf.compat.v1.losses.huber_loss with its default reduction: the mean over all elements.
    err = tf.abs(a - b)
    quadratic = tf.minimum(err, delta)
    return tf.reduce_mean(0.5 * tf.square(quadratic) + delta * (err - quadratic))


def color_loss(photo, generated):
    """L1 on Y plus Huber (delta 1) on U and V of YUV((x+1)/2): keeps the photo's colours."""
    photo_yuv = tf.image.rgb_to_yuv((_f32(photo) + 1.0) / 2.0)
    generated_yuv = tf.image.rgb_to_yuv((_f32(generated) + 1.0) / 2.0)
    return (_l1(photo_yuv[..., 0], generated_yuv[..., 0])
            + _huber(photo_yuv[..., 1], generated_yuv[..., 1])
            + _huber(photo_yuv[..., 2], generated_yuv[..., 2]))


def _sigmoid_ce(logits, label):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.fill(tf.shape(logits), label), logits=logits))


def generator_adv_loss(fake_logit, gan_type: str = "lsgan"):
    """The generator's adversarial loss on D(G(p))."""
    check_gan_type(gan_type)
    fake = _f32(fake_logit)
    if gan_type == "lsgan":
        return tf.reduce_mean(tf.square(fake - 1.0))
    if gan_type in ("gan", "dragan"):
        return _sigmoid_ce(fake, 1.0)
    # hinge, wgan-gp, wgan-lp
    return -tf.reduce_mean(fake)


def _real_and_fake_terms(gan_type):
    """(loss of a logit map that should read "real", loss of one that should read "fake")."""
    if gan_type == "lsgan":
        return (lambda x: tf.reduce_mean(tf.square(x - 1.0)), lambda x: tf.reduce_mean(tf.square(x)))
    if gan_type in ("gan", "dragan"):
        return (lambda x: _sigmoid_ce(x, 1.0), lambda x: _sigmoid_ce(x, 0.0))
    if gan_type == "hinge":
        return (lambda x: tf.reduce_mean(tf.nn.relu(1.0 - x)), lambda x: tf.reduce_mean(tf.nn.relu(1.0 + x)))
    # wgan-gp, wgan-lp: the critic's raw scores.
    return (lambda x: -tf.reduce_mean(x), lambda x: tf.reduce_mean(x))


V1_D_TERM_WEIGHTS = (1.0, 1.0, 1.0, C.SMOOTH_D_WEIGHT)  # real, gray, fake, smooth


def discriminator_adv_loss(real_logit, gray_logit, fake_logit, smooth_logit, gan_type: str = "lsgan",
                           term_weights=V1_D_TERM_WEIGHTS):
    """The discriminator's adversarial loss and its parts.

    real = D(a) (anime, should read real); gray = D(x_gray) (grayscale anime), fake = D(G(p)),
    smooth = D(y_gray) (grayscale edge-smoothed anime): all should read fake. The grayscale anime
    keeps D from judging by colour; the smoothed anime teaches it that blurred edges are not anime.
    Returns d_real, d_gray, d_fake, d_smooth (unweighted) and their sum weighted by `term_weights`
    (real, gray, fake, smooth): d_adv = d_real + d_gray + d_fake + 0.1 * d_smooth in v1; AnimeGANv2
    weights them per style (docs/original.md, AnimeGANv2; its code uses 1.7, 1.7, 1.7, 1.0).
    """
    check_gan_type(gan_type)
    real_term, fake_term = _real_and_fake_terms(gan_type)
    parts = {
        "d_real": real_term(_f32(real_logit)),
        "d_gray": fake_term(_f32(gray_logit)),
        "d_fake": fake_term(_f32(fake_logit)),
        "d_smooth": fake_term(_f32(smooth_logit)),
    }
    w_real, w_gray, w_fake, w_smooth = term_weights
    parts["d_adv"] = (w_real * parts["d_real"] + w_gray * parts["d_gray"] + w_fake * parts["d_fake"]
                      + w_smooth * parts["d_smooth"])
    return parts


def gradient_penalty(discriminator, real, fake, gan_type: str, ld: float = C.GP_WEIGHT, seed=None,
                     alpha=None, noise=None):
    """The gradient penalty of wgan-gp, wgan-lp and dragan; 0.0 for the other gan types.

    x_hat = real + alpha * (other - real) with one alpha ~ U[0, 1) per sample, where
    - wgan-gp, wgan-lp: other = fake = G(p), real = the anime batch a (Gulrajani et al.);
    - dragan: other = a perturbed anime batch a + 0.5 * std(a) * U[0, 1) (std over the whole batch),
      so x_hat lies in a small neighbourhood of the real data (Kodali et al.); G(p) is not used.
      This is the original's "for dragan a noisy anime batch" and the original code's evident intent
      (its penalty unpacked D's single output into two values and never ran).
    The gradient is that of sum(D(x_hat)) over the whole logit map; D works on each image alone
    (instance norm, no batch statistics), so this is each image's own gradient. Its norm is taken
    per image over all pixels and channels.
    wgan-gp, dragan: ld * mean((|grad| - 1)^2); wgan-lp: ld * mean(max(0, |grad| - 1)^2).

    discriminator: callable(x, training=False) -> logits. It is called with training=False: the
    penalty's evaluation is one more D evaluation of the D update, so a spectral-norm D computes
    W/sigma from its stored u, like the update's other evaluations, and stores nothing (the update
    stores u' once, in its last evaluation; see model.py). Call this under the outer tape that
    differentiates the D loss: the inner tape's gradient is then itself differentiated (double
    backprop), which works in tf.function and in a tf.distribute replica context.
    seed: op seed of the random draws (None in training). alpha ([N,1,1,1]) and noise (like real)
    replace the random draws, for tests.
    """
    check_gan_type(gan_type)
    if gan_type not in C.GP_GAN_TYPES:
        return tf.constant(0.0, tf.float32)
    real = _f32(real)
    batch = tf.shape(real)[0]
    if gan_type == "dragan":
        if noise is None:
            noise = tf.random.uniform(tf.shape(real), 0.0, 1.0, seed=seed)
        _, variance = tf.nn.moments(real, axes=[0, 1, 2, 3])
        other = real + 0.5 * tf.sqrt(variance) * _f32(noise)
    else:
        other = _f32(fake)
    if alpha is None:
        alpha = tf.random.uniform([batch, 1, 1, 1], 0.0, 1.0, seed=seed)
    x_hat = real + _f32(alpha) * (other - real)
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        logit = _f32(discriminator(x_hat, training=False))
        total = tf.reduce_sum(logit)
    grad = _f32(tape.gradient(total, x_hat))
    # The tiny floor keeps sqrt's derivative finite where a gradient is exactly zero; it moves the
    # norm by at most 1e-6 near zero and by ~1e-12 / |grad| elsewhere.
    norm = tf.sqrt(tf.reduce_sum(tf.square(grad), axis=[1, 2, 3]) + 1e-12)
    if gan_type == "wgan-lp":
        return ld * tf.reduce_mean(tf.square(tf.nn.relu(norm - 1.0)))
    return ld * tf.reduce_mean(tf.square(norm - 1.0))


def total_variation_loss(images):
    """AnimeGANv2's TV loss on G(p): 0.5 * mean(dh^2) + 0.5 * mean(dw^2) (TF1's l2_loss / size)."""
    images = _f32(images)
    dh = images[:, 1:] - images[:, :-1]
    dw = images[:, :, 1:] - images[:, :, :-1]
    return 0.5 * tf.reduce_mean(tf.square(dh)) + 0.5 * tf.reduce_mean(tf.square(dw))


def init_loss(vgg_photo, vgg_generated, con_weight: float = C.CON_WEIGHT):
    """Initialisation phase (G only): con_weight * content loss."""
    return con_weight * content_loss(vgg_photo, vgg_generated)


def generator_loss(adv, content, style, color, g_adv_weight: float = C.G_ADV_WEIGHT,
                   con_weight: float = C.CON_WEIGHT, sty_weight: float = C.STY_WEIGHT,
                   color_weight: float = C.COLOR_WEIGHT, tv=0.0, tv_weight: float = 0.0):
    """G total = g_adv_weight*adv + con_weight*content + sty_weight*style + color_weight*color
    (+ tv_weight*tv in AnimeGANv2)."""
    total = (g_adv_weight * _f32(adv) + con_weight * _f32(content) + sty_weight * _f32(style)
             + color_weight * _f32(color))
    if tv_weight:
        total = total + tv_weight * _f32(tv)
    return total


def discriminator_loss(d_adv, gp=0.0, d_adv_weight: float = C.D_ADV_WEIGHT):
    """D total = d_adv_weight * d_adv + gp (the penalty already carries its weight ld)."""
    return d_adv_weight * _f32(d_adv) + _f32(gp)
