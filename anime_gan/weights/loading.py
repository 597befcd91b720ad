"""Generator weights on disk: our Keras 3 files, training runs and checkpoints, official TF1 checkpoints.

`load_generator(path)` is the one door in. It accepts, in this order of preference:

1. a SavedModel folder (from `anime_gan.export`, `anime_gan.convert` or training): its variables;
2. a folder holding `generator.weights.h5` (`anime_gan.convert` output, `<run>/epochs/epoch_NNN`);
3. a training run folder (`--checkpoint_dir` of `anime_gan.train`): its final weights
   `generator/generator.weights.h5`, or, if the run has not finished (still running or stopped),
   the generator of the newest training checkpoint `ckpt-N` in it; a folder holding an official TF1
   checkpoint (its `checkpoint` file names it) is read the same way;
4. a training checkpoint prefix such as `<run>/ckpt-12` (TF2, object-based);
5. a `.weights.h5` file;
6. an official TF1 checkpoint prefix (`.index` + `.data-*`, name-based);
7. a `.pt` weights file of the PyTorch port of AnimeGANv2 (read without PyTorch: anime_gan.weights.torch_port).

TF2 and TF1 checkpoints are told apart by the `_CHECKPOINTABLE_OBJECT_GRAPH` entry only TF2 writes.
When a run folder or a training checkpoint is read, one line (logged, INFO; the commands show it on
stderr) says which weights were used.

Errors: PathNotFoundError (nothing at the path), ModelError (something that is not this
generator), each one sentence; a failure of another kind is a bug and is not rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re

import numpy as np
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.errors import ModelError, PathNotFoundError
from anime_gan.nets import build_generator

log = logging.getLogger(__name__)

WEIGHTS_FILENAME = "generator.weights.h5"
RUN_WEIGHTS = f"generator/{WEIGHTS_FILENAME}"  # a training run's final weights, inside its folder
SAVED_MODEL_FILENAME = "saved_model.pb"
TF2_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"  # present in TF2 (object-based) checkpoints only
ACCEPTED_FORMS = (
    "a SavedModel folder, a folder holding generator.weights.h5, a training run folder (its "
    f"{RUN_WEIGHTS}, else its newest ckpt-N), a training checkpoint prefix such as run/ckpt-12, "
    "a .weights.h5 file, an official TF1 checkpoint prefix or a .pt file of the PyTorch port"
)

# The architecture travels with the weights: our .weights.h5 files carry it as an HDF5 attribute; any
# other form (TF1 names, older files, training checkpoints, SavedModels) is told by its variables.
ARCH_ATTRIBUTE = "anime_gan_arch"
OPTIONS_ATTRIBUTE = "anime_gan_options"  # JSON of the constructor arguments that differ from the official net
ARCH_BY_VARIABLE_COUNT = {C.GENERATOR_VARIABLES: "v1", C.GENERATOR_V2_VARIABLES: "v2"}
ARCH_LABEL = {"v1": "AnimeGAN (v1)", "v2": "AnimeGANv2"}

# What reading a checkpoint or weights file raises when the file is missing, truncated or of another
# kind: TensorFlow's own errors, h5py's OSError, Keras' ValueError. Anything else is a bug.
_UNREADABLE = (tf.errors.OpError, OSError, ValueError)


def save_generator(generator, directory):
    """Writes `directory/generator.weights.h5` (atomically) and returns its path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WEIGHTS_FILENAME
    # Keras insists on the `.weights.h5` suffix, so the temporary file keeps it.
    tmp = directory / f".tmp-{os.getpid()}.{WEIGHTS_FILENAME}"
    try:
        generator.save_weights(str(tmp))
        import h5py

        with h5py.File(tmp, "a") as f:
            f.attrs[ARCH_ATTRIBUTE] = generator.arch
            options = generator.options()
            if options:
                f.attrs[OPTIONS_ATTRIBUTE] = json.dumps(options, sort_keys=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _arch_from_count(count, what):
    arch = ARCH_BY_VARIABLE_COUNT.get(count)
    if arch is None:
        raise ModelError(
            f"{what} holds {count} generator variables, which is neither AnimeGAN's "
            f"{C.GENERATOR_VARIABLES} nor AnimeGANv2's {C.GENERATOR_V2_VARIABLES}."
        )
    return arch


def tf1_arch(names):
    """"v1" or "v2" from the official variable names of a TF1 checkpoint (v1 scopes b1..u1, v2 A..E):
    whichever has more variables, so that a stray name gets its own "unexpected" message."""
    scopes = [n[len(C.TF1_SCOPE):].split("/", 1)[0] for n in names if n.startswith(C.TF1_SCOPE)]
    v2 = sum(s in ("A", "B", "C", "D", "E", "out_layer") for s in scopes)
    v1 = sum(s in ("b1", "b2", "m", "u1", "u2", "Conv") for s in scopes)
    if not v1 and not v2:
        raise ModelError("this checkpoint holds no generator/G_MODEL variables of AnimeGAN or AnimeGANv2.")
    return "v2" if v2 > v1 else "v1"


def weights_file_spec(path):
    """(architecture, generator options) of one of our .weights.h5 files: its attributes, or for a
    file without them (written before they existed) the architecture its variable count says and
    the official network's options ({})."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if ARCH_ATTRIBUTE in f.attrs:
                options = json.loads(f.attrs[OPTIONS_ATTRIBUTE]) if OPTIONS_ATTRIBUTE in f.attrs else {}
                return str(f.attrs[ARCH_ATTRIBUTE]), options
            count = []
            f.visititems(lambda _, item: count.append(1) if isinstance(item, h5py.Dataset) else None)
    except OSError as e:  # not HDF5, truncated
        raise ModelError(f"cannot load generator weights from {path}: {_first_line(e)}.") from None
    return _arch_from_count(len(count), str(path)), {}


def _counted_arch(prefix, list_name, what):
    """The architecture of a TF2 checkpoint or SavedModel from the length of its list `list_name` of
    generator variables (an entry saved elsewhere too is stored once, so the highest index counts)."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except _UNREADABLE as e:
        raise ModelError(f"cannot read {what}: {_first_line(e)}.") from None
    indices = [int(m.group(1)) for k in reader.get_variable_to_shape_map()
               if (m := re.match(re.escape(list_name) + r"/(\d+)/", k))]
    if not indices:
        return "v1"  # not one of ours: the restore that follows says so in its own words
    return _arch_from_count(max(indices) + 1, what)


def source_spec(source):
    """(architecture, generator options) of what `resolve_model` found (not a .pt file: that is
    `torch_weights`' to read), read from the files; only our .weights.h5 files carry options."""
    if source.kind == "tf1_checkpoint":
        return tf1_arch(tf.train.load_checkpoint(str(source.path)).get_variable_to_shape_map()), {}
    if source.kind == "tf2_checkpoint":
        return _counted_arch(source.path, "generator_weights", f"the training checkpoint {source.path}"), {}
    if source.kind == "saved_model":
        return _counted_arch(source.path / "variables" / "variables", "generator_variables",
                             f"the SavedModel at {source.path}"), {}
    return weights_file_spec(source.path)


def _is_tf1_prefix(path):
    return pathlib.Path(str(path) + ".index").exists()


def _first_line(error):
    text = str(getattr(error, "message", error)).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


def read_tf1_checkpoint(prefix):
    """{variable name: array} of the generator variables in a TF1 checkpoint.

    Optimizer slots and non-generator variables (a full training checkpoint also holds the
    discriminator and Adam moments) are ignored; the generator's own variables are checked
    against the official list by `tf1_to_generator`.
    """
    prefix = str(prefix)
    if not _is_tf1_prefix(prefix):
        raise PathNotFoundError(f"no TF1 checkpoint at {prefix} ({prefix}.index does not exist).")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except _UNREADABLE as e:  # a missing data shard, a corrupt index
        raise ModelError(f"cannot read the TF1 checkpoint {prefix}: {_first_line(e)}.") from None
    if reader.has_tensor(TF2_OBJECT_GRAPH):
        raise ModelError(
            f"{prefix} is a TF2 checkpoint (anime_gan.train writes these), not an official TF1 one; "
            "stylize --model, export --checkpoint_dir and anime_gan.load_generator read it as it is."
        )
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("generator/")]
    names = [n for n in names if "/Adam" not in n]
    try:
        return {n: reader.get_tensor(n) for n in names}
    except (tf.errors.OpError, IndexError) as e:  # a truncated or damaged .data shard
        raise ModelError(f"cannot read the TF1 checkpoint {prefix}: {_first_line(e)}.") from None


