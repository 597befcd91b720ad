"""A training run's checkpoints: which one to resume from, what a killed run left, a full disk.

`tf.train.Checkpoint` holds G, D, the three optimizers (slots, iteration counts, loss scale), the
global step, the epoch, the phase, the step's random generator and the input iterator (its position,
shuffle order and crop seeds); `make_checkpoint` builds it. TensorFlow writes its data under a
temporary name and the CheckpointManager then replaces its `checkpoint` index atomically.

`find_resume_checkpoint` picks the newest checkpoint that restores and verifies (`checkpoint_problem`:
every tensor reads back against the CRC32C stored in its index, every float is finite). A newer
checkpoint that does not verify is skipped with a warning saying why: removed if the `checkpoint`
index does not list it (a write the kill cut short), else moved to damaged/. A folder that holds
checkpoints is never trained over from step 0 unless --restart says so. `remove_leftovers` removes
what a killed run leaves (TensorFlow's ckpt-N_temp/ folders and index temporaries, our .tmp-*
files); `discard_partial_checkpoint` cleans up after a write a full disk cut short (`is_disk_full`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil

import numpy as np
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.constants import checkpoint_number
from anime_gan.errors import OutputExistsError, TrainingStopped, first_line
from anime_gan.training.run_logs import LOSS_PLOT_FILE, METRICS_FILE

__all__ = ["CHECKPOINT_INDEX", "DAMAGED_DIR", "DiskFullError", "checkpoint_problem", "discard_partial_checkpoint",
           "find_resume_checkpoint", "is_disk_full", "make_checkpoint", "remove_leftovers", "remove_tmp_files"]
logger = logging.getLogger(__name__)

CHECKPOINT_INDEX = "checkpoint"  # the CheckpointManager's list of its checkpoints
DAMAGED_DIR = "damaged"  # where checkpoints that fail verification are moved
_CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d{5}-of-\d{5})")


class DiskFullError(TrainingStopped):
    """The disk filled up while the run wrote a checkpoint, weights or a log."""


def make_checkpoint(model, iterator, step, epoch, phase) -> tf.train.Checkpoint:
    """The checkpoint of a run: the model's nets, optimizers and random generator, the input
    iterator and the step, epoch and phase variables."""
    return tf.train.Checkpoint(
        generator=model.generator, discriminator=model.discriminator,
        init_optimizer=model.init_optimizer, g_optimizer=model.g_optimizer, d_optimizer=model.d_optimizer,
        step=step, epoch=epoch, phase=phase, rng=model.rng, iterator=iterator,
        # Every weight of G and D once more, as flat lists: tf.train.Checkpoint does not see layers
        # kept in a list of tuples (the discriminator's stages), so without these the spectral-norm
        # u of those convolutions would be left out (the kernels reach the checkpoint through the
        # optimizers) and a resumed run would drift from an uninterrupted one.
        generator_weights=list(model.generator.weights), discriminator_weights=list(model.discriminator.weights),
    )


# ---- verifying ------------------------------------------------------------------------------------
def checkpoint_problem(prefix) -> str | None:
    """Why the checkpoint at prefix cannot be resumed from, or None when it can: its index must read,
    every tensor it lists must read back whole (TensorFlow checks each against the CRC32C the index
    stores) and every float tensor must be finite. Reads the whole checkpoint once (~80 MB for the
    original's nets with their Adam moments: about 0.3 s) and restores nothing."""
    prefix = str(prefix)
    if not os.path.exists(prefix + ".index"):
        return "its .index file is missing"
    try:
        dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    except Exception as e:  # noqa: BLE001 - any failure to read it is the answer
        return f"its .index file does not read ({_tf_error_words(e)})"
    names = sorted(dtypes)
    try:
        # One op for all tensors, variants (the input iterator's state) included.
        values = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                                      dtypes=[dtypes[n] for n in names])
    except Exception as e:  # noqa: BLE001
        return f"its data does not read back ({_tf_error_words(e)})"
    for name, value in zip(names, values):
        if value.dtype.is_floating and not np.isfinite(value.numpy()).all():
            return f"{name.split('/.ATTRIBUTES')[0]} holds NaN or infinite values"
    return None


