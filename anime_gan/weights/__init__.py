"""Generator weights: from a path or a catalogue name to a ready generator, and back to files.

The door's public names (loaded on first use, so `from anime_gan.weights import catalogue` stays
TensorFlow-free to import):

- `load_generator`, `resolve_model`, `ModelSource`, `source_spec`, `convert_checkpoint` (loading:
  every form of constants.MODEL_FORMS);
- `save_generator`, `weights_file_spec` (keras_h5: our generator.weights.h5);
- `read_tf1_checkpoint`, `tf1_to_generator`, `generator_to_tf1` (tf1: official TF1 checkpoints);
- `newest_checkpoint`, `restore_training_checkpoint`, `restore_saved_model` (checkpoints: TF2);
- `ARCH_LABEL`, `tf1_arch` (arch); `convert_torch`, `load_torch_generator`, `PORT_RESIZE` (torch_port);
- `download` (install: the pretrained weights of `catalogue` into a weights folder).

Submodules import their siblings directly, never this package's names.
"""

import importlib

_EXPORTS = {
    "load_generator": "loading",
    "resolve_model": "loading",
    "ModelSource": "loading",
    "source_spec": "loading",
    "convert_checkpoint": "loading",
    "save_generator": "keras_h5",
    "weights_file_spec": "keras_h5",
    "read_tf1_checkpoint": "tf1",
    "tf1_to_generator": "tf1",
    "generator_to_tf1": "tf1",
    "newest_checkpoint": "checkpoints",
    "restore_training_checkpoint": "checkpoints",
    "restore_saved_model": "checkpoints",
    "ARCH_LABEL": "arch",
    "tf1_arch": "arch",
    "convert_torch": "torch_port",
    "load_torch_generator": "torch_port",
    "PORT_RESIZE": "torch_port",
    "download": "install",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anime_gan.weights' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted({*globals(), *_EXPORTS})
