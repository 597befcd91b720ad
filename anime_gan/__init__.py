"""anime_gan: a faithful TensorFlow 2 / Keras 3 reproduction of AnimeGAN."""

__version__ = "0.1.0"

from anime_gan.generator import Generator  # noqa: E402,F401