def tf1_to_generator(values, generator=None):
    """Sets a generator's variables from {official name: array}; refuses any mismatch by name.

    Without `generator`, one of the architecture the names say (v1 or v2) is built."""
    generator = generator or build_generator(arch=tf1_arch(values))
    if not generator.built:
        generator.build()
    mapping = generator.tf1_variable_map()
    missing = sorted(set(mapping) - set(values))
    extra = sorted(set(values) - set(mapping))
    bad_shape = sorted(
        f"{n} {tuple(values[n].shape)} (expected {tuple(mapping[n].shape)})"
        for n in set(mapping) & set(values)
        if tuple(values[n].shape) != tuple(mapping[n].shape)
    )
    if missing or extra or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        if bad_shape:
            parts.append(f"wrong shape {len(bad_shape)}: {', '.join(bad_shape[:8])}")
        label = ARCH_LABEL[generator.arch]
        raise ModelError(f"this is not an official {label} generator checkpoint: " + "; ".join(parts) + ".")
    for name, var in mapping.items():
        var.assign(np.asarray(values[name], dtype=np.float32))
    return generator


def generator_to_tf1(generator):
    """{official name: array} of our Generator: the inverse of `tf1_to_generator`."""
    return {name: np.asarray(var.numpy()) for name, var in generator.tf1_variable_map().items()}


