"""The AnimeGANv2 generator, as the official v2 graph builds it (2,143,552 parameters, 77 variables).

Differences from v1 (anime_gan.nets.generator): layer norm over H, W and C (eps 1e-12) instead of instance
norm, plain and strided 3x3 convolutions instead of separable and down convs, four inverted residual
blocks instead of eight, and biases in the four depthwise convolutions. Facts: docs/original.md.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.nets.layers import (
    ConvLayerNormLReLU,
    InvertedResBlockV2,
    Scope,
    UpsampleV2,
    tf1_variable_map,
    variance_scaling_init,
)

ARCH = "v2"


# How the two upsamplings resize: "tf1" is the official graph (legacy bilinear x2, output
# 4*floor(H/4) x 4*floor(W/4)); "align_corners" is the PyTorch port's default forward (bryandlee/
# animegan2-pytorch: resize to the sizes recorded on the way down, align_corners=True, so the output
# keeps the input's size), which its own weights (face_paint_512_v1/v2, celeba_distill) were trained with.
RESIZE_MODES = ("tf1", "align_corners")


class GeneratorV2(keras.Model):
    """Photo -> anime generator of AnimeGANv2. Input and output are images in [-1, 1], NHWC.

    Scopes (official names): A = CNL32 k7, CNL64 s2, CNL64; B = CNL128 s2, CNL128; C = CNL128,
    IRB r1 (128->256, no residual), r2-r4 (256->256, residual), CNL128; D = up + CNL128, CNL128;
    E = up + CNL64, CNL64, CNL32 k7; out_layer = 1x1 conv to 3 channels, tanh. The output is
    4*floor(H/4) x 4*floor(W/4). Under a mixed policy the norms and the output conv run in float32.
    """

    arch = ARCH

    def __init__(self, resize="tf1", epsilon=C.LN_EPSILON, name="generator", **kwargs):
        """`resize`: one of RESIZE_MODES; `epsilon`: the layer norms' (1e-12 official; the PyTorch
        port's GroupNorm uses 1e-5)."""
        super().__init__(name=name, **kwargs)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)} (got {resize!r}).")
        self.resize, self.epsilon = resize, float(epsilon)

        def _cnl(filters, index, kernel_size=3, strides=1):
            suffix = f"_{index}" if index else ""
            return ConvLayerNormLReLU(filters, f"Conv{suffix}", f"LayerNorm{suffix}", kernel_size, strides,
                                      epsilon=self.epsilon)

        eps = self.epsilon
        self.A = Scope("A", [_cnl(32, 0, kernel_size=7), _cnl(64, 1, strides=2), _cnl(64, 2)])
        self.B = Scope("B", [_cnl(128, 0, strides=2), _cnl(128, 1)])
        self.C = Scope("C", [
            _cnl(128, 0),
            InvertedResBlockV2("r1", hidden=256, epsilon=eps),
            *[InvertedResBlockV2(f"r{i}", hidden=512, epsilon=eps) for i in range(2, C.N_INVERTED_RESIDUAL_V2 + 1)],
            _cnl(128, 1),
        ])
        self.D = Scope("D", [UpsampleV2(128, "Conv", "LayerNorm", epsilon=eps), _cnl(128, 1)])
        self.E = Scope("E", [UpsampleV2(64, "Conv", "LayerNorm", epsilon=eps), _cnl(64, 1), _cnl(32, 2, kernel_size=7)])
        self.scopes = [self.A, self.B, self.C, self.D, self.E]

    def build(self, input_shape=(None, None, None, 3)):
        input_shape = tuple(input_shape)
        self.out_kernel = self.add_weight(
            name="out_layer_Conv_weights", shape=(1, 1, 32, 3), initializer=variance_scaling_init(32), autocast=False
        )
        super().build(input_shape)
        self(tf.zeros((1, 8, 8, input_shape[-1] or 3)))

    def options(self):
        """The constructor arguments that differ from the official network (stored with the weights)."""
        options = {}
        if self.resize != "tf1":
            options["resize"] = self.resize
        if self.epsilon != C.LN_EPSILON:
            options["epsilon"] = self.epsilon
        return options

    def call(self, x):
        x = tf.cast(x, self.A.compute_dtype)
        if self.resize == "tf1":
            for scope in self.scopes:
                x = scope(x)
        else:
            full = tf.shape(x)[1:3]
            x = self.A(x)
            half = tf.shape(x)[1:3]
            x = self.C(self.B(x))
            for scope, size in ((self.D, half), (self.E, full)):
                up, *rest = scope.blocks
                x = up(x, size=size)
                for block in rest:
                    x = block(x)
        x = tf.nn.conv2d(tf.cast(x, tf.float32), self.out_kernel, strides=1, padding="VALID")
        return tf.tanh(x)

    def tf1_variable_map(self):
        """{official variable name: our variable}, all 77 of them."""
        return tf1_variable_map(self, "out_layer/Conv/weights")
