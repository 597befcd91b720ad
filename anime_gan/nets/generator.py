"""The AnimeGAN generator, identical to the official graph (3,956,096 parameters, 129 variables)."""

from __future__ import annotations

import keras
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.nets.layers import (
    ConvNormLReLU,
    DownConv,
    InvertedResBlock,
    SepConvNormLReLU,
    Scope,
    UpConv,
    sub_layers,
    tf1_variable_map,
    xavier_init,
)


class Generator(keras.Model):
    """Photo -> anime generator. Input and output are images in [-1, 1], NHWC.

    Blocks (official scope names): b1 = Conv64, Conv64, DownConv128; b2 = Conv128, SepConv128,
    DownConv256; m = Conv256, 8 x IRB, Conv256; u2 = UpConv128, SepConv128, Conv128;
    u1 = UpConv128, Conv64, Conv64; out = 1x1 conv to 3 channels (no norm), tanh.
    Sides that are not multiples of 4 lose their last rows/columns, as in the original.
    Under a mixed precision policy the output is float32; under mixed_bfloat16 the first scope
    (b1) also computes in float32, for accuracy.
    """

    arch = "v1"

    def options(self):
        """The constructor arguments that differ from the official network: none for v1."""
        return {}

    def __init__(self, name="generator", **kwargs):
        super().__init__(name=name, **kwargs)
        self.b1 = Scope("b1", [
            ConvNormLReLU(64, "Conv", "InstanceNorm"),
            ConvNormLReLU(64, "Conv_1", "InstanceNorm_1"),
            DownConv(128, "SeparableConv2d", "SeparableConv2d_1"),
        ])
        self.b2 = Scope("b2", [
            ConvNormLReLU(128, "Conv", "InstanceNorm"),
            SepConvNormLReLU(128, "SeparableConv2d"),
            DownConv(256, "SeparableConv2d_1", "SeparableConv2d_2"),
        ])
        self.m = Scope("m", [
            ConvNormLReLU(256, "Conv", "InstanceNorm"),
            *[InvertedResBlock(f"r{i}") for i in range(1, C.N_INVERTED_RESIDUAL + 1)],
            ConvNormLReLU(256, "Conv_1", "InstanceNorm_1"),
        ])
        self.u2 = Scope("u2", [
            UpConv(128, "SeparableConv2d"),
            SepConvNormLReLU(128, "SeparableConv2d_1"),
            ConvNormLReLU(128, "Conv", "InstanceNorm"),
        ])
        self.u1 = Scope("u1", [
            UpConv(128, "SeparableConv2d"),
            ConvNormLReLU(64, "Conv", "InstanceNorm"),
            ConvNormLReLU(64, "Conv_1", "InstanceNorm_1"),
        ])
        self.scopes = [self.b1, self.b2, self.m, self.u2, self.u1]
        if self.b1.compute_dtype == "bfloat16":
            # Under mixed_bfloat16 the first scope computes in float32: rounding the full-resolution
            # input and first features to bfloat16's 8-bit mantissa is where most of the error
            # comes from (PSNR vs float32: 34.4 dB all-bfloat16, 36.6 dB with b1 in float32, at
            # 256x256), and b1 holds only ~9% of the FLOPs.
            for layer in sub_layers(self.b1):
                layer.dtype_policy = "float32"

    def build(self, input_shape=(None, None, None, 3)):
        input_shape = tuple(input_shape)
        # The output conv is the only weight held by the model itself.
        self.out_kernel = self.add_weight(
            name="Conv_weights", shape=(1, 1, 64, 3), initializer=xavier_init(), autocast=False
        )
        # Build every block by tracing a tiny input; shapes are static per channel count.
        super().build(input_shape)
        self(tf.zeros((1, 8, 8, input_shape[-1] or 3)))

    def call(self, x):
        x = tf.cast(x, self.b1.compute_dtype)
        for scope in self.scopes:
            x = scope(x)
        # The 64 -> 3 output conv is cheap; under a mixed policy it runs in float32 for accuracy.
        x = tf.nn.conv2d(tf.cast(x, tf.float32), self.out_kernel, strides=1, padding="VALID")
        return tf.tanh(x)

    def tf1_variable_map(self):
        """{official variable name: our variable}, all 129 of them."""
        return tf1_variable_map(self, "Conv/weights")
