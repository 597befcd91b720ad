"""A plain eager reference of AnimeGAN's GAN step and init step, written from the original's formulas
(docs/original.md, "Losses"), which tests/training/test_train_step.py (v1) and test_train_step_v2.py (v2's
weights and TV term) compare `AnimeGAN`'s steps against.

The reference recomputes every loss from the original's formulas, applies TF1's Adam by hand (beta1 0.5,
beta2 0.999, epsilon 1e-8; `RefAdam`, or plain SGD: `RefSGD`) and follows the original's schedule: the D
update on (a, x_gray, G(p), y_gray), then G's update against the updated D, with a second G(p)
forward pass as the original's separate `sess.run` did. Spectral norm follows the original TF1
graph: every D evaluation of one `sess.run` reads the same stored u (and stores the same u'), so the
reference evaluates D on each batch separately from the same u (training=False evaluates without
storing; the last call stores u'), the gradient penalty's D evaluation on x-hat reads that same u
(docs/original.md), and the G update's D call iterates once more.

`state` / `restore` save and put back every weight of a model's G and D; `assert_same` compares a
step's losses and weights with the reference's.
"""

import numpy as np
import tensorflow as tf

W = dict(g_adv=300.0, d_adv=300.0, con=1.5, sty=3.0, color=10.0)  # v1's loss weights


# ---- the reference, from docs/original.md ---------------------------------------------------------
def ref_gram(f):
    n, h, w, c = f.shape
    flat = tf.reshape(f, [n, h * w, c])
    return tf.matmul(flat, flat, transpose_a=True) / float(h * w * c)


def ref_huber(a, b):
    e = tf.abs(a - b)
    return tf.reduce_mean(tf.where(e <= 1.0, 0.5 * e * e, e - 0.5))


def ref_color(p, g):
    yp = tf.image.rgb_to_yuv((p + 1) / 2)
    yg = tf.image.rgb_to_yuv((g + 1) / 2)
    return (tf.reduce_mean(tf.abs(yp[..., 0] - yg[..., 0])) + ref_huber(yp[..., 1], yg[..., 1])
            + ref_huber(yp[..., 2], yg[..., 2]))


class RefSGD:
    def __init__(self, lr):
        self.lr, self.grads = lr, {}

    def apply(self, grads, variables):
        for g, var in zip(grads, variables):
            self.grads[var.path] = g.numpy()
            var.assign(var.numpy() - self.lr * g.numpy())


