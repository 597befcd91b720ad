"""The generator read into a program of nodes (`program_of`): reflect-padded convolutions, the legacy
bilinear resize, norms and pointwise ops, in execution order, each a function of its inputs' rows.

A new architecture needs a program builder (`PROGRAM_BUILDERS`) and, for a new block type, an
emitter (`BLOCK_EMITTERS`) that writes the block's ops as nodes, op for op as its `call` computes.
"""

from __future__ import annotations

from fractions import Fraction

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.deploy.banded.ops import affine, const, slice_rows
from anime_gan.nets.layers import (
    ConvLayerNormLReLU,
    ConvNormLReLU,
    DownConv,
    InvertedResBlock,
    InvertedResBlockV2,
    SepConvNormLReLU,
    UpConv,
    UpsampleV2,
    legacy_resize_bilinear,
    v2_padding,
)

FLOAT_BYTES = 4


# ---- nodes ---------------------------------------------------------------------------------------


class Node:
    """One map of the generator, as a function of its inputs' rows. Heights are dynamic (tensors)."""

    def __init__(self, name, inputs, channels, scale):
        self.name = name
        self.inputs = tuple(inputs)
        self.channels = int(channels)
        self.scale = Fraction(scale)  # rows (and columns) relative to the network's input
        self.index = None  # position in the program

    macs = 0  # multiply-adds per output pixel (the planner's cost)
    pointwise = True  # output row r depends on input row r only

    def height(self, height_in):
        return height_in

    def width(self, width_in):
        return width_in

    def input_rows(self, a, b):
        """The rows [lo, hi) of the inputs that output rows [a, b) need, before clipping to the map
        (lo < 0 or hi > height mean reflect padding at the border)."""
        return a, b

    def compute(self, bands, a, b, stats):
        """The output rows [a, b) from `bands`: per input (rows [max(lo, 0), min(hi, height)),
        reflect rows missing at the top, reflect rows missing at the bottom)."""
        raise NotImplementedError

    @property
    def bytes_per_pixel(self):
        """Bytes of this map per pixel of the network's input."""
        return self.channels * FLOAT_BYTES * self.scale**2

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.channels}ch x{self.scale}>"


class Input(Node):
    def __init__(self, channels):
        super().__init__("input", (), channels, 1)


class Conv(Node):
    """A linear spatial op on a reflect-padded input: `apply(padded NHWC band)` with kernel height
    `kernel`, row stride `stride`, reflect padding (top, bottom, left, right)."""

    def __init__(self, name, x, channels, apply, kernel, stride, pad, macs):
        super().__init__(name, [x], channels, x.scale / stride)
        self.apply, self.kernel, self.stride, self.pad, self.macs = apply, kernel, stride, tuple(pad), macs
        self.pointwise = False

    def height(self, height_in):
        top, bottom, _, _ = self.pad
        return (height_in + top + bottom - self.kernel) // self.stride + 1

    def width(self, width_in):
        _, _, left, right = self.pad
        return (width_in + left + right - self.kernel) // self.stride + 1

    def input_rows(self, a, b):
        s, top = self.stride, self.pad[0]
        return affine(a, s, -top), affine(b, s, self.kernel - top - s)

    def compute(self, bands, a, b, stats):
        band, top, bottom = bands[0]
        _, _, left, right = self.pad
        if any(self.pad):
            zero = const(0)
            paddings = tf.reshape(tf.stack([top, bottom, const(left), const(right), zero, zero]), const((3, 2)))
            band = tf.pad(band, paddings, mode="REFLECT")
        return tf.squeeze(self.apply(tf.expand_dims(band, const(0))), [0])


