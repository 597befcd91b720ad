"""Official TF1 checkpoints of AnimeGAN / AnimeGANv2: reading their generator variables, and moving
them into and out of our generator by their official names."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from anime_gan.errors import ModelError, PathNotFoundError, first_line
from anime_gan.nets import build_generator
from anime_gan.weights.arch import ARCH_LABEL, tf1_arch
from anime_gan.weights.checkpoints import TF2_OBJECT_GRAPH, UNREADABLE, is_checkpoint_prefix

_LISTED = 8  # names quoted per kind of mismatch


def read_tf1_checkpoint(prefix):
    """{variable name: array} of the generator variables in a TF1 checkpoint.

    Optimizer slots and non-generator variables (a full training checkpoint also holds the
    discriminator and Adam moments) are ignored; the generator's own variables are checked
    against the official list by `tf1_to_generator`.
    """
    prefix = str(prefix)
    if not is_checkpoint_prefix(prefix):
        raise PathNotFoundError(f"no TF1 checkpoint at {prefix} ({prefix}.index does not exist).")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except UNREADABLE as e:  # a missing data shard, a corrupt index
        raise ModelError(f"cannot read the TF1 checkpoint {prefix}: {first_line(e)}.") from None
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
        raise ModelError(f"cannot read the TF1 checkpoint {prefix}: {first_line(e)}.") from None


def _listed(label, names):
    more = " ..." if len(names) > _LISTED else ""
    return f"{label} {len(names)}: {', '.join(names[:_LISTED])}{more}"


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
            parts.append(_listed("missing", missing))
        if extra:
            parts.append(_listed("unexpected", extra))
        if bad_shape:
            parts.append(f"wrong shape {len(bad_shape)}: {', '.join(bad_shape[:_LISTED])}")
        label = ARCH_LABEL[generator.arch]
        raise ModelError(f"this is not an official {label} generator checkpoint: " + "; ".join(parts) + ".")
    for name, var in mapping.items():
        var.assign(np.asarray(values[name], dtype=np.float32))
    return generator


def generator_to_tf1(generator):
    """{official name: array} of our Generator: the inverse of `tf1_to_generator`."""
    return {name: np.asarray(var.numpy()) for name, var in generator.tf1_variable_map().items()}
