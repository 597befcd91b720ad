"""Installing a pretrained generator of the catalogue (`anime_gan.weights.catalogue`): download,
check, convert, and write DIR/NAME in one rename.

`download(NAME)` fetches the entry's official TF1 checkpoint, or the PyTorch port's `.pt` file, converts
it (as `convert_checkpoint` does: the checkpoint must hold exactly the official generator variables of
the entry's architecture; as `convert --pytorch` does for a `.pt`: exactly the port's 77 tensors, in the
port's own mode) into DIR/NAME/: `generator.weights.h5`, `SOURCE.json` (the URLs, sizes, SHA-256 of what
was downloaded, the date) and, when a `saved_model` writer is given (the pretrained command passes
`anime_gan.deploy.saved_model.export_saved_model`), `saved_model/` (TF Serving).

Downloads go through `data_prep.download.download` (progress bar, retry, HTTP Range resume, size checked
against the Content-Length the server announced) into DIR/NAME.download/; a transfer that failed is
resumed from its `.part` file by running the same command again. A file completed by an earlier run is
checked again (size and SHA-256 recorded when it completed) before it is used. A server that cannot be
reached at all (offline, a host name that does not resolve, a refused connection) ends the download at
once in one sentence naming --mirror and the manual route (`catalogue.manual_route`); a broken transfer
is retried. DIR/NAME is written only once everything passed, by one rename, so a failure never leaves
half a model there nor removes the one that was there. A second run finds SOURCE.json and the files it
lists unchanged and does nothing (force=True downloads and converts again).

What is verified: the announced size, the checkpoint itself (readable, exactly the official variables and
shapes, or the port's tensors), a catalogue SHA-256 when one is filled in and, on later runs, the
recorded one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import re
import shutil
import stat
import zipfile

from anime_gan import __version__
from anime_gan import constants as C
from anime_gan.errors import ModelError, OutputExistsError, PathNotFoundError
from anime_gan.weights import catalogue
from anime_gan.weights.arch import ARCH_LABEL, tf1_arch
from anime_gan.weights.keras_h5 import save_generator
from anime_gan.weights.tf1 import read_tf1_checkpoint, tf1_to_generator
from anime_gan.weights.torch_port import load_torch_generator
from data_prep import download as http
from data_prep import report
from data_prep.report import DataError

log = logging.getLogger(__name__)

STAGING_RECORD = "DOWNLOADED.json"  # in the staging folder: the files completed so far
_LOCAL_PREFIX = "ckpt"  # the prefix a checkpoint taken out of a zip is written under


# ---- one file --------------------------------------------------------------------------------------
def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path, value):
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _our_hint(message):
    """data_prep's download messages end with its own command's hint (--source); ours has none."""
    message = message.replace("check the URL or pass a local path to --source",
                              f"check the URL, or the mirror if one is set (--mirror, ${catalogue.MIRROR_ENV})")
    message = message.replace(" or pass a local path to --source", "")
    return message.replace("run again", "run the same command again")


def fetch(url, dest, expected_sha256, record_path, retries, backoff, timeout, progress, verify=None):
    """Downloads url to dest unless a completed copy from an earlier run checks out (its size and
    SHA-256 as recorded in the JSON file `record_path`); returns its record {url, bytes, sha256}.
    DataError (one sentence) when the transfer fails or the SHA-256 is not `expected_sha256`."""
    record = _read_json(record_path)
    done = record.get(dest.name)
    if dest.exists():
        if (done and done.get("bytes") == dest.stat().st_size
                and done.get("sha256") == http.sha256_of(str(dest))):
            log.info("%s: completed by an earlier run, its size and SHA-256 checked again", dest.name)
        else:
            log.warning("%s from an earlier run does not match what was recorded; downloading it again", dest)
            dest.unlink()
    if not dest.exists():
        log.info("downloading %s", url)
        try:
            http.download(url, str(dest), retries=retries, timeout=timeout, backoff=backoff, progress=progress,
                          verify=verify)
        except http.Unreachable:
            raise  # the caller knows the entry, so it writes the sentence
        except DataError as e:
            raise DataError(_our_hint(str(e))) from None
        done = {"url": url, "bytes": dest.stat().st_size, "sha256": http.sha256_of(str(dest))}
        record[dest.name] = done
        _write_json(record_path, record)
    if expected_sha256 and done["sha256"].lower() != expected_sha256.lower():
        dest.unlink()
        raise DataError(f"the SHA-256 of {url} is {done['sha256']}, not the catalogue's {expected_sha256}; "
                        "the file was removed, check the URL or the mirror.")
    return done


def extract_checkpoint(zip_path, out_dir):
    """Takes the TF1 checkpoint out of the zip at zip_path, whatever its folders are called: the
    member ending in .index that has its .data-* shards beside it (the highest -N if several; macOS
    __MACOSX/ copies are not looked at) and those shards, written as
    out_dir/ckpt.index, out_dir/ckpt.data-... (names of our choosing, so no member path is ever used
    to write). Returns (local prefix, the checkpoint's prefix inside the zip)."""
    zip_path, out_dir = str(zip_path), pathlib.Path(out_dir)
    with zipfile.ZipFile(zip_path) as zf:
        http.check_expansion(zf, zip_path, str(out_dir))  # a zip bomb is refused before any read
        infos = {i.filename: i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")}
        shards = {}  # prefix -> {member: suffix} of its .data-* files
        for n in infos:
            match = re.fullmatch(r"(.+)(\.data-\d+-of-\d+)", n)
            if match:
                shards.setdefault(match.group(1), {})[n] = match.group(2)
        prefixes = [n[: -len(".index")] for n in infos if n.endswith(".index")]
        complete = [p for p in prefixes if p in shards]
        if not complete:
            found = f"{prefixes[0]}.index but no {prefixes[0]}.data-* file" if prefixes else "no .index file"
            raise ModelError(f"{zip_path} holds no complete TF1 checkpoint ({found} among its {len(infos)} files).")
        prefix = max(complete, key=lambda p: (C.checkpoint_number(p), p))
        shards = shards[prefix]
        if len(complete) > 1:
            log.info("%s holds %d checkpoints; using the newest, %s", zip_path, len(complete), prefix)
        out_dir.mkdir(parents=True, exist_ok=True)
        for member, suffix in [(prefix + ".index", ".index"), *shards.items()]:
            info = infos[member]
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ModelError(f"{zip_path} holds {member} as a symbolic link, not as a file, so it is not "
                                 "the official release.")
            with zf.open(info) as src, open(out_dir / (_LOCAL_PREFIX + suffix), "wb") as dst:
                shutil.copyfileobj(src, dst, http.CHUNK)  # zipfile checks the CRC as it reads
    return out_dir / _LOCAL_PREFIX, prefix


# ---- the steps of a download -----------------------------------------------------------------------
def _official_generator(entry, prefix):
    """The generator of the TF1 checkpoint at prefix and its number of variables; ModelError (one
    sentence) when it is not exactly the official generator of the entry's architecture."""
    # A data file cut short or damaged: read_tf1_checkpoint says so (ModelError, one sentence).
    values = read_tf1_checkpoint(prefix)
    arch = tf1_arch(values)
    if arch != entry.arch:
        raise ModelError(f"it holds an {ARCH_LABEL[arch]} generator, not the catalogue's {ARCH_LABEL[entry.arch]}.")
    return tf1_to_generator(values), len(values)


def _convert(generator, n_variables, build, saved_model):
    """generator -> build/generator.weights.h5 (and build/saved_model/ through the writer `saved_model`)."""
    save_generator(generator, build)
    log.info("converted the %d variables (%s)%s", n_variables, ARCH_LABEL[generator.arch],
             "; exporting a SavedModel" if saved_model else "")
    if saved_model:
        saved_model(generator, build / C.SAVED_MODEL_DIR)


def _fetch_files(entry, staging, mirror, retries, backoff, timeout, progress):
    """Every file of the entry into staging; their records, with the catalogue's SHA-256."""
    files = []
    for remote, url in zip(entry.files, entry.urls(mirror)):
        dest = staging / remote.filename
        verify = (lambda p: http.verify_archive(p, str(staging))) if entry.archive else None
        try:
            done = fetch(url, dest, remote.sha256, staging / STAGING_RECORD, retries, backoff, timeout, progress,
                         verify)
        except http.Unreachable as e:
            kept = f" (the partial file {e.part} is kept for a resume)" if e.part else ""
            raise DataError(
                f"cannot reach {e.host} ({e.reason}), so {entry.name} was not downloaded{kept} and nothing was "
                f"retried: pass --mirror=URL (or set ${catalogue.MIRROR_ENV}) to a copy this machine can reach, "
                f"or {catalogue.manual_route(entry, staging.parent)}.") from None
        files.append({**done, "expected_sha256": remote.sha256})
    return files


def _convert_staged(entry, staging, build, saved_model):
    """(where the checkpoint was, number of variables) after converting what was downloaded into
    build (a .pt file of the port in the port's own mode); what is not the entry's generator removes
    the staging folder and raises ModelError."""
    try:
        if entry.pytorch:
            checkpoint = entry.files[0].filename
            generator = load_torch_generator(staging / checkpoint)  # align-corners resize, epsilon 1e-5
            n_variables = len(generator.tf1_variable_map())
        else:
            if entry.archive:
                shutil.rmtree(staging / "extracted", ignore_errors=True)
                prefix, inside = extract_checkpoint(staging / entry.files[0].filename, staging / "extracted")
                checkpoint = f"{entry.files[0].filename}:{inside}"
            else:
                prefix = staging / entry.files[0].filename[: -len(".index")]
                checkpoint = prefix.name
            generator, n_variables = _official_generator(entry, prefix)
    except (ModelError, PathNotFoundError, zipfile.BadZipFile, DataError) as e:
        shutil.rmtree(staging, ignore_errors=True)  # what was downloaded is wrong: the next run starts clean
        raise ModelError(f"the download of {entry.name} ({entry.title}) is not {entry.what} "
                         f"({str(e).rstrip('.')}); it was removed, check the mirror if one is set or run "
                         "again.") from None
    _convert(generator, n_variables, build, saved_model)
    return checkpoint, n_variables


def _replace(build, folder, staging):
    """Moves build to folder; an existing folder is moved aside first and removed only afterwards."""
    old = staging / "replaced"
    if folder.exists() or folder.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    try:
        os.replace(build, folder)
    except OSError:
        if old.exists():
            os.replace(old, folder)  # put back what was there
        raise


@dataclasses.dataclass
class Result:
    """What `download` did: `downloaded` is False when DIR/NAME was complete and nothing was done."""

    name: str
    folder: pathlib.Path
    downloaded: bool
    manifest: dict

    def sentence(self):
        """The line the pretrained command prints."""
        if not self.downloaded:
            return (f"{self.name} is already in {self.folder} (downloaded {self.manifest.get('downloaded', '?')}); "
                    "nothing to do, pass --force to download it again.")
        use = f"--model={self.name}"
        if self.folder.parent.resolve() != catalogue.weights_dir().resolve():
            use = f"--model={self.folder} (or --model={self.name} with {catalogue.DIR_ENV}={self.folder.parent})"
        written = f", {C.SAVED_MODEL_DIR}/" if self.manifest.get("saved_model") else ""
        return (f"{self.name}: wrote {self.folder} ({C.WEIGHTS_FILENAME}{written}, {catalogue.MANIFEST}); "
                f"use it as {use}.")


def _already_there(folder, name, force, saved_model):
    """DIR/NAME's manifest when it is a complete install to keep; None when it is to be written."""
    if not folder.exists() or force:
        return None
    if not folder.is_dir() or catalogue.read_manifest(folder) is None:
        raise OutputExistsError(f"{folder} already exists and was not written by anime_gan.pretrained (no "
                                f"readable {catalogue.MANIFEST}); move it away or pass --force to replace it.")
    problem = catalogue.install_problem(folder, name, bool(saved_model))
    if problem is None:
        return catalogue.read_manifest(folder)
    log.warning("%s is incomplete (%s); downloading it again", folder, problem)
    return None


def download(name, directory=None, force=False, mirror=None, retries=5, backoff=2.0, timeout=60.0,
             progress=True, saved_model=None):
    """Downloads, checks and converts the official weights `name` into DIR/NAME (see the module
    docstring); returns a Result. `saved_model`: None (the default: no SavedModel, as the weights layer
    never imports deploy), or a writer `saved_model(generator, folder)` that also writes
    DIR/NAME/saved_model/, as the pretrained command passes
    `functools.partial(anime_gan.deploy.saved_model.export_saved_model, max_side=...)`.

    Errors: ConfigError (unknown name), OutputExistsError (DIR/NAME holds something else: force=True
    replaces it), DataError (the server cannot be reached: at once, naming --mirror and the manual
    route; the transfer failed after its retries: run again to resume; or the size or SHA-256 is
    wrong), ModelError (what was downloaded is not the entry's generator: removed), each one
    sentence; DIR/NAME is left as it was in every case."""
    entry = catalogue.entry(name)
    directory = catalogue.weights_dir(directory)
    report.not_a_folder(str(directory), "--dir")
    folder = directory / name
    kept = _already_there(folder, name, force, saved_model)
    if kept is not None:
        return Result(name, folder, False, kept)
    staging = directory / (name + catalogue.STAGING_SUFFIX)
    if force and staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    build = staging / "build"
    shutil.rmtree(build, ignore_errors=True)
    try:
        files = _fetch_files(entry, staging, mirror, retries, backoff, timeout, progress)
        checkpoint, n_variables = _convert_staged(entry, staging, build, saved_model)
        manifest = {
            "name": name,
            "title": entry.title,
            "architecture": entry.arch,
            "files": files,
            "checkpoint": checkpoint,
            "generator_variables": n_variables,
            "saved_model": bool(saved_model),
            "downloaded": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "converted_by": f"anime_gan {__version__}",
            # What install_problem checks on the next run.
            "written": {C.WEIGHTS_FILENAME: http.sha256_of(str(build / C.WEIGHTS_FILENAME))},
        }
        _write_json(build / catalogue.MANIFEST, manifest)
        _replace(build, folder, staging)
    finally:
        shutil.rmtree(build, ignore_errors=True)
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()  # nothing to resume from
    shutil.rmtree(staging, ignore_errors=True)
    return Result(name, folder, True, manifest)