class RefAdam:
    """TF1's AdamOptimizer, by hand (float64 moments)."""

    def __init__(self, lr, b1=0.5, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m, self.v, self.t, self.grads = {}, {}, 0, {}

    def apply(self, grads, variables):
        self.t += 1
        for g, var in zip(grads, variables):
            self.grads[var.path] = np.asarray(g)
        lr_t = self.lr * np.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
        for g, var in zip(grads, variables):
            g = np.asarray(g, np.float64)
            k = id(var)
            self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * g * g
            var.assign((var.numpy() - lr_t * self.m[k] / (np.sqrt(self.v[k]) + self.eps)).astype(np.float32))


def ref_init_step(G, vgg, photo, opt):
    with tf.GradientTape() as tape:
        content = tf.reduce_mean(tf.abs(vgg(photo) - vgg(G(photo))))
        loss = W["con"] * content
    opt.apply(tape.gradient(loss, G.trainable_variables), G.trainable_variables)
    return {"content": content, "init_loss": loss}


def ref_tv(x):
    """AnimeGANv2's TV loss in TF1's form: tf.nn.l2_loss(d) / tf.size(d), vertical plus horizontal."""
    dh = x[:, 1:, :, :] - x[:, :-1, :, :]
    dw = x[:, :, 1:, :] - x[:, :, :-1, :]
    return (tf.nn.l2_loss(dh) / tf.cast(tf.size(dh), tf.float32)
            + tf.nn.l2_loss(dw) / tf.cast(tf.size(dw), tf.float32))


def ref_gan_step(G, D, vgg, batch, d_opt, g_opt, gan_type="lsgan", alpha=None, ld=10.0, w=W,
                 d_terms=(1.0, 1.0, 1.0, 0.1)):
    """`w`: the loss weights (a "tv" entry adds AnimeGANv2's TV term); `d_terms`: D's weights of
    real, gray, fake, smooth (v1: 1, 1, 1, 0.1)."""
    p, a, x_gray, y_gray = batch
    out = {}
    generated = G(p)
    # D update: four evaluations (five with a gradient penalty) from the same stored u; only the
    # one on y_gray stores u', after the others have read u.
    with tf.GradientTape() as tape:
        real = D(a, training=False)
        gray = D(x_gray, training=False)
        fake = D(generated, training=False)
        gp = tf.constant(0.0)
        if gan_type == "wgan-gp":
            x_hat = a + alpha * (generated - a)
            with tf.GradientTape() as inner:
                inner.watch(x_hat)
                s = tf.reduce_sum(D(x_hat, training=False))
            grad = inner.gradient(s, x_hat)
            norm = tf.sqrt(tf.reduce_sum(tf.square(grad), axis=[1, 2, 3]))
            gp = ld * tf.reduce_mean(tf.square(norm - 1))
        smooth = D(y_gray, training=True)
        if gan_type == "lsgan":
            out["d_real"] = tf.reduce_mean(tf.square(real - 1))
            out["d_gray"] = tf.reduce_mean(tf.square(gray))
            out["d_fake"] = tf.reduce_mean(tf.square(fake))
            out["d_smooth"] = tf.reduce_mean(tf.square(smooth))
        else:  # wgan-gp: the critic's raw scores
            out["d_real"] = -tf.reduce_mean(real)
            out["d_gray"] = tf.reduce_mean(gray)
            out["d_fake"] = tf.reduce_mean(fake)
            out["d_smooth"] = tf.reduce_mean(smooth)
        out["d_adv"] = (d_terms[0] * out["d_real"] + d_terms[1] * out["d_gray"] + d_terms[2] * out["d_fake"]
                        + d_terms[3] * out["d_smooth"])
        out["gp"] = gp
        out["d_loss"] = w["d_adv"] * out["d_adv"] + gp
    d_opt.apply(tape.gradient(out["d_loss"], D.trainable_variables), D.trainable_variables)
    # G update against the updated D, with G(p) recomputed as the original's second sess.run.
    with tf.GradientTape() as tape:
        generated = G(p)
        fake = D(generated, training=True)
        out["g_adv"] = tf.reduce_mean(tf.square(fake - 1)) if gan_type == "lsgan" else -tf.reduce_mean(fake)
        f_gen = vgg(generated)
        out["content"] = tf.reduce_mean(tf.abs(vgg(p) - f_gen))
        out["style"] = tf.reduce_mean(tf.abs(ref_gram(vgg(x_gray)) - ref_gram(f_gen)))
        out["color"] = ref_color(p, generated)
        out["g_loss"] = (w["g_adv"] * out["g_adv"] + w["con"] * out["content"] + w["sty"] * out["style"]
                         + w["color"] * out["color"])
        if "tv" in w:
            out["tv"] = ref_tv(generated)
            out["g_loss"] += w["tv"] * out["tv"]
    g_opt.apply(tape.gradient(out["g_loss"], G.trainable_variables), G.trainable_variables)
    return out


# ---- comparing a model's step with the reference --------------------------------------------------
def _variables(model):
    return model.generator.weights + model.discriminator.weights


def state(model):
    return [v.numpy().copy() for v in _variables(model)]


def restore(model, values):
    for v, x in zip(_variables(model), values):
        v.assign(x)


def assert_same(model, got_losses, ref_losses, got_vars, ref_vars, ref_opts, kind, max_lr):
    """Every loss and every variable to 1e-5.

    With Adam, elements whose gradient is pure rounding noise are exempt from the 1e-5: Adam's first
    step moves an element by about lr * sign(gradient), so a gradient that is mathematically zero
    (e.g. the beta of an instance norm followed by another instance norm) moves by +-lr depending on
    its rounding, which differs between any two programs. Such elements must still move by <= lr
    (`max_lr`: the largest Adam learning rate of the test). The SGD variant of each test has no such
    exemption.
    """
    assert set(got_losses) == set(ref_losses)
    for k in ref_losses:
        np.testing.assert_allclose(float(got_losses[k]), float(ref_losses[k]), rtol=1e-5, atol=1e-5, err_msg=k)
    exempt_total = 0
    # Rounding noise: below 1e-6 of the largest gradient of the same net (float32 has 7 digits).
    floor = {path: 1e-6 * max(np.abs(g).max() for g in opt.grads.values())
             for opt in ref_opts for path in opt.grads}
    ref_grads = {path: g for opt in ref_opts for path, g in opt.grads.items()}
    for var, got, ref in zip(_variables(model), got_vars, ref_vars):
        close = np.abs(got - ref) <= 1e-5
        if kind == "adam" and var.path in ref_grads:
            noise = np.abs(ref_grads[var.path]) <= floor[var.path]
            assert np.all(np.abs(got - ref) <= 2.002 * max_lr), var.path
            exempt_total += int(np.sum(~close & noise))
            close |= noise
        assert close.all(), f"{var.path}: max |diff| {np.abs(got - ref).max():.3g}"
    if kind == "adam":
        # The exemption covers a sliver of the weights, not the step.
        assert exempt_total < 0.01 * sum(v.size for v in got_vars)
