"""Bounded-memory inference: the generator run in horizontal bands, with whole-image statistics.

Why. Run whole, the generator holds several full-size maps of 64 and 128 channels at once (plus
oneDNN's reordered copies of them): about 2.7 KB of memory per input pixel (v1; 1.7 KB for v2), so
3.5 GB at 1024x1024, 12 GB at 2048x2048 and, extrapolated, 45 GB at the 4096 cap. Naive tiles
would bound that but shift colours and show seams, because every instance norm (layer norm in v2)
normalises with the statistics of the whole image.

How. The generator is read into a small program of nodes (`program_of`): reflect-padded
convolutions, the legacy bilinear resize, norms and pointwise ops, in order. A plan (`make_plan`)
picks which maps are held whole (one float32 buffer each: "stored") and which are recomputed when
needed. Each pass of the plan loops over horizontal bands of its target maps (full width) and
computes a band from the stored maps it depends on, taking from each the rows of context its
convolutions need and reflect-padding only at the image's true top and bottom, so every computed
row equals the whole-image row. A norm gets its statistics from a pass over its input map: per
band, `tf.nn.moments` (float32, as the layers take it over the whole map), merged across bands in
float64 (count, mean and sum of squared deviations; Chan, Golub and LeVeque's update), then the
layers' own `tf.nn.batch_normalization` arithmetic. The result equals the whole-image generator to
float32 rounding (the convolutions and sums run in another order on a band): within the bounds
another kernel configuration gives (tests/test_banded.py), at most 1 grey level in uint8.
Accumulating the band moments in float64 instead made the whole run 30% slower and moved the
outputs by under 1e-4 (0.01 grey level). Bands are one image at a time, so a batch costs no more
memory than one image.

The plan is the cheapest one (fewest multiply-adds, recomputation included) whose stored maps fit
a budget of bytes per input pixel; `MemoryBoundedGenerator` picks it for the largest image the model
accepts and runs small images whole, where that fits the budget anyway. Everything is TensorFlow
ops in `tf.while_loop`s over a dynamic number of bands (buffers filled in place with
`InplaceUpdate`), so the same code runs eagerly and inside the exported SavedModel's graph.

A new architecture needs a program builder (`PROGRAM_BUILDERS`) and, for a new block type, an
emitter (`BLOCK_EMITTERS`) that writes the block's ops as nodes, op for op as its `call` computes.
Heights must be multiples of 4 (`anime_gan.deploy.saved_model.generate` pads to them); widths may be anything.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from fractions import Fraction

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.nets.layers import (
    ConvNormLReLU,
    DownConv,
    InvertedResBlock,
    SepConvNormLReLU,
    UpConv,
    legacy_resize_bilinear,
)

# Tracing builds thousands of ops: AutoGraph has nothing to convert here (the loops are explicit
# tf.while_loops) and would only add seconds.
_plain_python = tf.autograph.experimental.do_not_convert

FLOAT_BYTES = 4
# A pass's band height is chosen so that its largest computed band map stays near this size; the
# working memory of a pass is a few such maps (and oneDNN's copies of them).
DEFAULT_BAND_BYTES = 48 * 2**20
# Bands are never thinner than this many rows of their target map: thinner bands recompute a
# larger share of halo rows.
MIN_BAND_ROWS = 8


# ---- the program: nodes --------------------------------------------------------------------------


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
        return _affine(a, s, -top), _affine(b, s, self.kernel - top - s)

    def compute(self, bands, a, b, stats):
        band, top, bottom = bands[0]
        _, _, left, right = self.pad
        if any(self.pad):
            zero = _k(0)
            paddings = tf.reshape(tf.stack([top, bottom, _k(left), _k(right), zero, zero]), _k((3, 2)))
            band = tf.pad(band, paddings, mode="REFLECT")
        return tf.squeeze(self.apply(tf.expand_dims(band, _k(0))), [0])


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
            two = _k(2)
            return a // two, (b - _k(1)) // two + two
        return _affine(a, 2, 0), _affine(b, 2, 0)

    def compute(self, bands, a, b, stats):
        band = tf.expand_dims(bands[0][0], _k(0))
        _, rows, cols, _ = tf.unstack(tf.shape(band))
        two = _k(2)
        if self.up:
            y = tf.squeeze(legacy_resize_bilinear(band, rows * two, cols * two), [0])
            offset = tf.math.floormod(a, two)
            return _slice_rows(y, offset, offset + (b - a))
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


# Graph size. The banded graphs are large (a loop per pass, thousands of small ops for the rows of
# each band), and every op costs time and memory where they are traced, saved and loaded (a
# SavedModel's Python loader takes ~40 KB per op). Hence: one constant per value and graph (`_k`),
# rows passed on without ops where a node is pointwise, no op for a factor of 1 or a term of 0.


_CONSTANTS = weakref.WeakKeyDictionary()  # graph -> {(value, dtype): constant}


def _k(value, dtype=tf.int32):
    """The constant `value` (an int or a tuple), one per graph being built."""
    if tf.executing_eagerly():
        return tf.constant(value, dtype)
    cache = _CONSTANTS.setdefault(tf.compat.v1.get_default_graph(), {})
    if (value, dtype) not in cache:
        with tf.control_dependencies(None):  # made outside any control-dependency scope
            cache[value, dtype] = tf.constant(value, dtype)
    return cache[value, dtype]


def _affine(x, mul, add):
    """x * mul + add."""
    if mul != 1:
        x = x * _k(mul)
    return x + _k(add) if add else x


def _slice_rows(x, lo, hi):
    """x[lo:hi] along the first of its three axes."""
    zero, all_ = _k(0), _k(-1)
    return tf.slice(x, tf.stack([lo, zero, zero]), tf.stack([hi - lo, all_, all_]))


def _raw(variable):
    # Keras 3 variables wrap a tf.Variable; tf ops read the tf.Variable directly.
    return getattr(variable, "value", variable)


# ---- the program: one emitter per block type, op for op as the block's `call` ----------------------


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


BLOCK_EMITTERS = {
    ConvNormLReLU: _emit_conv_norm_lrelu,
    SepConvNormLReLU: _emit_sepconv,
    DownConv: _emit_down_conv,
    UpConv: _emit_up_conv,
    InvertedResBlock: _emit_inverted_res_block,
}


def _emit_v2_cnl(p, name, layer, x):
    """`ConvLayerNormLReLU.call`: reflect pad (`v2_padding`), conv (stride 1 or 2), layer norm, LeakyReLU."""
    from anime_gan.nets.layers import v2_padding

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


def _register_v2_emitters():
    from anime_gan.nets.layers import ConvLayerNormLReLU, InvertedResBlockV2, UpsampleV2

    BLOCK_EMITTERS.update({
        ConvLayerNormLReLU: _emit_v2_cnl,
        InvertedResBlockV2: _emit_v2_inverted_res_block,
        UpsampleV2: _emit_v2_upsample,
    })


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
    if arch == "v2":
        _register_v2_emitters()
    if arch not in PROGRAM_BUILDERS:
        raise NotImplementedError(f"no banded program for generator architecture {arch!r}")
    return PROGRAM_BUILDERS[arch](generator)


# ---- the plan ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pass:
    """One loop over bands: computes `computed` (in order) from the stored maps `frontier`, writes the
    targets in `store` into buffers and gathers the statistics of those in `stats`."""

    targets: list
    store: list
    stats: list
    computed: list
    frontier: list

    @property
    def scale(self):
        return self.targets[0].scale

    def band_bytes_per_row(self):
        """Bytes per input column per row of the targets, of the largest map computed per band."""
        return max(float(n.channels * FLOAT_BYTES * n.scale**2 / self.scale) for n in self.computed)


@dataclasses.dataclass
class Plan:
    passes: list
    stored: frozenset
    release: list  # per pass, the stored maps no later pass reads (freed after it)
    peak_bytes_per_pixel: float  # stored maps live at once, per input pixel (input map included)
    macs_per_pixel: float  # multiply-adds per input pixel, recomputation included
    whole_macs_per_pixel: float

    @property
    def recompute_factor(self):
        return self.macs_per_pixel / self.whole_macs_per_pixel

    def describe(self):
        lines = [f"{len(self.passes)} passes, stored maps peak {self.peak_bytes_per_pixel:.0f} B per input pixel, "
                 f"{self.recompute_factor:.2f}x the whole-image multiply-adds"]
        for p in self.passes:
            what = [t.name + (" [store]" if t in p.store else "") + (" [stats]" if t in p.stats else "")
                    for t in p.targets]
            lines.append(f"  {', '.join(what)}  <- {', '.join(f.name for f in p.frontier)} ({len(p.computed)} nodes)")
        return "\n".join(lines)


def _ancestors(program):
    anc = {}
    for n in program.nodes:
        s = set()
        for i in n.inputs:
            s.add(i)
            s |= anc[i]
        anc[n] = s
    return anc


def _evaluate(program, stored, ancestors, pre_norm, macs_of, bytes_of, build=False):
    """(peak bytes per pixel, macs per pixel) of the plan that stores `stored`, and with build its
    (passes, release); macs_of / bytes_of: {node: multiply-adds / bytes per input pixel}."""
    stored = set(stored) | {program.input, program.output}
    targets = [n for n in program.nodes[1:] if n in stored or n in pre_norm]
    groups = []
    for t in targets:
        # A target joins the previous pass when it has the same resolution and needs nothing that
        # pass produces (neither its buffers nor its statistics).
        if groups and groups[-1][0].scale == t.scale and ancestors[t].isdisjoint(groups[-1]):
            groups[-1].append(t)
        else:
            groups.append([t])
    passes, macs = [], 0.0
    written, last_read = {program.input: -1}, {}
    for j, group in enumerate(groups):
        computed, frontier, stack = set(), set(), list(group)
        while stack:
            n = stack.pop()
            if n in computed or n in frontier:
                continue
            if n in stored and n not in group:
                frontier.add(n)
                continue
            computed.add(n)
            stack.extend(n.inputs)
        if build:
            order = lambda nodes: sorted(nodes, key=lambda n: n.index)  # noqa: E731
            passes.append(Pass(group, [t for t in group if t in stored], [t for t in group if t in pre_norm],
                               order(computed), order(frontier)))
        macs += sum(macs_of[n] for n in computed)
        for f in frontier:
            last_read[f] = j
        for t in group:
            if t in stored:
                written[t] = j
    # A stored map is held from the pass that writes it to the last pass that reads it.
    change = [0.0] * (len(groups) + 2)
    for s, j in written.items():
        change[j + 1] += bytes_of[s]
        change[max(j, last_read.get(s, j)) + 2] -= bytes_of[s]
    peak, live = 0.0, 0.0
    for c in change:
        live += c
        peak = max(peak, live)
    if not build:
        return peak, macs
    release = [[] for _ in passes]
    for s, j in written.items():
        if s not in (program.input, program.output):
            release[max(j, last_read.get(s, j))].append(s)
    return peak, macs, passes, release


def make_plan(program, budget_bytes_per_pixel=None):
    """The plan with the fewest multiply-adds whose stored maps fit the budget (greedy).

    Starts from storing every norm's input map and every sum (one pass per map, no recomputation);
    while the peak of the maps held at once exceeds the budget, drops the stored map that saves the
    most bytes for the least recomputation; then adds, drops or swaps single maps while that lowers
    the cost and still fits. None: no budget (store everything). ValueError if even the leanest plan
    does not fit.
    """
    ancestors = _ancestors(program)
    pre_norm = program.pre_norm_nodes()
    candidates = {n for n in program.nodes if n in pre_norm or isinstance(n, Add)} - {program.output}
    cache = {}
    macs_of = {n: float(n.macs * n.scale**2) for n in program.nodes}
    bytes_of = {n: float(n.bytes_per_pixel) for n in program.nodes}

    def cost(stored):
        key = frozenset(stored)
        if key not in cache:
            cache[key] = _evaluate(program, key, ancestors, pre_norm, macs_of, bytes_of)
        return cache[key]

    stored = set(candidates)
    peak, macs = cost(stored)
    budget = float("inf") if budget_bytes_per_pixel is None else float(budget_bytes_per_pixel)
    while peak > budget:
        best = None
        for s in sorted(stored, key=lambda n: n.index):  # a set: sorted, so that the plan is reproducible
            p2, m2 = cost(stored - {s})
            if p2 < peak:
                key = (0, (m2 - macs) / (peak - p2), m2)
            elif p2 == peak:
                key = (1, m2, 0)
            else:
                continue
            if best is None or key < best[0]:
                best = (key, s)
        if best is None:
            raise ValueError(f"no banded plan keeps the stored maps under {budget:.0f} bytes per pixel "
                             f"(the leanest found needs {peak:.0f})")
        stored.discard(best[1])
        peak, macs = cost(stored)
    # Local search: add, drop or swap one stored map while that lowers the cost within the budget.
    by_index = lambda nodes: sorted(nodes, key=lambda n: n.index)  # noqa: E731
    improved = True
    while improved:
        improved = False
        moves = [stored | {s} for s in by_index(candidates - stored)]
        moves += [stored - {s} for s in by_index(stored)]
        moves += [(stored - {s}) | {t} for s in by_index(stored) for t in by_index(candidates - stored)]
        for move in moves:
            p2, m2 = cost(move)
            if p2 <= budget and m2 < macs - 1e-9:
                stored, peak, macs = set(move), p2, m2
                improved = True
                break
    peak, macs, passes, release = _evaluate(program, stored, ancestors, pre_norm, macs_of, bytes_of, build=True)
    return Plan(passes, frozenset(stored | {program.input, program.output}), release, peak, macs,
                program.whole_macs_per_pixel())


# ---- the executor --------------------------------------------------------------------------------


def _moments(band, per_channel):
    """(count, mean, sum of squared deviations) of one band [rows, W, C], per channel or over all its
    values: `tf.nn.moments` as the whole-image norms call it (float32, two passes), in float64."""
    mean, variance = tf.nn.moments(band, [0, 1] if per_channel else [0, 1, 2])
    rows, width, channels = tf.unstack(tf.shape(band))
    count = tf.cast(rows * width if per_channel else rows * width * channels, tf.float64)
    return count, tf.cast(mean, tf.float64), tf.cast(variance, tf.float64) * count


def _merge(acc, part):
    """Chan et al.'s pairwise update of (count, mean, M2)."""
    na, ma, m2a = acc
    nb, mb, m2b = part
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + tf.square(delta) * (na * nb / n)


