"""Our own weights files: `generator.weights.h5` (Keras 3 weights) with the generator's architecture
and its non-default constructor options as HDF5 attributes, so loading one needs no flag."""

from __future__ import annotations

import json
import os
import pathlib

import h5py

from anime_gan import constants as C
from anime_gan.errors import ModelError, first_line
from anime_gan.weights.arch import arch_from_count
from anime_gan.weights.checkpoints import UNREADABLE

ARCH_ATTRIBUTE = "anime_gan_arch"
OPTIONS_ATTRIBUTE = "anime_gan_options"  # JSON of the constructor arguments that differ from the official net


def save_generator(generator, directory):
    """Writes `directory/generator.weights.h5` (atomically) and returns its path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / C.WEIGHTS_FILENAME
    # Keras insists on the `.weights.h5` suffix, so the temporary file keeps it.
    tmp = directory / f".tmp-{os.getpid()}.{C.WEIGHTS_FILENAME}"
    try:
        generator.save_weights(str(tmp))
        with h5py.File(tmp, "a") as f:
            f.attrs[ARCH_ATTRIBUTE] = generator.arch
            options = generator.options()
            if options:
                f.attrs[OPTIONS_ATTRIBUTE] = json.dumps(options, sort_keys=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def weights_file_spec(path):
    """(architecture, generator options) of one of our .weights.h5 files: its attributes, or for a
    file without them (written before they existed) the architecture its variable count says and
    the official network's options ({})."""
    try:
        with h5py.File(path, "r") as f:
            if ARCH_ATTRIBUTE in f.attrs:
                options = json.loads(f.attrs[OPTIONS_ATTRIBUTE]) if OPTIONS_ATTRIBUTE in f.attrs else {}
                return str(f.attrs[ARCH_ATTRIBUTE]), options
            count = []
            f.visititems(lambda _, item: count.append(1) if isinstance(item, h5py.Dataset) else None)
    except OSError as e:  # not HDF5, truncated
        raise ModelError(f"cannot load generator weights from {path}: {first_line(e)}.") from None
    return arch_from_count(len(count), str(path)), {}


def load_weights_file(path, generator):
    """Sets `generator` (built for the file's spec) from a .weights.h5 file; ModelError if unreadable."""
    try:
        generator.load_weights(str(path))
    except UNREADABLE as e:  # not HDF5, truncated, another model's weights
        raise ModelError(f"cannot load generator weights from {path}: {first_line(e)}.") from None
    return generator
