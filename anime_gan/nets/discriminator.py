"""The AnimeGAN discriminator and the spectral-normalised convolution it is built from.

Both follow the official code (docs/original.md, "Discriminator"): zero-padded VALID 3x3
convolutions without bias, weights N(0, 0.02), spectral norm on every convolution, instance norm
(eps 1e-5, learned gamma/beta) after the stride-1 convolutions of each stage, LeakyReLU 0.2.
Layer names are the official scope names (conv_0, conv_s2_<i>, conv_s1_<i>, ins_norm_<i>,
last_conv, last_ins_norm, D_logit).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.nets.layers import InstanceNorm, LayerNorm

# The original initialises every discriminator kernel with N(0, 0.02) (plain, not truncated).
D_WEIGHT_STDDEV = 0.02
# The original's l2 normalisation is v / (||v|| + 1e-12), not tf.nn.l2_normalize (which clamps the
# squared norm at its epsilon instead of adding to the norm); the two differ in the gradient.
SN_L2_EPSILON = 1e-12


def l2_normalize(v, epsilon=SN_L2_EPSILON):
    """v / (||v|| + epsilon) over all elements of v, as the official spectral norm computes it."""
    return v / (tf.sqrt(tf.reduce_sum(tf.square(v))) + epsilon)


def power_iteration(w, u):
    """One power-iteration step of spectral norm, exactly as the official code.

    w: [k*k*in, out] (the raw kernel, reshaped); u: [1, out] (the stored estimate).
    Returns (sigma [1, 1], u_new [1, out]) with v = l2n(u w^T), u_new = l2n(v w), sigma = v w u_new^T.
    Nothing is stopped: gradients of sigma reach w through v and u_new as well, as in the original.
    """
    v = l2_normalize(tf.matmul(u, w, transpose_b=True))
    u_new = l2_normalize(tf.matmul(v, w))
    sigma = tf.matmul(tf.matmul(v, w), u_new, transpose_b=True)
    return sigma, u_new


def zero_padding(kernel_size, strides):
    """(top, bottom, left, right) zero padding of the official `conv(pad=1)` for a k x k, stride s conv.

    When k - s is even the pad is (k-1)//2 on every side (3x3 stride 1: 1 everywhere); otherwise the
    bottom/right get k - s - top (3x3 stride 2: 1 on top/left, 0 on bottom/right), so a stride-2
    conv maps a side of H to floor(H / 2).
    """
    p = (kernel_size - 1) // 2
    if (kernel_size - strides) % 2 == 0:
        return p, p, p, p
    q = kernel_size - strides - p
    return p, q, p, q


class SpectralConv2D(keras.layers.Layer):
    """k x k convolution (no bias, zero padding as the original) whose kernel is divided by its
    spectral norm sigma, estimated by one power iteration per call.

    Variables: `kernel` [k, k, in, filters], the raw W (trainable; the optimizer updates W, never
    W/sigma, unlike keras.layers.SpectralNormalization), and `u` [1, filters] (not trainable,
    truncated normal stddev 1), the running estimate of the leading right singular vector of W
    reshaped to [k*k*in, filters].

    call(x, training=False):
      * training=True: one power iteration from the stored u gives u' and sigma; the conv uses
        W / sigma and u is assigned u'. Gradients flow through sigma (as in the original).
      * training=False: the same iteration from the stored u gives sigma, but u is NOT assigned.
        The original always ran (and stored) the iteration, even outside training; we compute
        sigma the same way so inference sees the very kernel a training call would use, while
        evaluation leaves the layer's state untouched.
    The spectral-norm arithmetic runs in the variable dtype (float32 under mixed_float16 /
    mixed_bfloat16); only the normalised kernel is cast to the compute dtype.
    With sn=False there is no u and the raw kernel is used (the original's `sn=False` path).
    Under tf.distribute, u is a mirrored variable with ONLY_FIRST_REPLICA aggregation: every replica
    computes the same u' from the same mirrored W and u, and the first replica's value is written to
    all copies, so they stay identical by construction (with aggregation NONE, TF 2.21 lets each
    replica write only its own copy, which could drift apart).
    """

    def __init__(self, filters, kernel_size=3, strides=1, sn=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.sn = bool(sn)
        self.padding = zero_padding(self.kernel_size, self.strides)

    def build(self, input_shape):
        # autocast=False: the variables are read at full precision even under a mixed policy, which
        # keeps the spectral-norm math in float32; only W / sigma is cast to the compute dtype.
        k = self.kernel_size
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{self.name}: the number of input channels must be known to build the layer.")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(k, k, in_channels, self.filters),
            initializer=keras.initializers.RandomNormal(mean=0.0, stddev=D_WEIGHT_STDDEV),
            trainable=True,
            autocast=False,
        )
        if self.sn:
            self.u = self.add_weight(
                name="u",
                shape=(1, self.filters),
                initializer=keras.initializers.TruncatedNormal(mean=0.0, stddev=1.0),
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )

    def _power_iteration(self):
        w = tf.convert_to_tensor(self.kernel)
        w = tf.reshape(w, (-1, self.filters))
        return power_iteration(w, tf.convert_to_tensor(self.u))

    def sigma(self):
        """The current estimate of sigma (one iteration from the stored u); does not touch u."""
        if not self.sn:
            raise ValueError(f"{self.name} was built with sn=False and has no spectral norm.")
        return tf.reshape(self._power_iteration()[0], ())

    def normalized_kernel(self, training=False):
        """W / sigma (or W when sn=False), in the variable dtype. training=True stores u'."""
        w = tf.convert_to_tensor(self.kernel)
        if not self.sn:
            return w
        sigma, u_new = self._power_iteration()
        if isinstance(training, bool):
            if training:
                self.u.assign(u_new)
        else:  # a symbolic training flag: store u' only when it is true
            self.u.assign(tf.where(tf.cast(training, tf.bool), u_new, tf.convert_to_tensor(self.u)))
        return w / tf.reshape(sigma, ())

    def call(self, x, training=False):
        kernel = self.normalized_kernel(training=training if tf.is_tensor(training) else bool(training))
        top, bottom, left, right = self.padding
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
        return tf.nn.conv2d(x, tf.cast(kernel, x.dtype), strides=self.strides, padding="VALID")

    def compute_output_shape(self, input_shape):
        top, bottom, left, right = self.padding
        k, s = self.kernel_size, self.strides

        def side(n, a, b):
            return None if n is None else (n + a + b - k) // s + 1

        return (input_shape[0], side(input_shape[1], top, bottom), side(input_shape[2], left, right), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides, sn=self.sn)
        return config


class Discriminator(keras.Model):
    """The official AnimeGAN discriminator: image [N, H, W, C] -> logit map [N, H', W', 1], float32.

    With c0 = ch // 2, the convolutions (all 3x3, their output widths) are
      conv_0 (stride 1) -> c0, lrelu;
      for i = 1 .. n_dis-1: conv_s2_i (stride 2) -> c0 * 2**i, lrelu;
                            conv_s1_i (stride 1) -> c0 * 2**(i+1), ins_norm_i, lrelu;
      last_conv (stride 1) -> c0 * 2**n_dis, last_ins_norm, lrelu;
      D_logit (stride 1) -> 1.
    Each conv's input width is the previous conv's output width (3 for conv_0 on RGB). The defaults
    (ch=64, n_dis=3) give 32; 64, 128; 128, 256; 256; 1.
    Parameters: sum over the convs of 9 * in * out, plus 2 * width for each instance norm
    (1,128,800 trainable for the defaults on RGB); with sn=True each conv also holds a
    non-trainable u of its output width (865 more for the defaults).
    Each stride-2 conv maps a side of H to floor(H / 2), so H' = floor(H / 2**(n_dis-1)) (256 -> 64
    for the defaults); sides must be at least 2**(n_dis-1).
    norm="layer" gives AnimeGANv2's discriminator: the same network with contrib layer norm (over H, W
    and C, eps 1e-12) in place of each instance norm (AnimeGANv2's discriminator); the attribute names stay.
    """

    def __init__(self, ch=64, n_dis=3, sn=True, norm="instance", name="discriminator", **kwargs):
        super().__init__(name=name, **kwargs)
        if int(ch) != ch or ch < 2:
            raise ValueError(f"Discriminator: ch must be an integer >= 2 (got {ch!r}).")
        if int(n_dis) != n_dis or n_dis < 1:
            raise ValueError(f"Discriminator: n_dis must be an integer >= 1 (got {n_dis!r}).")
        if norm not in ("instance", "layer"):
            raise ValueError(f"Discriminator: norm must be 'instance' or 'layer' (got {norm!r}).")
        self.ch, self.n_dis, self.sn, self.norm = int(ch), int(n_dis), bool(sn), norm

        def make_norm(scope):
            if norm == "layer":
                return LayerNorm(f"{scope}/", C.LN_EPSILON, name=scope)
            return InstanceNorm(f"{scope}/", C.IN_EPSILON, name=scope)

        c = self.ch // 2
        self.conv_0 = SpectralConv2D(c, strides=1, sn=sn, name="conv_0")
        # Each stage's layers are plain attributes: tf.train.Checkpoint does not track layers held
        # in a list of tuples, and the `u` vectors would silently be left out of checkpoints.
        for i in range(1, self.n_dis):
            setattr(self, f"conv_s2_{i}", SpectralConv2D(2 * c, strides=2, sn=sn, name=f"conv_s2_{i}"))
            setattr(self, f"conv_s1_{i}", SpectralConv2D(4 * c, strides=1, sn=sn, name=f"conv_s1_{i}"))
            setattr(self, f"ins_norm_{i}", make_norm(f"ins_norm_{i}"))
            c *= 2
        self.last_conv = SpectralConv2D(2 * c, strides=1, sn=sn, name="last_conv")
        self.last_ins_norm = make_norm("last_ins_norm")
        self.logit = SpectralConv2D(1, strides=1, sn=sn, name="D_logit")

    @property
    def stages(self):
        """[(stride-2 conv, stride-1 conv, instance norm)] for each middle stage, in order."""
        return [
            (getattr(self, f"conv_s2_{i}"), getattr(self, f"conv_s1_{i}"), getattr(self, f"ins_norm_{i}"))
            for i in range(1, self.n_dis)
        ]

    @property
    def min_side(self):
        """The smallest input height/width the stride-2 convolutions can take."""
        return 2 ** (self.n_dis - 1)

    def spectral_convs(self):
        """All convolutions, in order (the layers holding a `u` when sn=True)."""
        convs = [self.conv_0]
        for down, conv, _ in self.stages:
            convs += [down, conv]
        return convs + [self.last_conv, self.logit]

    def build(self, input_shape=(None, None, None, 3)):
        input_shape = tuple(input_shape)
        super().build(input_shape)
        # Build every layer by tracing a tiny input (training=False: no u is touched).
        side = max(self.min_side, 4)
        self(tf.zeros((1, side, side, input_shape[-1] or 3)), training=False)

    def call(self, x, training=False):
        x = tf.convert_to_tensor(x)
        for axis, what in ((1, "height"), (2, "width")):
            n = x.shape[axis]
            if n is not None and n < self.min_side:
                raise ValueError(
                    f"Discriminator input {what} is {n}, but n_dis={self.n_dis} needs at least "
                    f"{self.min_side}; use larger images or a smaller n_dis."
                )
        x = tf.cast(x, self.compute_dtype)
        lrelu = lambda t: tf.nn.leaky_relu(t, alpha=C.LEAKY_ALPHA)  # noqa: E731
        x = lrelu(self.conv_0(x, training=training))
        for down, conv, norm in self.stages:
            x = lrelu(down(x, training=training))
            x = lrelu(norm(conv(x, training=training)))
        x = lrelu(self.last_ins_norm(self.last_conv(x, training=training)))
        x = self.logit(x, training=training)
        return tf.cast(x, tf.float32)

    def get_config(self):
        config = super().get_config()
        config.update(ch=self.ch, n_dis=self.n_dis, sn=self.sn, norm=self.norm)
        return config
