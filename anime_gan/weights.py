"""Generator weights on disk: our Keras 3 `.weights.h5` files and official TF1 checkpoints.

`load_generator(path)` is the one door in: a directory holding `generator.weights.h5`, a
`.weights.h5` file, or a TF1 checkpoint prefix in the official layout (`.index` + `.data-*`).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.generator import build_generator

WEIGHTS_FILENAME = "generator.weights.h5"


class CheckpointMismatchError(ValueError):
    """A TF1 checkpoint that is not the official AnimeGAN generator."""


def save_generator(generator, directory):
    """Writes `directory/generator.weights.h5` (atomically) and returns its path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WEIGHTS_FILENAME
    # Keras insists on the `.weights.h5` suffix, so the temporary file keeps it.
    tmp = directory / f".tmp-{os.getpid()}.{WEIGHTS_FILENAME}"
    generator.save_weights(str(tmp))
    os.replace(tmp, path)
    return path


def _is_tf1_prefix(path):
    return pathlib.Path(str(path) + ".index").exists()


def read_tf1_checkpoint(prefix):
    """{variable name: array} of the generator variables in a TF1 checkpoint.

    Optimizer slots and non-generator variables (a full training checkpoint also holds the
    discriminator and Adam moments) are ignored; the generator's own variables are checked
    against the official list by `tf1_to_generator`.
    """
    prefix = str(prefix)
    if not _is_tf1_prefix(prefix):
        raise FileNotFoundError(f"no TF1 checkpoint at {prefix} ({prefix}.index does not exist).")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # a missing data shard, a corrupt index
        raise CheckpointMismatchError(f"cannot read the TF1 checkpoint {prefix}: {e}") from None
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("generator/")]
    names = [n for n in names if "/Adam" not in n]
    return {n: reader.get_tensor(n) for n in names}


def tf1_to_generator(values, generator=None):
    """Sets a Generator's variables from {official name: array}; refuses any mismatch by name."""
    generator = generator or build_generator()
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
        raise CheckpointMismatchError(
            "this is not an official AnimeGAN (v1) generator checkpoint: " + "; ".join(parts) + "."
        )
    for name, var in mapping.items():
        var.assign(np.asarray(values[name], dtype=np.float32))
    return generator


def generator_to_tf1(generator):
    """{official name: array} of our Generator: the inverse of `tf1_to_generator`."""
    return {name: np.asarray(var.numpy()) for name, var in generator.tf1_variable_map().items()}


def load_generator(path, policy=None):
    """A ready Generator from a directory, a `.weights.h5` file or a TF1 checkpoint prefix.

    `policy`: the Keras dtype policy to compute under (None: the global one); "mixed_bfloat16" is
    the fast CPU path (>= 35 dB PSNR from float32, see README "Speed").
    """
    path = pathlib.Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILENAME).exists():
            path = path / WEIGHTS_FILENAME
        else:
            # A directory holding one TF1 checkpoint (e.g. the official release folder).
            latest = tf.train.latest_checkpoint(str(path))
            if latest is None:
                raise FileNotFoundError(
                    f"{path} holds neither {WEIGHTS_FILENAME} nor a TF1 checkpoint; "
                    "pass a .weights.h5 file, a checkpoint prefix or a directory with one of them."
                )
            path = pathlib.Path(latest)
    if _is_tf1_prefix(path):
        return tf1_to_generator(read_tf1_checkpoint(path), build_generator(policy))
    if not path.exists():
        raise FileNotFoundError(
            f"no generator weights at {path}; pass a .weights.h5 file, a TF1 checkpoint prefix "
            "or a directory holding generator.weights.h5."
        )
    if not str(path).endswith(".weights.h5"):
        raise ValueError(f"{path} is not a Keras weights file (expected a name ending in .weights.h5).")
    generator = build_generator(policy)
    try:
        generator.load_weights(str(path))
    except Exception as e:
        raise ValueError(f"cannot load generator weights from {path}: {e}") from None
    return generator


def convert_checkpoint(tf1_prefix, output_dir):
    """Official TF1 checkpoint -> `output_dir/generator.weights.h5`. Returns the written path."""
    generator = tf1_to_generator(read_tf1_checkpoint(tf1_prefix))
    return save_generator(generator, output_dir)
