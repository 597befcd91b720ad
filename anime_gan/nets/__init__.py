"""The networks: the generators (v1 AnimeGAN, v2 AnimeGANv2), the discriminator and VGG19, built from
`layers`. This module is the registry of generator architectures: `generator_class`, `build_generator`."""

from __future__ import annotations

import keras

from anime_gan import constants as C
from anime_gan.nets.generator import Generator
from anime_gan.nets.generator_v2 import GeneratorV2

__all__ = ["Generator", "GeneratorV2", "generator_class", "build_generator"]


def generator_class(arch="v1"):
    """The Keras model class of an architecture: "v1" (AnimeGAN) or "v2" (AnimeGANv2)."""
    if arch == "v1":
        return Generator
    if arch == "v2":
        return GeneratorV2
    raise ValueError(f"unknown generator architecture {arch!r}; choose one of {', '.join(C.ARCHITECTURES)}.")


def build_generator(policy=None, arch="v1", **options):
    """A built generator of architecture `arch` whose layers compute under the Keras dtype policy `policy`.

    `options` go to the architecture's constructor (v2: resize, epsilon; see `GeneratorV2`).

    `policy` is e.g. "float32", "mixed_bfloat16" (the fast CPU path) or "mixed_float16"; None means
    the global policy. Sub-layers take the global policy when they are created, so it is set for the
    construction only and restored afterwards.
    """
    cls = generator_class(arch)
    if policy is None:
        generator = cls(**options)
        generator.build()
        return generator
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        generator = cls(**options)
        generator.build()
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return generator