def _tf_error_words(error) -> str:
    """A TensorFlow read error in a few plain words (its own text has braces, ops and 'vs.')."""
    text = first_line(error)
    for words, phrase in (("Checksum does not match", "a checksum does not match"),
                          ("Read less bytes than requested", "the file is truncated"),
                          ("checksum mismatch", "a checksum does not match"),
                          ("No such file", "a file is missing"), ("not found", "a file is missing")):
        if words.lower() in text.lower():
            return phrase
    text = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", text)
    return text.replace("vs. ", "versus ")


def _checkpoint_files(directory) -> dict[int, list[str]]:
    """{N: paths of ckpt-N's .index and .data files} in directory."""
    found = {}
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        match = _CHECKPOINT_FILE.fullmatch(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(os.path.join(directory, name))
    return found


def _listed_checkpoints(directory) -> tuple[list[int], int] | None:
    """(the checkpoint numbers the `checkpoint` index lists, its latest), or None when the index is
    missing or unreadable."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - a torn or edited index: treat as missing
        return None
    if state is None:
        return None
    return ([checkpoint_number(p) for p in state.all_model_checkpoint_paths],
            checkpoint_number(state.model_checkpoint_path))


# ---- choosing where to resume ---------------------------------------------------------------------
def find_resume_checkpoint(directory, *, tidy, restart=False, final_weights=None) -> str | None:
    """The prefix of the newest checkpoint in directory that restores and verifies
    (`checkpoint_problem`), or None to start at step 0.

    Checkpoints are found by their files, not through the `checkpoint` index (which a kill or a
    user may have removed). Each newer one that fails is skipped with a warning naming it and why.
    With tidy (the chief), it is removed when the index does not list it (a write or a deletion a
    kill cut short) or else moved to damaged/, and the index is rewritten to list the checkpoints
    kept. When the folder holds checkpoints (or final_weights, a finished run's weights) but none
    verifies, raises OutputExistsError rather than train over them from step 0; restart=True
    removes the checkpoints instead (tidy) and starts over.
    """
    found = _checkpoint_files(directory)
    if restart:
        if tidy and found:
            _remove_all_checkpoints(directory, found)
        return None
    chosen, skipped = None, []
    for number in sorted(found, reverse=True):
        problem = checkpoint_problem(os.path.join(directory, f"ckpt-{number}"))
        if problem is None:
            chosen = number
            break
        skipped.append((number, problem))
    if chosen is None and (found or (final_weights and os.path.exists(final_weights))):
        what = "; ".join(f"ckpt-{n}: {p}" for n, p in skipped) if skipped else f"only the final weights {final_weights}"
        raise OutputExistsError(
            f"{directory} holds a training run but no checkpoint to resume from ({what}); pass --restart to "
            f"train from step 0 over it, or another --checkpoint_dir.")
    listed = _listed_checkpoints(directory)
    for number, problem in skipped:
        done = _discard_checkpoint(directory, number, found[number], listed) if tidy else "left in place"
        logger.warning(f"Skipped ckpt-{number}, newer than ckpt-{chosen}: {problem}; {done}.")
    if chosen is None:
        return None
    prefix = os.path.join(directory, f"ckpt-{chosen}")
    if tidy:
        _tidy_older_checkpoints(directory, found, chosen, listed)
    return prefix


def _remove_all_checkpoints(directory, found) -> None:
    """--restart: removes every checkpoint in directory and the `checkpoint` index."""
    for files in found.values():
        for path in files:
            os.remove(path)
    index = os.path.join(directory, CHECKPOINT_INDEX)
    if os.path.exists(index):
        os.remove(index)
    logger.info(f"--restart: removed the {len(found)} checkpoints in {directory}; training starts at step 0.")


def _discard_checkpoint(directory, number, files, listed) -> str:
    """Removes ckpt-N (its files) when the `checkpoint` index does not list it, i.e. when it is what
    a killed write or deletion left; otherwise moves it to damaged/. Returns what was done."""
    name = f"ckpt-{number}"
    if listed is not None and number not in listed[0]:
        for path in files:
            os.remove(path)
        return f"removed {name}, left incomplete by an interrupted run"
    damaged = os.path.join(directory, DAMAGED_DIR)
    os.makedirs(damaged, exist_ok=True)
    for path in files:
        os.replace(path, os.path.join(damaged, os.path.basename(path)))
    return f"moved {name} to {damaged}"


def _tidy_older_checkpoints(directory, found, chosen, listed) -> None:
    """Discards the checkpoints older than ckpt-`chosen` that lack their .index (a deletion a kill cut
    short: they can never be restored) and makes the `checkpoint` index list what is kept."""
    kept = []
    for number in sorted(n for n in found if n < chosen):
        if any(p.endswith(".index") for p in found[number]):
            kept.append(number)
        else:
            _discard_checkpoint(directory, number, found[number], listed)
    # The CheckpointManager rotates (keeps max_to_keep of) what this index lists: make it list
    # what is here. It only ever deletes checkpoints stamped later than last_preserved_timestamp,
    # so each gets its file's time and that mark goes below them all.
    if listed != (kept + [chosen], chosen):
        from tensorflow.python.checkpoint import checkpoint_management  # the public alias is deprecated

        paths = [os.path.join(directory, f"ckpt-{n}") for n in kept + [chosen]]
        stamps = [os.path.getmtime(p + ".index") for p in paths]
        checkpoint_management.update_checkpoint_state_internal(
            directory, paths[-1], all_model_checkpoint_paths=paths, all_model_checkpoint_timestamps=stamps,
            last_preserved_timestamp=min(stamps) - 1, save_relative_paths=True)


# ---- what a killed run left, a full disk --------------------------------------------------------
def remove_leftovers(cfg) -> list[str]:
    """Removes what a killed run leaves behind (we hold the folder's lock, so no writer is using
    them): TensorFlow's ckpt-N_temp/ staging folders and `checkpoint.tmp*` index temporaries, the
    SavedModel export's staging folders, the .tmp-* files of our atomic weight and image writes and
    the metrics/plot temporaries. Returns the paths removed."""
    removed = []

    def remove(path):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        removed.append(path)

    def matching(directory, test):
        return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if test(n)] \
            if os.path.isdir(directory) else []

    top = cfg.checkpoint_dir
    for path in matching(top, lambda n: (re.fullmatch(r"ckpt-\d+_temp", n) or n.startswith(CHECKPOINT_INDEX + ".tmp")
                                         or n.startswith(".saved_model_tmp_"))):
        remove(path)
    for name in (METRICS_FILE + ".tmp", LOSS_PLOT_FILE + ".tmp.png"):  # run_logs' temporaries
        if os.path.exists(os.path.join(cfg.log_dir, name)):
            remove(os.path.join(cfg.log_dir, name))
    epoch_dirs = matching(os.path.join(top, "epochs"), lambda n: True)
    for directory in [os.path.join(top, os.path.dirname(C.RUN_WEIGHTS)), cfg.sample_dir, *epoch_dirs]:
        removed += remove_tmp_files(directory)
    return removed


def remove_tmp_files(directory) -> list[str]:
    """Removes the .tmp-* files interrupted atomic writes (weights.save_generator, image_io.write_image)
    left in directory; returns their paths."""
    removed = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.startswith(".tmp-"):
                removed.append(os.path.join(directory, name))
                os.remove(removed[-1])
    return removed


def is_disk_full(error) -> bool:
    """Whether an exception from a write means the disk (or the user's quota) is full: Python's
    OSError(ENOSPC/EDQUOT), TensorFlow's ResourceExhaustedError (its file system maps ENOSPC to it),
    or a library's error saying so in words (h5py)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def discard_partial_checkpoint(directory, number) -> str | None:
    """After a failed write of ckpt-N: keeps it if it was written whole (only the index update
    failed) and returns its prefix, else removes its files and TensorFlow's temporaries."""
    prefix = os.path.join(directory, f"ckpt-{number}")
    whole = checkpoint_problem(prefix) is None
    if not whole:
        for path in _checkpoint_files(directory).get(number, []):
            os.remove(path)
    shutil.rmtree(prefix + "_temp", ignore_errors=True)
    for name in os.listdir(directory):
        if name.startswith(CHECKPOINT_INDEX + ".tmp"):
            os.remove(os.path.join(directory, name))
    return prefix if whole else None
