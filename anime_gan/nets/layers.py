"""The building blocks the AnimeGAN paper names, written to match the official TF1 graph op for op.

Every layer here keeps its weights as plain variables named as in the official graph (see
`tf1_names`), so that the converter can map a TF1 checkpoint one-to-one. The computation uses the
same TensorFlow ops as the original graph (reflect `MirrorPad` + VALID convolutions, `tf.nn.moments`
+ `tf.nn.batch_normalization` for instance norm, TF1 bilinear resize), which is what makes our
float32 output equal the official graph's bit for bit rather than merely close.
"""

from __future__ import annotations

import contextlib
import contextvars

import keras
import tensorflow as tf

from anime_gan import constants as C


def legacy_resize_bilinear(x, height, width):
    """TF1's `resize_images` bilinear (align_corners=False, half_pixel_centers=False).

    TF2's `tf.image.resize` uses half-pixel centres and gives other values; the official
    generator was trained (and its graph is built) with the legacy sampling.
    """
    # The kernel reads any float type as float32 and always returns float32. Under a mixed policy the
    # input is cast up here (the same values) so that its gradient is float32 too and the casts
    # carry both directions: XLA rejects the gradient that ResizeBilinearGrad gives a bfloat16 or
    # float16 input when it is added to the other (half-precision) gradients.
    y = tf.raw_ops.ResizeBilinear(
        images=tf.cast(x, tf.float32), size=tf.stack([height, width]), align_corners=False,
        half_pixel_centers=False,
    )
    return tf.cast(y, x.dtype)


# Another expression of the same reflect padding, for the code traced in this context only (see
# `reflect_pad_as`); a ContextVar, so a thread tracing meanwhile keeps tf.pad.
_REFLECT_PAD_IMPL = contextvars.ContextVar("reflect_pad_impl", default=None)


def reflect_pad(x, top, bottom, left, right):
    if top == bottom == left == right == 0:
        return x
    impl = _REFLECT_PAD_IMPL.get()
    if impl is not None:
        return impl(x, top, bottom, left, right)
    return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], mode="REFLECT")


@contextlib.contextmanager
def reflect_pad_as(impl):
    """While in this block (in this thread), the layers pad with impl(x, top, bottom, left, right)
    instead of tf.pad(mode="REFLECT"); impl must give the same values (the TFLite export writes the
    pads as slices, which XNNPACK runs). None keeps tf.pad."""
    token = _REFLECT_PAD_IMPL.set(impl)
    try:
        yield
    finally:
        _REFLECT_PAD_IMPL.reset(token)


def instance_norm(x, gamma, beta, epsilon, out_dtype=None):
    """Instance norm exactly as the official graph computes it.

    `tf.nn.moments` over H and W followed by `tf.nn.batch_normalization`. Algebraically equal forms
    drift by up to 4e-4 on small inputs, where the 2x3 maps of the middle blocks make the variance
    ill-conditioned. Under a mixed policy the statistics are taken in float32 and the result is
    returned in `out_dtype` (default: the input's dtype); a single bfloat16 image (static batch 1)
    takes a fused, faster path.
    """
    if x.dtype == tf.bfloat16 and x.shape.rank == 4 and x.shape[0] == 1:
        dtype = out_dtype or x.dtype
        y = _instance_norm_of_one_bfloat16_image(x, gamma, beta, epsilon)
        return tf.cast(y, dtype) if dtype != y.dtype else y
    return _normalize(x, [1, 2], gamma, beta, epsilon, out_dtype)


def _normalize(x, axes, gamma, beta, epsilon, out_dtype=None):
    """`tf.nn.moments` over `axes` + `tf.nn.batch_normalization`, statistics in float32; the result in
    `out_dtype` (default: the input's dtype). Instance norm (axes 1, 2) and v2's layer norm (1, 2, 3)."""
    dtype = out_dtype or x.dtype
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    y = tf.nn.batch_normalization(x, mean, var, beta, gamma, epsilon)
    return tf.cast(y, dtype) if dtype != tf.float32 else y


