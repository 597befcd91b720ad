"""TensorFlow checkpoints: telling TF1 (name-based) from TF2 (object-based) ones, finding a folder's
newest, and restoring the generator of a training checkpoint or of a SavedModel's variables.

TF2 and TF1 checkpoints are told apart by the `_CHECKPOINTABLE_OBJECT_GRAPH` entry only TF2 writes.
"""

from __future__ import annotations

import pathlib
import re

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.errors import ModelError, first_line
from anime_gan.weights.arch import arch_from_count

TF2_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"  # present in TF2 (object-based) checkpoints only

# What reading a checkpoint or weights file raises when the file is missing, truncated or of another
# kind: TensorFlow's own errors, h5py's OSError, Keras' ValueError. Anything else is a bug.
UNREADABLE = (tf.errors.OpError, OSError, ValueError)


def is_checkpoint_prefix(path):
    """Whether `path` is the prefix of a checkpoint (TF1 or TF2): PATH.index exists."""
    return pathlib.Path(str(path) + ".index").exists()


def checkpoint_kind(prefix):
    """("tf1_checkpoint", "") or ("tf2_checkpoint", " (step N, epochs done M)"): the kind of the
    checkpoint at prefix and, for a training one, how far its run had got."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except UNREADABLE as e:  # a missing data shard, a corrupt index
        raise ModelError(f"cannot read the checkpoint {prefix}: {first_line(e)}.") from None
    if not reader.has_tensor(TF2_OBJECT_GRAPH):
        return "tf1_checkpoint", ""
    progress = []
    for name, label in (("step", "step"), ("epoch", "epochs done")):
        key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if reader.has_tensor(key):
            progress.append(f"{label} {int(reader.get_tensor(key))}")
    return "tf2_checkpoint", f" ({', '.join(progress)})" if progress else ""


def newest_checkpoint(directory):
    """The prefix of the newest checkpoint in directory (its `checkpoint` file, else the highest
    -N among the *.index files), or None."""
    directory = pathlib.Path(directory)
    try:
        latest = tf.train.latest_checkpoint(str(directory))
    except UNREADABLE:  # an unreadable `checkpoint` file: fall back to the *.index files
        latest = None
    if latest is not None:
        return pathlib.Path(latest)
    prefixes = [p.with_suffix("") for p in directory.glob("*.index") if p.is_file()]
    if not prefixes:
        return None
    return max(prefixes, key=lambda p: (C.checkpoint_number(p), pathlib.Path(str(p) + ".index").stat().st_mtime))


def counted_arch(prefix, list_name, what):
    """The architecture of a TF2 checkpoint or SavedModel from the length of its list `list_name` of
    generator variables (an entry saved elsewhere too is stored once, so the highest index counts)."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except UNREADABLE as e:
        raise ModelError(f"cannot read {what}: {first_line(e)}.") from None
    indices = [int(m.group(1)) for k in reader.get_variable_to_shape_map()
               if (m := re.match(re.escape(list_name) + r"/(\d+)/", k))]
    if not indices:
        return "v1"  # not one of ours: the restore that follows says so in its own words
    return arch_from_count(max(indices) + 1, what)


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
                  if unmatched else first_line(e)[:300])
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
    except UNREADABLE as e:  # no variables/ folder, a missing shard
        raise ModelError(f"cannot read the variables of the SavedModel at {directory}: "
                         f"{first_line(e)}.") from None
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