# ---- TF2 training checkpoints and SavedModels ------------------------------------------------------
def restore_training_checkpoint(prefix, generator):
    """Sets `generator` from the generator of a TF2 checkpoint written by `anime_gan.train`.

    The training checkpoint holds G as `generator` (Keras 3 exposes only the output kernel to
    tf.train.Checkpoint this way) and every G weight once more as the flat list `generator_weights`;
    both are restored, and every one of G's variables must find its value, else ModelError.
    Optimizer slots, D, the step and the data iterator are left unread.
    """
    if not generator.built:
        generator.build()
    checkpoint = tf.train.Checkpoint(generator=generator, generator_weights=list(generator.weights))
    try:
        status = checkpoint.restore(str(prefix)).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        unmatched = re.search(r"Found (\d+) Python objects that were not bound", str(e))
        reason = (f"{unmatched.group(1)} of the generator's {len(generator.weights)} variables have no value in it"
                  if unmatched else _first_line(e)[:300])
        raise ModelError(
            f"{prefix} is a TF2 checkpoint but not one of anime_gan.train's ({reason})."
        ) from None
    return generator


def restore_saved_model(directory, generator):
    """Sets `generator` from a SavedModel written by `anime_gan.deploy.saved_model.export_saved_model`.

    The SavedModel tracks G's variables as the list `generator_variables`, in `generator.weights`
    order; they are read from its `variables/` checkpoint (its graphs are not loaded), and their
    number and shapes must be G's, else ModelError.
    """
    if not generator.built:
        generator.build()
    prefix = pathlib.Path(directory) / "variables" / "variables"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except _UNREADABLE as e:  # no variables/ folder, a missing shard
        raise ModelError(f"cannot read the variables of the SavedModel at {directory}: "
                                      f"{_first_line(e)}.") from None
    weights = generator.weights
    key = "generator_variables/{}/.ATTRIBUTES/VARIABLE_VALUE".format
    shapes = reader.get_variable_to_shape_map()
    count = sum(1 for i in range(len(weights) + 1) if key(i) in shapes)
    wrong = [i for i, w in enumerate(weights) if key(i) in shapes and tuple(shapes[key(i)]) != tuple(w.shape)]
    if count != len(weights) or wrong:
        raise ModelError(
            f"the SavedModel at {directory} was not exported by anime_gan (it holds {count} generator "
            f"variables{f', {len(wrong)} of another shape' if wrong else ''}; the generator has "
            f"{len(weights)}); pass the weights or checkpoint it was exported from."
        )
    for i, w in enumerate(weights):
        w.assign(reader.get_tensor(key(i)))
    return generator