def _instance_norm_of_one_bfloat16_image(x, gamma, beta, epsilon):
    """The bfloat16 fast path: for a single image, instance norm is batch norm over (H, W).

    One fused kernel (statistics accumulated in float32, one pass to normalise) replaces the seven
    passes of cast, moments and batch_normalization; with it (and b1 in float32, see Generator)
    bfloat16 inference is 1.7-1.8x faster than float32 instead of 1.4x. bfloat16 is not bit-exact anyway (it stays >= 35 dB PSNR
    from float32, see tests/nets/test_generator.py); float32 never takes this path. The raw op is used
    because the Python wrapper raises epsilon to 1.001e-5, and SepConv's is 1e-6.
    """
    y, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=tf.cast(gamma, tf.float32),
        offset=tf.cast(beta, tf.float32),
        mean=tf.zeros([0], tf.float32),
        variance=tf.zeros([0], tf.float32),
        epsilon=epsilon,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,  # normalise with this image's own (biased) statistics
    )
    return y


def xavier_init():
    # slim's default weights initializer is Xavier/Glorot uniform.
    return keras.initializers.GlorotUniform()


class Block(keras.layers.Layer):
    """A layer whose variables carry their official TF1 names (relative to G_MODEL/<scope>/)."""

    def _weight(self, tf1_name, shape, initializer, trainable=True):
        var = self.add_weight(
            name=tf1_name.replace("/", "_"), shape=shape, initializer=initializer, trainable=trainable
        )
        self._tf1_names = getattr(self, "_tf1_names", [])
        self._tf1_names.append((tf1_name, var))
        return var

    def tf1_names(self):
        """[(name relative to the block's TF1 scope, variable)] in creation order."""
        names = list(getattr(self, "_tf1_names", []))
        for child in self.sub_blocks():
            names.extend((child.tf1_prefix + n, v) for n, v in child.tf1_names())
        return names

    def sub_blocks(self):
        return []


class _LearnedNorm(Block):
    """A norm with learned gamma/beta [C] (gamma 1, beta 0 at init); subclasses say over what and
    with which default epsilon."""

    default_epsilon = None

    def __init__(self, tf1_prefix, epsilon=None, **kwargs):
        super().__init__(**kwargs)
        self.tf1_prefix = tf1_prefix
        self.epsilon = self.default_epsilon if epsilon is None else epsilon

    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self._weight("gamma", (c,), "ones")
        self.beta = self._weight("beta", (c,), "zeros")


class InstanceNorm(_LearnedNorm):
    """Instance norm (per sample and channel, over H and W), as the official v1 graph computes it."""

    default_epsilon = C.IN_EPSILON

    def call(self, x):
        return instance_norm(x, self.gamma, self.beta, self.epsilon)


class ConvNormLReLU(Block):
    """`Conv(c)`: reflect pad (k-1)//2, k x k conv stride 1 (no bias), instance norm, LeakyReLU 0.2.

    tf1_conv / tf1_norm are the scope names in the official graph ("Conv", "InstanceNorm_1", ...).
    """

    def __init__(self, filters, tf1_conv, tf1_norm, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.tf1_prefix = ""
        self.tf1_conv = tf1_conv
        self.norm = InstanceNorm(tf1_norm + "/", C.IN_EPSILON)

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self._weight(f"{self.tf1_conv}/weights", (k, k, input_shape[-1], self.filters), xavier_init())
        self.norm.build(input_shape[:-1] + (self.filters,))

    def sub_blocks(self):
        return [self.norm]

    def call(self, x):
        p = (self.kernel_size - 1) // 2
        x = reflect_pad(x, p, p, p, p)
        x = tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), strides=1, padding="VALID")
        return tf.nn.leaky_relu(self.norm(x), alpha=C.LEAKY_ALPHA)


