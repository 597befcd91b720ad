"""The AnimeGAN as a `keras.Model`: generator, discriminator and the perceptual VGG, trained by a
custom `train_step` that reads like the original's algorithm.

Init phase (the first `init_epoch` epochs, docs/original.md "Losses"): only G learns, on
`con_weight * content` with its own Adam at `init_lr`.

GAN phase, one step on a batch (p, a, x_gray, y_gray) = (photo, anime, grayscale anime,
grayscale smooth anime):
  1. D update on D(a) (real), D(x_gray) (gray), D(G(p)) (fake), D(y_gray) (smooth);
  2. G update on 300*adv(D(G(p))) + 1.5*content + 3*style + 10*color against the *updated* D.
G(p) is computed once and shared by both updates: G has no state and its weights do not change
between the two, so the shared value is exactly the original's (which recomputed it in a second
`sess.run`). A single tape over that forward pass serves the G update; the D update runs with that
tape paused, so the shared pass costs nothing extra.

Spectral norm (docs/original.md "Discriminator"): every D evaluation of the original TF1 graph ran one
power iteration from the stored u. In one `sess.run` of the D train op the four D calls all read the
same stored u and the same W, so they produced the same u' and the same W/sigma: effectively ONE
iteration per D update. The G train op then ran the iteration of its own D(G(p)) call, with the
updated W. We reproduce exactly that: the D update evaluates D on the four batches from the same
stored u, only the last evaluation storing u' (one iteration), and the G update evaluates D(G(p))
once more (the second iteration of the step). Four separate evaluations rather than one on the
concatenated batches: the logits would be the same, but the gradient sums would be ordered
differently, and Adam's first steps turn such rounding differences on near-zero gradients into
lr-sized differences of the weights. Two iterations per GAN step, as in the original.
A gradient penalty (`gan_type` wgan-gp, wgan-lp, dragan) adds a fifth D evaluation to the D update,
on x-hat. In the original's graph (with its penalty code fixed, docs/original.md "Gradient-penalty GAN
types and spectral norm") that evaluation belongs to the same `sess.run`, so it reads the same stored
u and uses the same W/sigma as the other four, and u still advances one iteration per D update. So
the penalty evaluates D with training=False (reading u, storing nothing), and it runs before the one
storing evaluation, D(y_gray): u' is stored exactly once per D update for every `gan_type`.

`training_rate` (original: "G:D updates"): the original updated D on the first of every
`training_rate` G steps. `gan_step(..., update_discriminator=False)` is the G-only step of the other
`training_rate - 1` steps.

`train_step(data)` is THE step: our loop (`training.setup.step_functions`) and Keras' `fit` both run it.
It does what two Python attributes say, read when the step is traced: `phase` ("init" or "gan")
and `update_discriminator`. Our loop traces one function per mode; for `fit`, the callback
`PhaseSchedule(init_epoch, training_rate)` sets the mode before each batch and swaps in the train
function traced for it:

    model.fit(dataset, epochs=epoch, steps_per_epoch=n, callbacks=[PhaseSchedule(init_epoch)])

Under `tf.distribute` each replica computes the mean losses of its share of the global batch and
differentiates `loss / num_replicas`; the optimizers sum the replicas' gradients, so the update is
the gradient of the global-batch mean (every loss here is a mean over equally sized per-image
terms). Reported losses are averaged over replicas by the caller.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.training import losses as L



def make_adam(learning_rate):
    """The original's Adam: beta1 0.5, beta2 0.999 and TF1's epsilon 1e-8 (Keras' default is 1e-7)."""
    return keras.optimizers.Adam(
        learning_rate=learning_rate, beta_1=C.ADAM_BETA1, beta_2=C.ADAM_BETA2, epsilon=C.ADAM_EPSILON
    )


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _scaled(optimizer, loss):
    """The loss to differentiate: divided by the replica count, times the loss scale if any."""
    loss = loss / tf.cast(_replicas(), loss.dtype)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        loss = optimizer.scale_loss(loss)
    return loss


class AnimeGAN(keras.Model):
    """G, D and the frozen perceptual VGG with the original's two-phase training step.

    `phase` ("init" or "gan") selects what `train_step` does (the loop sets it per epoch);
    `init_step` and `gan_step` are the two steps themselves, callable with tensors.
    """

    def __init__(
        self,
        generator,
        discriminator,
        vgg,
        *,
        gan_type="lsgan",
        g_adv_weight=C.G_ADV_WEIGHT,
        d_adv_weight=C.D_ADV_WEIGHT,
        con_weight=C.CON_WEIGHT,
        sty_weight=C.STY_WEIGHT,
        color_weight=C.COLOR_WEIGHT,
        tv_weight=0.0,
        d_term_weights=L.V1_D_TERM_WEIGHTS,
        ld=C.GP_WEIGHT,
        seed=0,
        name="anime_gan",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        L.check_gan_type(gan_type)
        self.generator = generator
        self.discriminator = discriminator
        self.vgg = vgg
        self.gan_type = gan_type
        self.g_adv_weight = float(g_adv_weight)
        self.d_adv_weight = float(d_adv_weight)
        self.con_weight = float(con_weight)
        self.sty_weight = float(sty_weight)
        self.color_weight = float(color_weight)
        self.tv_weight = float(tv_weight)  # AnimeGANv2's total-variation term (0: v1, not computed)
        self.d_term_weights = tuple(float(w) for w in d_term_weights)  # real, gray, fake, smooth
        self.ld = float(ld)
        # The only randomness of a step: the gradient penalty's interpolation (and dragan's noise).
        # A tf.random.Generator so that its state is checkpointed with the model.
        self.rng = tf.random.Generator.from_seed(int(seed))
        self.phase = "init"  # what train_step does; see the module docstring
        self.update_discriminator = True

    def compile(self, init_optimizer, g_optimizer, d_optimizer, **kwargs):
        # Keras' "auto" would turn XLA on wherever a GPU is; --jit_compile is the one switch for it.
        kwargs.setdefault("jit_compile", False)
        super().compile(**kwargs)
        self.init_optimizer = init_optimizer
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.build_optimizers()

    def build_optimizers(self):
        """Creates every slot variable now, so checkpoints restore into them and tracing adds none."""
        g_vars = self.generator.trainable_variables
        self.init_optimizer.build(g_vars)
        self.g_optimizer.build(g_vars)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    def call(self, photo, training=False):
        return self.generator(photo, training=training)

    # ---- the two steps ------------------------------------------------------------------------
    def init_step(self, photo):
        """Init phase: G alone on con_weight * content, with the init optimizer."""
        g_vars = self.generator.trainable_variables
        vgg_photo = self.vgg(photo)
        with tf.GradientTape() as tape:
            generated = self.generator(photo, training=True)
            vgg_generated = self.vgg(generated)
            content = L.content_loss(vgg_photo, vgg_generated)
            init_loss = L.init_loss(vgg_photo, vgg_generated, con_weight=self.con_weight)
            scaled = _scaled(self.init_optimizer, init_loss)
        grads = tape.gradient(scaled, g_vars)
        self.init_optimizer.apply_gradients(zip(grads, g_vars))
        return {"content": content, "init_loss": init_loss}

    def _gradient_penalty(self, anime, generated):
        if self.gan_type not in C.GP_GAN_TYPES:
            return tf.constant(0.0, tf.float32)
        # Drawn from the model's checkpointed generator, so a resumed run draws what an
        # uninterrupted one would have.
        alpha = self.rng.uniform([tf.shape(anime)[0], 1, 1, 1], 0.0, 1.0)
        noise = self.rng.uniform(tf.shape(anime), 0.0, 1.0) if self.gan_type == "dragan" else None
        return L.gradient_penalty(
            self.discriminator, anime, generated, self.gan_type, ld=self.ld, alpha=alpha, noise=noise
        )

    def discriminator_step(self, anime, anime_gray, generated, smooth_gray):
        """One D update; returns D's loss terms. `generated` is G(p), treated as a constant."""
        d_vars = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            # The original's D evaluations of one sess.run read the same stored u and store the same
            # u': evaluate all but the last without storing (training=False computes the very same
            # W/sigma) and let the last one store u' (one power iteration per D update). The gradient
            # penalty's evaluation on x-hat (training=False) is one of those that read u, so it comes
            # before the storing call: the step's automatic control dependencies run the reads and
            # writes of u in program order.
            real = self.discriminator(anime, training=False)
            gray = self.discriminator(anime_gray, training=False)
            fake = self.discriminator(generated, training=False)
            gp = self._gradient_penalty(anime, generated)
            smooth = self.discriminator(smooth_gray, training=True)
            parts = L.discriminator_adv_loss(real, gray, fake, smooth, gan_type=self.gan_type,
                                             term_weights=self.d_term_weights)
            d_loss = L.discriminator_loss(parts["d_adv"], gp, d_adv_weight=self.d_adv_weight)
            scaled = _scaled(self.d_optimizer, d_loss)
        grads = tape.gradient(scaled, d_vars)
        self.d_optimizer.apply_gradients(zip(grads, d_vars))
        return {**{k: parts[k] for k in ("d_real", "d_gray", "d_fake", "d_smooth", "d_adv")},
                "gp": gp, "d_loss": d_loss}

    def gan_step(self, photo, anime, anime_gray, smooth_gray, update_discriminator=True):
        """GAN phase: (optionally) one D update, then one G update against the updated D."""
        g_vars = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            generated = self.generator(photo, training=True)
            with tape.stop_recording():
                d_losses = (
                    self.discriminator_step(anime, anime_gray, tf.stop_gradient(generated), smooth_gray)
                    if update_discriminator else {}
                )
                vgg_photo = self.vgg(photo)
                vgg_anime_gray = self.vgg(anime_gray)
            fake_logit = self.discriminator(generated, training=True)
            vgg_generated = self.vgg(generated)
            g_adv = L.generator_adv_loss(fake_logit, gan_type=self.gan_type)
            content = L.content_loss(vgg_photo, vgg_generated)
            style = L.style_loss(vgg_anime_gray, vgg_generated)
            color = L.color_loss(photo, generated)
            tv = L.total_variation_loss(generated) if self.tv_weight else None
            g_loss = L.generator_loss(
                g_adv, content, style, color,
                g_adv_weight=self.g_adv_weight, con_weight=self.con_weight,
                sty_weight=self.sty_weight, color_weight=self.color_weight,
                tv=0.0 if tv is None else tv, tv_weight=self.tv_weight,
            )
            scaled = _scaled(self.g_optimizer, g_loss)
        grads = tape.gradient(scaled, g_vars)
        self.g_optimizer.apply_gradients(zip(grads, g_vars))
        tv_part = {} if tv is None else {"tv": tv}
        return {**d_losses, "g_adv": g_adv, "content": content, "style": style, "color": color, **tv_part,
                "g_loss": g_loss}

    def train_step(self, data):
        """One training step on data = (photo, anime, anime_gray, smooth_gray), in the mode that
        `phase` and `update_discriminator` say; returns every loss term."""
        photo, anime, anime_gray, smooth_gray = data
        if self.phase == "init":
            return self.init_step(photo)
        return self.gan_step(photo, anime, anime_gray, smooth_gray,
                             update_discriminator=self.update_discriminator)


class PhaseSchedule(keras.callbacks.Callback):
    """The original's schedule for `AnimeGAN.fit`: the init phase for the first `init_epoch` epochs,
    then the GAN phase with the D update on the first of every `training_rate` GAN steps.

    Before each batch it sets the model's mode and, when the mode changes, swaps in the train
    function traced for that mode (Keras reads `model.train_function` afresh for every batch), so
    each mode is traced once, as in our loop.
    """

    def __init__(self, init_epoch, training_rate=1):
        super().__init__()
        self.init_epoch = int(init_epoch)
        self.training_rate = int(training_rate)
        self.epoch = 0
        self.gan_steps = 0
        self.mode = None
        self.functions = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch < self.init_epoch:
            mode = ("init", True)
        else:
            mode = ("gan", self.gan_steps % self.training_rate == 0)
            self.gan_steps += 1
        if mode == self.mode:
            return
        self.model.phase, self.model.update_discriminator = self.mode = mode
        if mode not in self.functions:
            self.model.make_train_function(force=True)
            self.functions[mode] = self.model.train_function
        self.model.train_function = self.functions[mode]
