"""anime_gan: a faithful TensorFlow 2 / Keras 3 reproduction of AnimeGAN and AnimeGANv2.

Rooms, top down (arrows point down only):

    train stylize export convert pretrained app runtimes   commands: flags + main(), one call below
    web/        the local page (Flask) over `inference`
    inference/  load a model in any runtime; stylize one image, files, folders, videos
    training/   configuration, the GAN's train_step, losses, tf.data, the loop, checkpoints, run files
    deploy/     the served function, bounded-memory bands, SavedModel, ONNX, TFLite
    weights/    one door from a path or catalogue name to a generator; TF1, .weights.h5, the PyTorch port
    nets/       layers, the v1 and v2 generators, the discriminator, VGG19
    constants errors image_io cli                         facts, the error family, image files, how commands run

The public names below are loaded on first use, so `import anime_gan` stays cheap for the commands
that only need part of the package.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Generator": "anime_gan.nets",
    "GeneratorV2": "anime_gan.nets",
    "build_generator": "anime_gan.nets",
    "Discriminator": "anime_gan.nets.discriminator",
    "load_generator": "anime_gan.weights",
    "save_generator": "anime_gan.weights",
    "convert_checkpoint": "anime_gan.weights",
    "load_model": "anime_gan.inference",
    "export_saved_model": "anime_gan.deploy.saved_model",
}

__all__ = sorted([*_EXPORTS, "stylize"])


def __getattr__(name):
    import importlib

    if name == "stylize":
        # Importing the command module `anime_gan.stylize` sets this attribute to it, so it is callable
        # (calling it calls `anime_gan.inference.stylize`): `anime_gan.stylize(image)` works either way.
        return importlib.import_module("anime_gan.stylize")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anime_gan' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