class SepConvNormLReLU(Block):
    """`SepConv(c, stride)`: depthwise 3x3 + pointwise 1x1, instance norm (eps 1e-6), LeakyReLU.

    Stride 1 pads by reflection 1 on every side; stride 2 pads 0 on top/left and 1 on bottom/right.
    """

    def __init__(self, filters, tf1_scope, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.tf1_prefix = ""
        self.tf1_scope = tf1_scope
        self.norm = InstanceNorm(f"{tf1_scope}/InstanceNorm/", C.SEPCONV_IN_EPSILON)

    def build(self, input_shape):
        cin = input_shape[-1]
        s = self.tf1_scope
        self.depthwise = self._weight(f"{s}/depthwise_weights", (3, 3, cin, 1), xavier_init())
        self.pointwise = self._weight(f"{s}/pointwise_weights", (1, 1, cin, self.filters), xavier_init())
        self.norm.build(input_shape[:-1] + (self.filters,))

    def sub_blocks(self):
        return [self.norm]

    def call(self, x):
        if self.strides == 1:
            x = reflect_pad(x, 1, 1, 1, 1)
        else:
            x = reflect_pad(x, 0, 1, 0, 1)
        s = self.strides
        x = tf.nn.separable_conv2d(
            x,
            tf.cast(self.depthwise, x.dtype),
            tf.cast(self.pointwise, x.dtype),
            strides=[1, s, s, 1],
            padding="VALID",
        )
        return tf.nn.leaky_relu(self.norm(x), alpha=C.LEAKY_ALPHA)


class DownConv(Block):
    """`DownConv(c) = SepConv(c, 2)(x) + SepConv(c, 1)(resize(x, H//2, W//2))`."""

    def __init__(self, filters, tf1_strided, tf1_resized, **kwargs):
        super().__init__(**kwargs)
        self.tf1_prefix = ""
        self.strided = SepConvNormLReLU(filters, tf1_strided, strides=2)
        self.resized = SepConvNormLReLU(filters, tf1_resized, strides=1)

    def sub_blocks(self):
        return [self.strided, self.resized]

    def call(self, x):
        shape = tf.shape(x)
        half = legacy_resize_bilinear(x, shape[1] // 2, shape[2] // 2)
        return self.strided(x) + self.resized(half)


class UpConv(Block):
    """`UpConv(c) = SepConv(c, 1)(resize(x, 2H, 2W))`."""

    def __init__(self, filters, tf1_scope, **kwargs):
        super().__init__(**kwargs)
        self.tf1_prefix = ""
        self.conv = SepConvNormLReLU(filters, tf1_scope, strides=1)

    def sub_blocks(self):
        return [self.conv]

    def call(self, x):
        shape = tf.shape(x)
        return self.conv(legacy_resize_bilinear(x, shape[1] * 2, shape[2] * 2))


class InvertedResBlock(Block):
    """Inverted residual block 256 -> 512 -> 256 with a 3x3 depthwise in the middle (scope `r<i>`).

    Under a mixed policy the residual stream (the block's input and output) stays float32: the
    convolutions run in the compute dtype, but adding eight rounded bfloat16 residuals in a row
    costs about 1 dB of PSNR against float32 for almost no time saved. In float32 nothing changes.
    """

    def __init__(self, name_in_graph, expansion=512, **kwargs):
        # autocast=False: the float32 residual stream must not be rounded on the way in.
        super().__init__(autocast=False, **kwargs)
        r = name_in_graph
        self.tf1_prefix = f"{r}/"
        self.r = r
        self.expansion = expansion
        self.expand = ConvNormLReLU(expansion, "Conv", "InstanceNorm", kernel_size=1)
        self.norm_dw = InstanceNorm("1/", C.IN_EPSILON)
        self.norm_project = InstanceNorm("2/", C.IN_EPSILON)

    def build(self, input_shape):
        c = input_shape[-1]
        self.expand.build(input_shape)
        # The official code initialises this depthwise kernel with a truncated normal, stddev 0.02.
        self.depthwise = self._weight(
            f"{self.r}/w", (3, 3, self.expansion, 1), keras.initializers.TruncatedNormal(stddev=0.02)
        )
        self.norm_dw.build(input_shape[:-1] + (self.expansion,))
        self.project = self._weight("Conv_1/weights", (1, 1, self.expansion, c), xavier_init())
        self.norm_project.build(input_shape)

    def sub_blocks(self):
        return [self.expand, self.norm_dw, self.norm_project]

    def call(self, x):
        h = self.expand(x)
        h = reflect_pad(h, 1, 1, 1, 1)
        h = tf.nn.depthwise_conv2d(h, tf.cast(self.depthwise, h.dtype), strides=[1, 1, 1, 1], padding="VALID")
        h = tf.nn.leaky_relu(self.norm_dw(h), alpha=C.LEAKY_ALPHA)
        h = tf.nn.conv2d(h, tf.cast(self.project, h.dtype), strides=1, padding="VALID")
        # Grappler's arithmetic optimizer would reassociate (h*s + t) + x into (h*s + x) + t when
        # shapes are static (to minimise broadcasts), which changes the float32 rounding and drifts
        # 1e-5 from the official graph; EnsureShape is a no-copy op it cannot see through.
        n = self.norm_project
        h = instance_norm(h, n.gamma, n.beta, n.epsilon, out_dtype=tf.float32)
        return tf.ensure_shape(h, h.shape) + tf.cast(x, tf.float32)


# ---- AnimeGANv2 blocks (docs/original.md) -----------------------------------------------------------
def layer_norm(x, gamma, beta, epsilon, out_dtype=None):
    """TF1 `contrib.layers.layer_norm` as AnimeGANv2 calls it: per sample over H, W and C.

    `tf.nn.moments` over axes 1, 2, 3 then `tf.nn.batch_normalization` with gamma/beta of shape [C],
    the same ops the contrib function builds (and PyTorch's GroupNorm(1, C)); Keras'
    LayerNormalization with its default axis normalises over C alone, which is another network.
    Statistics are taken in float32 under a mixed policy.
    """
    return _normalize(x, [1, 2, 3], gamma, beta, epsilon, out_dtype)


def variance_scaling_init(fan_in):
    # contrib's variance_scaling_initializer() default: truncated normal, stddev sqrt(1.3 * 2 / fan_in).
    return keras.initializers.TruncatedNormal(stddev=(2.6 / fan_in) ** 0.5)


def v2_padding(kernel_size, strides):
    """(top, bottom, left, right) reflect padding of AnimeGANv2's `Conv2D` helper."""
    if strides == 2:
        return 0, 1, 0, 1
    p = {1: 0, 3: 1, 7: 3}[kernel_size]
    return p, p, p, p


class LayerNorm(_LearnedNorm):
    """v2's layer norm (per sample, over H, W and C; gamma/beta [C]), eps 1e-12."""

    default_epsilon = C.LN_EPSILON

    def call(self, x):
        return layer_norm(x, self.gamma, self.beta, self.epsilon)


class ConvLayerNormLReLU(Block):
    """v2's `Conv2DNormLReLU(c, k, s)`: reflect pad (see `v2_padding`), VALID conv without bias,
    layer norm, LeakyReLU 0.2. tf1_conv / tf1_norm: "Conv_1", "LayerNorm_1", ..."""

    def __init__(self, filters, tf1_conv, tf1_norm, kernel_size=3, strides=1, epsilon=C.LN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.tf1_prefix = ""
        self.tf1_conv = tf1_conv
        self.norm = LayerNorm(tf1_norm + "/", epsilon)

    def build(self, input_shape):
        k, cin = self.kernel_size, input_shape[-1]
        self.kernel = self._weight(f"{self.tf1_conv}/weights", (k, k, cin, self.filters),
                                   variance_scaling_init(k * k * cin))
        self.norm.build(input_shape[:-1] + (self.filters,))

    def sub_blocks(self):
        return [self.norm]

    def call(self, x):
        x = reflect_pad(x, *v2_padding(self.kernel_size, self.strides))
        x = tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), strides=self.strides, padding="VALID")
        return tf.nn.leaky_relu(self.norm(x), alpha=C.LEAKY_ALPHA)


class InvertedResBlockV2(Block):
    """v2's inverted residual block (scope `r<i>`): CNL(2·cin, k1); reflect pad 1, depthwise 3x3 with
    bias, layer norm `1`, LeakyReLU; 1x1 conv to 256, layer norm `2`; the input is added only when it
    already has 256 channels (r2-r4, not r1)."""

    def __init__(self, name_in_graph, hidden, filters=256, epsilon=C.LN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.r = name_in_graph
        self.tf1_prefix = f"{name_in_graph}/"
        self.hidden = hidden  # round(2 * cin): 256 for r1, 512 for r2-r4
        self.filters = filters
        self.expand = ConvLayerNormLReLU(hidden, "Conv", "LayerNorm", kernel_size=1, epsilon=epsilon)
        self.norm_dw = LayerNorm("1/", epsilon)
        self.norm_project = LayerNorm("2/", epsilon)

    def build(self, input_shape):
        cin, hidden = input_shape[-1], self.hidden
        self.residual = cin == self.filters
        self.expand.build(input_shape)
        # The official dwise_conv initialises w with a truncated normal (stddev 0.02), its bias with 0.
        self.depthwise = self._weight(f"{self.r}/w", (3, 3, hidden, 1), keras.initializers.TruncatedNormal(stddev=0.02))
        self.depthwise_bias = self._weight(f"{self.r}/bias", (hidden,), "zeros")
        self.norm_dw.build(input_shape[:-1] + (hidden,))
        self.project = self._weight("Conv_1/weights", (1, 1, hidden, self.filters), variance_scaling_init(hidden))
        self.norm_project.build(input_shape[:-1] + (self.filters,))

    def sub_blocks(self):
        return [self.expand, self.norm_dw, self.norm_project]

    def call(self, x):
        h = self.expand(x)
        h = reflect_pad(h, 1, 1, 1, 1)
        h = tf.nn.depthwise_conv2d(h, tf.cast(self.depthwise, h.dtype), strides=[1, 1, 1, 1], padding="VALID")
        h = tf.nn.bias_add(h, tf.cast(self.depthwise_bias, h.dtype))
        h = tf.nn.leaky_relu(self.norm_dw(h), alpha=C.LEAKY_ALPHA)
        h = tf.nn.conv2d(h, tf.cast(self.project, h.dtype), strides=1, padding="VALID")
        h = self.norm_project(h)
        return h + x if self.residual else h


class UpsampleV2(Block):
    """v2's `Unsample(c)`: TF1 legacy bilinear x2, then `Conv2DNormLReLU(c)`.

    With `size` (the PyTorch port's default mode) it resizes to that size instead, with
    align_corners=True sampling (`F.interpolate(..., align_corners=True)`).
    """

    def __init__(self, filters, tf1_conv, tf1_norm, epsilon=C.LN_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.tf1_prefix = ""
        self.conv = ConvLayerNormLReLU(filters, tf1_conv, tf1_norm, epsilon=epsilon)

    def sub_blocks(self):
        return [self.conv]

    def call(self, x, size=None):
        if size is None:
            shape = tf.shape(x)
            return self.conv(legacy_resize_bilinear(x, shape[1] * 2, shape[2] * 2))
        y = tf.raw_ops.ResizeBilinear(images=tf.cast(x, tf.float32), size=size, align_corners=True,
                                      half_pixel_centers=False)
        return self.conv(tf.cast(y, x.dtype))


# ---- what both generators are made of: named scopes and the official variable names ----------
class Scope(Block):
    """A named group of blocks: one of the official graph's scopes b1, b2, m, u2, u1."""

    def __init__(self, scope, blocks, **kwargs):
        super().__init__(name=scope, **kwargs)
        self.tf1_prefix = f"{scope}/"
        self.blocks = blocks

    def sub_blocks(self):
        return self.blocks

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def tf1_variable_map(generator, out_kernel_name):
    """{official variable name: variable} of a generator: its scopes' blocks plus the output kernel."""
    if not generator.built:
        generator.build()
    mapping = {C.TF1_SCOPE + out_kernel_name: generator.out_kernel}
    for scope in generator.scopes:
        for name, var in scope.tf1_names():
            full = C.TF1_SCOPE + scope.tf1_prefix + name
            if full in mapping:
                raise AssertionError(f"duplicate TF1 name {full}")
            mapping[full] = var
    return mapping


def sub_layers(layer):
    yield layer
    for child in layer.sub_blocks():
        yield from sub_layers(child)