class BandedExecutor:
    """Runs a `Program` by a `Plan`: float32 [N, H, W, C] (H a multiple of 4) -> the program's output.

    band_bytes: the band height of each pass is chosen so that its largest band map is about this
    size; band_rows (tests): a fixed band height in rows of each pass's targets instead.
    """

    def __init__(self, program, plan, band_bytes=DEFAULT_BAND_BYTES, band_rows=None):
        self.program, self.plan = program, plan
        self.band_bytes, self.band_rows = int(band_bytes), band_rows
        self._per_channel = {n.inputs[0]: n.per_channel for n in program.nodes if isinstance(n, Norm)}
        self._norms = {}  # pre-norm map -> the norms of it
        for n in program.nodes:
            if isinstance(n, Norm):
                self._norms.setdefault(n.inputs[0], []).append(n)

    @_plain_python
    def __call__(self, x):
        """A batch, one image at a time."""
        x = tf.convert_to_tensor(x, tf.float32)
        shape = tf.shape(x)
        out = self.program.output
        sizes = _Sizes(shape[1], shape[2])
        y = tf.raw_ops.Empty(shape=tf.stack([shape[0], sizes.height(out), sizes.width(out), out.channels]),
                             dtype=tf.float32)
        return for_each_image(x, y, lambda image: self.run_one(image[tf.newaxis])[0])

    @_plain_python
    def run_one(self, x):
        """One image as a batch: float32 [1, H, W, C] -> [1, H', W', C'] (no loop over images, which
        would nest every pass's loop one level deeper in the graph)."""
        x = tf.convert_to_tensor(x, tf.float32)
        check = tf.debugging.assert_equal(
            tf.shape(x)[1] % C.GENERATOR_STRIDE, 0,
            message=f"banded inference needs a height that is a multiple of {C.GENERATOR_STRIDE}")
        with tf.control_dependencies([check]):
            return self.run_image(x[0])[tf.newaxis]

    @_plain_python
    def run_image(self, image):
        """float32 [H, W, C] -> the output map [H', W', C'] of one image."""
        shape = tf.shape(image)
        sizes = _Sizes(shape[0], shape[1])
        buffers = {self.program.input: image}
        stats = {}
        rows = {}
        done = tf.constant(0)
        for p, release in zip(self.plan.passes, self.plan.release):
            # In a graph the buffers of every pass could be allocated at once (their shapes are known
            # from the start): each pass's allocations wait for the previous pass instead.
            with tf.control_dependencies([done]):
                done = self._run_pass(p, buffers, stats, sizes, self._rows(p, shape[1], rows))
            for s in release:  # frees the memory now in eager mode; the graph frees it by itself
                del buffers[s]
        return buffers[self.program.output]

    def _rows(self, p, width, cache):
        """Band height of pass p in rows of its targets (memoized per bytes-per-row in `cache`)."""
        if self.band_rows is not None:
            return tf.constant(int(self.band_rows))
        per_column = p.band_bytes_per_row()
        if per_column not in cache:
            rows = (self.band_bytes // int(per_column)) // tf.maximum(width, 1)
            cache[per_column] = tf.maximum(rows, MIN_BAND_ROWS)
        return cache[per_column]

    def _run_pass(self, p, buffers, stats, sizes, rows):
        for n in p.computed:  # sizes are built here, outside the loop body, where every pass can use them
            for i in n.inputs:
                sizes.height(i)
        height = sizes.height(p.targets[0])
        count = (height + rows - 1) // rows
        output = self.program.output
        # The output is one buffer filled in place; other stored maps are kept as chunks of one band
        # each, all of a size: the CPU allocator oneDNN builds use (a BFC allocator) keeps freed memory
        # for reuse, which band-sized chunks get and maps of many sizes, each in one piece, did not
        # (at 3072^2 the process grew by 3 GB more than the maps it held).
        bufs = [tf.raw_ops.Empty(shape=tf.stack([sizes.height(t), sizes.width(t), t.channels]), dtype=tf.float32)
                if t is output else
                tf.TensorArray(tf.float32, size=count, element_shape=tf.TensorShape([None, None, t.channels]))
                for t in p.store]
        accs = [tuple(tf.zeros([t.channels] if self._per_channel[t] else [], tf.float64) if k else
                      tf.constant(0.0, tf.float64) for k in range(3)) for t in p.stats]

        @_plain_python
        def body(i, bufs, accs):
            a = i * rows
            b = tf.minimum(a + rows, height)
            values = self._band(p, a, b, buffers, stats, sizes)
            bufs = [tf.raw_ops.InplaceUpdate(x=buf, i=tf.range(a, b), v=values[t]) if t is output else
                    buf.write(i, _pad_rows(values[t], a + rows - b))  # the last one padded
                    for buf, t in zip(bufs, p.store)]
            accs = [_merge(acc, _moments(values[t], self._per_channel[t])) for acc, t in zip(accs, p.stats)]
            return i + 1, bufs, accs

        done, bufs, accs = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(0), bufs, accs),
                                         parallel_iterations=1)
        buffers.update((t, buf if t is output else _Chunks(buf, rows)) for t, buf in zip(p.store, bufs))
        for t, (n, mean, m2) in zip(p.stats, accs):
            for norm in self._norms[t]:
                stats[norm] = norm.scale_and_shift(tf.cast(mean, tf.float32), tf.cast(m2 / n, tf.float32))
        return done

    def _band(self, p, a, b, buffers, stats, sizes):
        """{target: its rows [a, b)} computed from the stored maps.

        Rows are tracked as (start, stop) pairs of scalar tensors; a pointwise node passes its pair
        on as the same objects, so that no op is built for it (tracing time is op count).
        """
        need = {t: (a, b) for t in p.targets}
        wants = {}  # (node, input position) -> (rows it needs of that input, the same clipped to the map)
        for n in reversed(p.computed):
            rows = need[n] if n.pointwise else n.input_rows(*need[n])
            for k, i in enumerate(n.inputs):
                clipped = rows if n.pointwise else (tf.maximum(rows[0], _k(0)), tf.minimum(rows[1], sizes.height(i)))
                wants[n, k] = rows, clipped
                need[i] = clipped if i not in need else _union(need[i], clipped)
        values = {f: _read_rows(buffers[f], *need[f]) for f in p.frontier}
        last_use = {}
        for k, n in enumerate(p.computed):
            for i in n.inputs:
                last_use[i] = k
        for k, n in enumerate(p.computed):
            bands = []
            for j, i in enumerate(n.inputs):
                (lo, hi), (clo, chi) = wants[n, j]
                have = need[i]
                if clo is have[0] and chi is have[1]:
                    band = values[i]
                else:
                    band = _slice_rows(values[i], clo - have[0], chi - have[0])
                bands.append((band, 0, 0) if n.pointwise else (band, clo - lo, hi - chi))
            values[n] = n.compute(bands, need[n][0], need[n][1], stats)
            for i in n.inputs:
                if last_use[i] == k and i not in p.targets:
                    del values[i]
        return values


