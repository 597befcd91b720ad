"""anime_gan: a faithful TensorFlow 2 / Keras 3 reproduction of AnimeGAN.

The public names are loaded on first use, so `import anime_gan` stays cheap for the
command-line tools that only need part of the package.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Generator": "anime_gan.nets",
    "GeneratorV2": "anime_gan.nets",
    "build_generator": "anime_gan.nets",
    "Discriminator": "anime_gan.nets.discriminator",
    "load_generator": "anime_gan.weights.loading",
    "save_generator": "anime_gan.weights.loading",
    "convert_checkpoint": "anime_gan.weights.loading",
    "export_saved_model": "anime_gan.deploy.saved_model",
}

__all__ = sorted([*_EXPORTS, "stylize"])


def __getattr__(name):
    if name == "stylize":
        # anime_gan.stylize is a callable module (calling it calls stylize.stylize), so
        # `anime_gan.stylize(image)` works whether or not the submodule was imported first.
        import importlib

        return importlib.import_module("anime_gan.stylize")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anime_gan' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
