"""The one door from a model path (or a catalogue name) to a ready generator.

`load_generator(path)` accepts, in this order of preference (constants.MODEL_FORMS):

1. a SavedModel folder (from `anime_gan.export`, `anime_gan.convert` or training): its variables;
2. a folder holding `generator.weights.h5` (`anime_gan.convert` output, `<run>/epochs/epoch_NNN`);
3. a training run folder (`--checkpoint_dir` of `anime_gan.train`): its final weights
   `generator/generator.weights.h5`, or, if the run has not finished (still running or stopped),
   the generator of the newest training checkpoint `ckpt-N` in it; a folder holding an official TF1
   checkpoint (its `checkpoint` file names it) is read the same way;
4. a training checkpoint prefix such as `<run>/ckpt-12` (TF2, object-based);
5. a `.weights.h5` file;
6. an official TF1 checkpoint prefix (`.index` + `.data-*`, name-based);
7. a `.pt` weights file of the PyTorch port of AnimeGANv2 (read without PyTorch: anime_gan.weights.torch_port);
8. a name of the weights catalogue (hayao-v2, face-paint-512-v2, ...): its downloaded folder.

When a run folder or a training checkpoint is read, one line (logged, INFO; the commands show it on
stderr) says which weights were used.

Errors: PathNotFoundError (nothing at the path), ModelError (something that is not this
generator), each one sentence; a failure of another kind is a bug and is not rewritten.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.errors import ModelError, PathNotFoundError
from anime_gan.nets import build_generator
from anime_gan.weights import catalogue
from anime_gan.weights.arch import tf1_arch
from anime_gan.weights.checkpoints import (
    checkpoint_kind,
    counted_arch,
    is_checkpoint_prefix,
    newest_checkpoint,
    restore_saved_model,
    restore_training_checkpoint,
)
from anime_gan.weights.keras_h5 import load_weights_file, save_generator, weights_file_spec
from anime_gan.weights.tf1 import read_tf1_checkpoint, tf1_to_generator
from anime_gan.weights.torch_port import load_torch_generator

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What `resolve_model` found: kind is saved_model | weights | tf2_checkpoint | tf1_checkpoint | torch.

    `note` says how a folder was resolved (empty when the path named the model itself, as the
    user expects); `load_generator` logs it.
    """

    kind: str
    path: pathlib.Path
    note: str = ""


def source_spec(source):
    """(architecture, generator options) of what `resolve_model` found (not a .pt file: that is
    `torch_port`'s to read), read from the files; only our .weights.h5 files carry options."""
    if source.kind == "tf1_checkpoint":
        return tf1_arch(tf.train.load_checkpoint(str(source.path)).get_variable_to_shape_map()), {}
    if source.kind == "tf2_checkpoint":
        return counted_arch(source.path, "generator_weights", f"the training checkpoint {source.path}"), {}
    if source.kind == "saved_model":
        return counted_arch(source.path / "variables" / "variables", "generator_variables",
                            f"the SavedModel at {source.path}"), {}
    return weights_file_spec(source.path)


def _resolve_folder(path):
    """The ModelSource of a folder: a SavedModel, our weights, a run's final weights or its newest checkpoint."""
    if (path / C.SAVED_MODEL_FILENAME).is_file():
        return ModelSource("saved_model", path)
    if (path / C.WEIGHTS_FILENAME).is_file():
        return ModelSource("weights", path / C.WEIGHTS_FILENAME)
    if (path / C.RUN_WEIGHTS).is_file():
        return ModelSource("weights", path / C.RUN_WEIGHTS,
                           f"{path} is a training run: using its final weights {path / C.RUN_WEIGHTS}")
    prefix = newest_checkpoint(path)
    if prefix is None:
        raise PathNotFoundError(
            f"no model in {path}: looked for {C.SAVED_MODEL_FILENAME}, {C.WEIGHTS_FILENAME}, a training run's "
            f"{C.RUN_WEIGHTS} and a checkpoint (a training run's ckpt-N or an official TF1 one) in it "
            "and found none."
        )
    kind, progress = checkpoint_kind(prefix)
    note = ""
    if kind == "tf2_checkpoint":
        note = (f"{path} has no {C.RUN_WEIGHTS} (a run still in progress or stopped): using the generator "
                f"of its newest training checkpoint {prefix}{progress}")
    return ModelSource(kind, prefix, note)


def resolve_model(path):
    """A ModelSource for any accepted form of path (see the module docstring), or a one-sentence
    PathNotFoundError / ModelError saying what was looked for.

    A name of the catalogue (`catalogue.CATALOGUE`, e.g. hayao-v2) that is no path on disk
    resolves to its downloaded folder (DIR/NAME, see `catalogue.installed_folder`); before it is
    downloaded, the error names the command that downloads it."""
    name = os.fspath(path)
    path = pathlib.Path(name).expanduser()
    # A checkpoint's own file named instead of its prefix.
    match = re.fullmatch(r"(.+)\.(index|data-\d+-of-\d+)", path.name)
    if match and path.is_file():
        path = path.with_name(match.group(1))
    if path.is_dir():
        return _resolve_folder(path)
    if is_checkpoint_prefix(path):
        kind, progress = checkpoint_kind(path)
        note = f"using the generator of the training checkpoint {path}{progress}" if kind == "tf2_checkpoint" else ""
        return ModelSource(kind, path, note)
    if path.is_file():
        if path.name.endswith(".weights.h5"):
            return ModelSource("weights", path)
        if path.suffix in (".pt", ".pth"):
            return ModelSource("torch", path)
        raise ModelError(f"{path} is not a model file; pass {C.ACCEPTED_FORMS}.")
    if name in catalogue.CATALOGUE:
        return resolve_model(catalogue.installed_folder(name))
    raise PathNotFoundError(f"no model at {path} (nothing by that name, nor {path}.index); pass {C.ACCEPTED_FORMS}.")


def load_generator(path, policy=None):
    """A ready Generator from any of the forms in the module docstring (a SavedModel folder, a
    weights folder, a training run folder, a training checkpoint prefix, a `.weights.h5` file, an
    official TF1 checkpoint prefix, a `.pt` file of the PyTorch port or a catalogue name), or the
    ModelSource `resolve_model` made of one (so a caller that looked first does not resolve twice).

    `policy`: the Keras dtype policy to compute under (None: the global one); "mixed_bfloat16" is
    the fast CPU path (>= 35 dB PSNR from float32, docs/benchmarks.md). Which weights of a training
    run were used is logged (INFO, "note: ...").
    """
    source = path if isinstance(path, ModelSource) else resolve_model(path)
    if source.kind == "torch":
        return load_torch_generator(source.path, policy=policy)
    arch, options = source_spec(source)
    generator = build_generator(policy, arch=arch, **options)
    if source.kind == "tf1_checkpoint":
        tf1_to_generator(read_tf1_checkpoint(source.path), generator)
    elif source.kind == "tf2_checkpoint":
        restore_training_checkpoint(source.path, generator)
    elif source.kind == "saved_model":
        restore_saved_model(source.path, generator)
    else:
        load_weights_file(source.path, generator)
    if source.note:
        log.info("note: %s.", source.note)
    return generator


def convert_checkpoint(tf1_prefix, output_dir):
    """Official TF1 checkpoint -> `output_dir/generator.weights.h5`. Returns the written path."""
    generator = tf1_to_generator(read_tf1_checkpoint(tf1_prefix))
    return save_generator(generator, output_dir)