class _Chunks:
    """A stored map as a TensorArray of chunks of `rows` rows each (the last one padded)."""

    def __init__(self, array, rows):
        self.array, self.chunk = array, rows

    def read(self, lo, hi):
        """Rows [lo, hi) as one tensor (a copy of just those chunks)."""
        first = lo // self.chunk
        stacked = self.array.gather(tf.range(first, (hi - _k(1)) // self.chunk + _k(1)))
        _, _, width, channels = tf.unstack(tf.shape(stacked))
        rows = tf.reshape(stacked, tf.stack([_k(-1), width, channels]))
        start = lo - first * self.chunk
        return _slice_rows(rows, start, start + (hi - lo))


def _read_rows(stored, lo, hi):
    return stored.read(lo, hi) if isinstance(stored, _Chunks) else _slice_rows(stored, lo, hi)


class _Sizes:
    """Heights and widths of the maps of one image as scalar tensors, built on first use only (a
    pointwise node shares its input's)."""

    def __init__(self, height, width):
        self._memo = {"height": {}, "width": {}}
        self._base = {"height": height, "width": width}

    def _get(self, which, n):
        memo = self._memo[which]
        if n not in memo:
            if not n.inputs:
                memo[n] = self._base[which]
            elif n.pointwise:
                memo[n] = self._get(which, n.inputs[0])
            else:
                memo[n] = getattr(n, which)(self._get(which, n.inputs[0]))
        return memo[n]

    def height(self, n):
        return self._get("height", n)

    def width(self, n):
        return self._get("width", n)


def _pad_rows(x, count):
    """x with `count` rows of zeros below."""
    zero = _k(0)
    return tf.pad(x, tf.reshape(tf.stack([zero, count, zero, zero, zero, zero]), _k((3, 2))))


def _union(x, y):
    if x[0] is y[0] and x[1] is y[1]:
        return x
    return tf.minimum(x[0], y[0]), tf.maximum(x[1], y[1])


@_plain_python
def for_each_image(x, y, run_image):
    """y[i] = run_image(x[i]) for each image, one at a time, written into the preallocated y."""

    @_plain_python
    def body(i, y):
        return i + 1, tf.raw_ops.InplaceUpdate(x=y, i=i[tf.newaxis], v=run_image(x[i])[tf.newaxis])

    _, y = tf.while_loop(lambda i, y: i < tf.shape(x)[0], body, (tf.constant(0), y), parallel_iterations=1)
    return y


# ---- the memory bound ----------------------------------------------------------------------------

# Working memory (peak RSS above the process's baseline) per input pixel of the whole-image
# generator, float32 with oneDNN (TF 2.21's default on x86): measured 2730 (v1) and 1490-1650 (v2)
# with tools/measure_inference_memory.py at 512^2 and 1024^2, plus margin.
WHOLE_IMAGE_BYTES_PER_PIXEL = {"v1": 2900, "v2": 1800}
# Around the banded generator: the serving graph's own copies of the image (uint8 and float32, in
# and out) per input pixel, and the band loops' working memory (a few band maps, oneDNN's copies of
# them, allocator slack); measured the same way.
OVERHEAD_BYTES_PER_PIXEL = 40
BAND_WORKING_BYTES = 640 * 2**20
# Plans are made for this share of the budget: the model above predicts the working memory of
# banded runs to within 1% (measured at 3072^2, 3680^2 and 4096^2); the rest is margin.
PLANNING_FRACTION = 0.95
# The default bound on the working memory of one request, whatever its size up to the cap.
DEFAULT_MEMORY_BUDGET = 6 * 2**30
# Besides the plan for the largest image, plans for images up to these fractions of its area (each
# is another traced graph; a smaller image affords more stored maps, so less recomputation).
DEFAULT_TIER_FRACTIONS = (0.75,)


# generator -> {arguments: what `_build_tiers` returns}: the banded graphs are traced once per process
# however many serving modules wrap the generator. The values hold the generator's variables, not
# the generator, so the entry goes with it.
_BUILT = weakref.WeakKeyDictionary()


def _build_tiers(generator, max_side, memory_budget, band_bytes, tier_fractions, whole_pixels, band_rows):
    """(program, whole_pixels, [(largest H*W, plan)] cheapest plan first, [banded tf.function])."""
    program = program_of(generator)
    if whole_pixels is None:
        whole_pixels = memory_budget // WHOLE_IMAGE_BYTES_PER_PIXEL[generator.arch]
    cap = max_side**2
    if cap <= whole_pixels:  # every image the model accepts runs whole: no banded graph to build
        return program, int(whole_pixels), [], []
    banded_budget = memory_budget * PLANNING_FRACTION - BAND_WORKING_BYTES
    tiers = []
    for fraction in sorted(set(tier_fractions) | {1.0}):
        pixels = int(cap * fraction)
        if pixels <= whole_pixels and fraction < 1:
            continue
        plan = make_plan(program, banded_budget / pixels - OVERHEAD_BYTES_PER_PIXEL)
        fits = int(banded_budget // (plan.peak_bytes_per_pixel + OVERHEAD_BYTES_PER_PIXEL))
        if tiers and plan.stored == tiers[-1][1].stored:
            tiers.pop()
        tiers.append((cap if fraction == 1 else max(pixels, min(fits, cap)), plan))
    # Each banded graph is its own function, left un-inlined: a process instantiates it only when an
    # image needs it (inlined, every first call would pay for all of them).
    functions = [_TracedOnce(BandedExecutor(program, plan, band_bytes, band_rows).run_one, program.input.channels,
                             noinline=True) for _, plan in tiers]
    return program, int(whole_pixels), tiers, functions


class _TracedOnce:
    """fn as a tf.function of float32 [N, H, W, channels], traced once however it is called later:
    from other graphs, and in `tf.saved_model.save`'s context, which would trace a tf.function again
    (and store its graph twice)."""

    def __init__(self, fn, channels, noinline=False):
        self.function = tf.function(fn, input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)],
                                    autograph=False, experimental_attributes={"_noinline": True} if noinline else None)
        self._concrete = None

    def __call__(self, x):
        if self._concrete is None:
            self._concrete = self.function.get_concrete_function()
        return self._concrete(x)


class MemoryBoundedGenerator:
    """The generator with its working memory bounded: float32 [N, H, W, C] (H a multiple of 4) ->
    the generator's output, equal to it to float32 rounding (see the module docstring).

    A batch whose N*H*W pixels fit the budget when run whole runs whole (the generator itself, the
    fastest); else each image runs alone, whole if it fits, else banded by the cheapest plan whose
    stored maps fit the budget for its size. The plans are made for images up to max_side x
    max_side; `describe()` lists them.
    """

    def __init__(self, generator, max_side=C.DEFAULT_MAX_SIDE, memory_budget=DEFAULT_MEMORY_BUDGET,
                 band_bytes=DEFAULT_BAND_BYTES, tier_fractions=DEFAULT_TIER_FRACTIONS, whole_pixels=None,
                 band_rows=None):
        """memory_budget: bytes of working memory (peak RSS above the process's baseline) one request
        may use. whole_pixels (tests): run whole up to this many pixels instead of what fits the
        budget; band_rows (tests): fixed band heights (see `BandedExecutor`)."""
        self.generator = generator
        self.memory_budget = int(memory_budget)
        key = (int(max_side), self.memory_budget, int(band_bytes), tuple(tier_fractions), whole_pixels, band_rows)
        built = _BUILT.setdefault(generator, {})
        if key not in built:
            built[key] = _build_tiers(generator, *key)
        self.program, self.whole_pixels, self.tiers, self._banded = built[key]
        # The generator as one function, so that its graph is stored once however often it is called.
        self._whole = _TracedOnce(generator, self.program.input.channels)

    def describe(self):
        lines = [f"memory budget {self.memory_budget / 2**30:.2f} GiB: whole-image up to {self.whole_pixels} pixels"]
        for (pixels, plan) in self.tiers:
            lines.append(f"banded up to {pixels} pixels: {plan.describe().splitlines()[0]}")
        return "\n".join(lines)

    def runs_whole(self, count, height, width):
        """Whether a batch of `count` images of height x width (Python ints, before the padding to
        multiples of 4) runs whole, as one batch: a caller may then run a plain graph of the
        generator instead, which never builds or instantiates the banded graphs."""
        stride = C.GENERATOR_STRIDE
        return count * (-(-height // stride) * stride) * (-(-width // stride) * stride) <= self.whole_pixels

    @_plain_python
    def __call__(self, x):
        x = tf.convert_to_tensor(x, tf.float32)
        shape = tf.shape(x)
        pixels = shape[1] * shape[2]

        def one_by_one():
            out = self.program.output
            sizes = _Sizes(shape[1], shape[2])
            y = tf.raw_ops.Empty(shape=tf.stack([shape[0], sizes.height(out), sizes.width(out), out.channels]),
                                 dtype=tf.float32)
            return for_each_image(x, y, lambda image: self._single(image[tf.newaxis], pixels)[0])

        return tf.cond(shape[0] * pixels <= self.whole_pixels, lambda: self._whole(x), one_by_one)

    def _single(self, x, pixels):
        """One image [1, H, W, C]: whole if it fits, else the first banded tier that fits."""
        branch = lambda: self._whole(x)  # noqa: E731
        conditions = [pixels <= self.whole_pixels]
        branches = [branch]
        for (limit, _), banded in zip(self.tiers, self._banded):
            conditions.append(pixels <= limit)
            branches.append(functools.partial(banded, x))
        # The last tier covers everything up to the cap (larger images are refused before this).
        result = branches[-1]
        for condition, branch in reversed(list(zip(conditions[:-1], branches[:-1]))):
            result = functools.partial(tf.cond, condition, branch, result)
        return result()


def memory_bounded(generator, max_side=C.DEFAULT_MAX_SIDE, memory_budget=DEFAULT_MEMORY_BUDGET):
    """What `anime_gan.deploy.saved_model.generate` should run: a `MemoryBoundedGenerator`, or the generator
    itself where banded inference does not apply (a v2 generator in the PyTorch port's
    align-corners resize mode, whose memory is then not bounded)."""
    try:
        program_of(generator)
    except NotImplementedError:
        return generator
    return MemoryBoundedGenerator(generator, max_side=max_side, memory_budget=memory_budget)