# ---- what a path holds -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What `resolve_model` found: kind is saved_model | weights | tf2_checkpoint | tf1_checkpoint | torch.

    `note` says how a folder was resolved (empty when the path named the model itself, as the
    user expects); `load_generator` logs it.
    """

    kind: str
    path: pathlib.Path
    note: str = ""


def _checkpoint_kind(prefix):
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except _UNREADABLE as e:  # a missing data shard, a corrupt index
        raise ModelError(f"cannot read the checkpoint {prefix}: {_first_line(e)}.") from None
    if not reader.has_tensor(TF2_OBJECT_GRAPH):
        return "tf1_checkpoint", ""
    progress = []
    for name, label in (("step", "step"), ("epoch", "epochs done")):
        key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if reader.has_tensor(key):
            progress.append(f"{label} {int(reader.get_tensor(key))}")
    return "tf2_checkpoint", f" ({', '.join(progress)})" if progress else ""


def _checkpoint_number(prefix):
    match = re.search(r"-(\d+)$", prefix.name)
    return int(match.group(1)) if match else -1


def newest_checkpoint(directory):
    """The prefix of the newest checkpoint in directory (its `checkpoint` file, else the highest
    -N among the *.index files), or None."""
    directory = pathlib.Path(directory)
    try:
        latest = tf.train.latest_checkpoint(str(directory))
    except _UNREADABLE:  # an unreadable `checkpoint` file: fall back to the *.index files
        latest = None
    if latest is not None:
        return pathlib.Path(latest)
    prefixes = [p.with_suffix("") for p in directory.glob("*.index") if p.is_file()]
    if not prefixes:
        return None
    return max(prefixes, key=lambda p: (_checkpoint_number(p), pathlib.Path(str(p) + ".index").stat().st_mtime))


def resolve_model(path):
    """A ModelSource for any accepted form of path (see the module docstring), or a one-sentence
    PathNotFoundError / ModelError saying what was looked for.

    A name of the official weights (`anime_gan.pretrained.CATALOGUE`, e.g. hayao-v2) that is no path
    on disk resolves to its downloaded folder (DIR/NAME, see `anime_gan.pretrained`); before it is
    downloaded, the error names the command that downloads it."""
    name = os.fspath(path)
    path = pathlib.Path(name).expanduser()
    # A checkpoint's own file named instead of its prefix.
    match = re.fullmatch(r"(.+)\.(index|data-\d+-of-\d+)", path.name)
    if match and path.is_file():
        path = path.with_name(match.group(1))
    if path.is_dir():
        if (path / SAVED_MODEL_FILENAME).is_file():
            return ModelSource("saved_model", path)
        if (path / WEIGHTS_FILENAME).is_file():
            return ModelSource("weights", path / WEIGHTS_FILENAME)
        if (path / RUN_WEIGHTS).is_file():
            return ModelSource("weights", path / RUN_WEIGHTS,
                               f"{path} is a training run: using its final weights {path / RUN_WEIGHTS}")
        prefix = newest_checkpoint(path)
        if prefix is None:
            raise PathNotFoundError(
                f"no model in {path}: looked for {SAVED_MODEL_FILENAME}, {WEIGHTS_FILENAME}, a training run's "
                f"{RUN_WEIGHTS} and a checkpoint (a training run's ckpt-N or an official TF1 one) in it "
                "and found none."
            )
        kind, progress = _checkpoint_kind(prefix)
        note = ""
        if kind == "tf2_checkpoint":
            note = (f"{path} has no {RUN_WEIGHTS} (a run still in progress or stopped): using the generator "
                    f"of its newest training checkpoint {prefix}{progress}")
        return ModelSource(kind, prefix, note)
    if _is_tf1_prefix(path):
        kind, progress = _checkpoint_kind(path)
        note = f"using the generator of the training checkpoint {path}{progress}" if kind == "tf2_checkpoint" else ""
        return ModelSource(kind, path, note)
    if path.is_file():
        if path.name.endswith(".weights.h5"):
            return ModelSource("weights", path)
        if path.suffix in (".pt", ".pth"):
            return ModelSource("torch", path)
        raise ModelError(f"{path} is not a model file; pass {ACCEPTED_FORMS}.")
    from anime_gan import pretrained  # the catalogue of official weights, needed only here

    if name in pretrained.CATALOGUE:
        return resolve_model(pretrained.installed_folder(name))
    raise PathNotFoundError(f"no model at {path} (nothing by that name, nor {path}.index); pass {ACCEPTED_FORMS}.")


def load_generator(path, policy=None):
    """A ready Generator from any of the forms in the module docstring (a SavedModel folder, a
    weights folder, a training run folder, a training checkpoint prefix, a `.weights.h5` file or
    an official TF1 checkpoint prefix).

    `policy`: the Keras dtype policy to compute under (None: the global one); "mixed_bfloat16" is
    the fast CPU path (>= 35 dB PSNR from float32, see README "Speed"). Which weights of a training
    run were used is logged (INFO, "note: ...").
    """
    source = resolve_model(path)
    if source.kind == "torch":
        from anime_gan.weights.torch_port import load_torch_generator

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
        try:
            generator.load_weights(str(source.path))
        except _UNREADABLE as e:  # not HDF5, truncated, another model's weights
            raise ModelError(f"cannot load generator weights from {source.path}: {_first_line(e)}.") from None
    if source.note:
        log.info("note: %s.", source.note)
    return generator


def convert_checkpoint(tf1_prefix, output_dir):
    """Official TF1 checkpoint -> `output_dir/generator.weights.h5`. Returns the written path."""
    generator = tf1_to_generator(read_tf1_checkpoint(tf1_prefix))
    return save_generator(generator, output_dir)