class Resize(Node):
    """TF1's legacy bilinear resize by exactly 2 (up) or 1/2 (down), as `legacy_resize_bilinear`.

    Halo rule. Down (input height even): output row i is input row 2i (weight 0 on the next row),
    so rows [a, b) need input rows [2a, 2b) and a band resized alone gives the same scale, 2.
    Up: output row i interpolates input rows i//2 and i//2 + 1 (the last row repeats), so rows
    [a, b) need input rows [a//2, (b-1)//2 + 2) clipped to the map; the band, resized alone to
    twice its rows (scale 1/2), gives the same rows, from offset a % 2.
    """

    def __init__(self, name, x, factor):
        factor = Fraction(factor)
        if factor not in (2, Fraction(1, 2)):
            raise ValueError(f"banded resize supports factors 2 and 1/2, not {factor}")
        super().__init__(name, [x], x.channels, x.scale * factor)
        self.up = factor == 2
        self.macs = 4 * self.channels
        self.pointwise = False

    def height(self, height_in):
        return height_in * 2 if self.up else height_in // 2

    def width(self, width_in):
        return self.height(width_in)

    def input_rows(self, a, b):
        if self.up:
            two = const(2)
            return a // two, (b - const(1)) // two + two
        return affine(a, 2, 0), affine(b, 2, 0)

    def compute(self, bands, a, b, stats):
        band = tf.expand_dims(bands[0][0], const(0))
        _, rows, cols, _ = tf.unstack(tf.shape(band))
        two = const(2)
        if self.up:
            y = tf.squeeze(legacy_resize_bilinear(band, rows * two, cols * two), [0])
            offset = tf.math.floormod(a, two)
            return slice_rows(y, offset, offset + (b - a))
        return tf.squeeze(legacy_resize_bilinear(band, rows // two, cols // two), [0])


class Norm(Node):
    """`tf.nn.batch_normalization` with the statistics of the whole input map: per channel (instance
    norm) or over rows, columns and channels (layer norm)."""

    def __init__(self, name, x, gamma, beta, epsilon, per_channel):
        super().__init__(name, [x], x.channels, x.scale)
        self.gamma, self.beta, self.epsilon, self.per_channel = gamma, beta, epsilon, per_channel
        self.macs = 2 * self.channels

    def scale_and_shift(self, mean, variance):
        """`tf.nn.batch_normalization`'s own arithmetic, taken out of the band loop: x * inv + shift."""
        inv = tf.math.rsqrt(variance + self.epsilon) * self.gamma
        return inv, self.beta - mean * inv

    def compute(self, bands, a, b, stats):
        inv, shift = stats[self]
        return bands[0][0] * inv + shift


class LeakyReLU(Node):
    def __init__(self, name, x, alpha=C.LEAKY_ALPHA):
        super().__init__(name, [x], x.channels, x.scale)
        self.alpha = alpha
        self.macs = self.channels

    def compute(self, bands, a, b, stats):
        return tf.nn.leaky_relu(bands[0][0], alpha=self.alpha)


class Add(Node):
    def __init__(self, name, x, y):
        if x.scale != y.scale or x.channels != y.channels:
            raise ValueError(f"cannot add {x} and {y}")
        super().__init__(name, [x, y], x.channels, x.scale)
        self.macs = self.channels

    def compute(self, bands, a, b, stats):
        return bands[0][0] + bands[1][0]


class Tanh(Node):
    def __init__(self, name, x):
        super().__init__(name, [x], x.channels, x.scale)
        self.macs = self.channels

    def compute(self, bands, a, b, stats):
        return tf.tanh(bands[0][0])


class Program:
    """The generator as nodes in execution order; `output` is the last one."""

    def __init__(self, in_channels=3):
        self.nodes = []
        self.input = self._add(Input(in_channels))

    def _add(self, node):
        node.index = len(self.nodes)
        self.nodes.append(node)
        return node

    @property
    def output(self):
        return self.nodes[-1]

    def conv(self, name, x, filters, apply, kernel, stride, pad, macs):
        return self._add(Conv(name, x, filters, apply, kernel, stride, pad, macs))

    def resize(self, name, x, factor):
        return self._add(Resize(name, x, factor))

    def norm(self, name, x, norm_layer, per_channel=True):
        return self._add(Norm(name, x, _raw(norm_layer.gamma), _raw(norm_layer.beta), norm_layer.epsilon,
                              per_channel))

    def lrelu(self, name, x):
        return self._add(LeakyReLU(name, x))

    def add(self, name, x, y):
        return self._add(Add(name, x, y))

    def tanh(self, name, x):
        return self._add(Tanh(name, x))

    def pre_norm_nodes(self):
        """The maps whose statistics some norm needs."""
        return {n.inputs[0] for n in self.nodes if isinstance(n, Norm)}

    def whole_macs_per_pixel(self):
        """Multiply-adds per input pixel of one whole-image run (no recomputation)."""
        return float(sum(n.macs * n.scale**2 for n in self.nodes))


def _raw(variable):
    # Keras 3 variables wrap a tf.Variable; tf ops read the tf.Variable directly.
    return getattr(variable, "value", variable)


# ---- one emitter per block type, op for op as the block's `call` --------------------------------


def _conv2d(kernel, stride=1):
    return lambda x: tf.nn.conv2d(x, kernel, strides=stride, padding="VALID")


def _emit_sepconv(p, name, layer, x):
    """`SepConvNormLReLU.call`: reflect pad (1 on every side, or 0/1 for stride 2), separable conv,
    instance norm, LeakyReLU."""
    s = layer.strides
    pad = (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1)
    dw, pw = _raw(layer.depthwise), _raw(layer.pointwise)
    cin = dw.shape[2]
    conv = p.conv(f"{name}/sepconv", x, layer.filters,
                  lambda t: tf.nn.separable_conv2d(t, dw, pw, strides=[1, s, s, 1], padding="VALID"),
                  kernel=3, stride=s, pad=pad, macs=9 * cin + cin * layer.filters)
    return p.lrelu(f"{name}/lrelu", p.norm(f"{name}/norm", conv, layer.norm))


def _emit_conv_norm_lrelu(p, name, layer, x):
    """`ConvNormLReLU.call`: reflect pad (k-1)//2, conv, instance norm, LeakyReLU."""
    k = layer.kernel_size
    q = (k - 1) // 2
    kernel = _raw(layer.kernel)
    conv = p.conv(f"{name}/conv", x, layer.filters, _conv2d(kernel), kernel=k, stride=1, pad=(q, q, q, q),
                  macs=k * k * kernel.shape[2] * layer.filters)
    return p.lrelu(f"{name}/lrelu", p.norm(f"{name}/norm", conv, layer.norm))


def _emit_down_conv(p, name, layer, x):
    """`DownConv.call`: SepConv(stride 2)(x) + SepConv(resize(x, H//2, W//2))."""
    half = p.resize(f"{name}/resize", x, Fraction(1, 2))
    strided = _emit_sepconv(p, f"{name}/strided", layer.strided, x)
    resized = _emit_sepconv(p, f"{name}/resized", layer.resized, half)
    return p.add(f"{name}/add", strided, resized)


def _emit_up_conv(p, name, layer, x):
    """`UpConv.call`: SepConv(resize(x, 2H, 2W))."""
    return _emit_sepconv(p, f"{name}/conv", layer.conv, p.resize(f"{name}/resize", x, 2))


def _emit_inverted_res_block(p, name, layer, x):
    """`InvertedResBlock.call`: 1x1 ConvNormLReLU, reflect pad 1 + depthwise, norm, LeakyReLU, 1x1
    conv, norm, plus the block input."""
    h = _emit_conv_norm_lrelu(p, f"{name}/expand", layer.expand, x)
    dw, project = _raw(layer.depthwise), _raw(layer.project)
    h = p.conv(f"{name}/depthwise", h, layer.expansion,
               lambda t: tf.nn.depthwise_conv2d(t, dw, strides=[1, 1, 1, 1], padding="VALID"),
               kernel=3, stride=1, pad=(1, 1, 1, 1), macs=9)
    h = p.lrelu(f"{name}/dw_lrelu", p.norm(f"{name}/dw_norm", h, layer.norm_dw))
    h = p.conv(f"{name}/project", h, project.shape[3], _conv2d(project), kernel=1, stride=1, pad=(0, 0, 0, 0),
               macs=project.shape[2] * project.shape[3])
    h = p.norm(f"{name}/project_norm", h, layer.norm_project)
    return p.add(f"{name}/add", h, x)


def _emit_v2_cnl(p, name, layer, x):
    """`ConvLayerNormLReLU.call`: reflect pad (`v2_padding`), conv (stride 1 or 2), layer norm, LeakyReLU."""
    k, s = layer.kernel_size, layer.strides
    kernel = _raw(layer.kernel)
    conv = p.conv(f"{name}/conv", x, layer.filters, _conv2d(kernel, s), kernel=k, stride=s, pad=v2_padding(k, s),
                  macs=k * k * kernel.shape[2] * layer.filters)
    return p.lrelu(f"{name}/lrelu", p.norm(f"{name}/norm", conv, layer.norm, per_channel=False))


def _emit_v2_inverted_res_block(p, name, layer, x):
    """`InvertedResBlockV2.call`: 1x1 CNL, reflect pad 1 + depthwise + bias, layer norm, LeakyReLU,
    1x1 conv, layer norm, plus the input where it has 256 channels."""
    h = _emit_v2_cnl(p, f"{name}/expand", layer.expand, x)
    dw, bias, project = _raw(layer.depthwise), _raw(layer.depthwise_bias), _raw(layer.project)
    h = p.conv(f"{name}/depthwise", h, layer.hidden,
               lambda t: tf.nn.bias_add(tf.nn.depthwise_conv2d(t, dw, strides=[1, 1, 1, 1], padding="VALID"), bias),
               kernel=3, stride=1, pad=(1, 1, 1, 1), macs=10)
    h = p.lrelu(f"{name}/dw_lrelu", p.norm(f"{name}/dw_norm", h, layer.norm_dw, per_channel=False))
    h = p.conv(f"{name}/project", h, layer.filters, _conv2d(project), kernel=1, stride=1, pad=(0, 0, 0, 0),
               macs=project.shape[2] * project.shape[3])
    h = p.norm(f"{name}/project_norm", h, layer.norm_project, per_channel=False)
    return p.add(f"{name}/add", h, x) if layer.residual else h


def _emit_v2_upsample(p, name, layer, x):
    """`UpsampleV2.call`: legacy bilinear x2, then CNL."""
    return _emit_v2_cnl(p, f"{name}/conv", layer.conv, p.resize(f"{name}/resize", x, 2))


# Block class -> function(program, name, block, x) -> the block's output node.
BLOCK_EMITTERS = {
    ConvNormLReLU: _emit_conv_norm_lrelu,
    SepConvNormLReLU: _emit_sepconv,
    DownConv: _emit_down_conv,
    UpConv: _emit_up_conv,
    InvertedResBlock: _emit_inverted_res_block,
    ConvLayerNormLReLU: _emit_v2_cnl,
    InvertedResBlockV2: _emit_v2_inverted_res_block,
    UpsampleV2: _emit_v2_upsample,
}


def _scoped_program(generator):
    """v1 and v2 alike: scopes of blocks, then a 1x1 conv to 3 channels and tanh (see their `call`)."""
    p = Program()
    x = p.input
    for scope in generator.scopes:
        for i, block in enumerate(scope.blocks):
            emit = BLOCK_EMITTERS.get(type(block))
            if emit is None:
                raise NotImplementedError(f"no banded emitter for block type {type(block).__name__}")
            x = emit(p, f"{scope.name}/{i}", block, x)
    kernel = _raw(generator.out_kernel)
    x = p.conv("out/conv", x, 3, _conv2d(kernel), kernel=1, stride=1, pad=(0, 0, 0, 0),
               macs=kernel.shape[2] * kernel.shape[3])
    p.tanh("out/tanh", x)
    return p


# Generator architecture ("arch" attribute) -> function(generator) -> Program.
PROGRAM_BUILDERS = {"v1": _scoped_program, "v2": _scoped_program}


def program_of(generator):
    """The generator (built, float32) as a `Program`."""
    if not generator.built:
        generator.build()
    if generator.compute_dtype != "float32":
        raise ValueError(f"banded inference runs float32 generators, not {generator.compute_dtype}")
    arch = generator.arch
    if getattr(generator, "resize", "tf1") != "tf1":
        raise NotImplementedError(f"banded inference runs the TF1 resize, not {generator.resize!r}")
    if arch not in PROGRAM_BUILDERS:
        raise NotImplementedError(f"no banded program for generator architecture {arch!r}")
    return PROGRAM_BUILDERS[arch](generator)

