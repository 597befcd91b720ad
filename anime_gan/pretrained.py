"""The official pretrained generators in one command: download, check, convert, export.

    python -m anime_gan.pretrained list
    python -m anime_gan.pretrained download hayao-v2 [--dir=checkpoints] [--force] [--mirror=URL]
    python -m anime_gan.stylize --model=hayao-v2 --input=photo.jpg --output=anime.jpg

`download NAME` fetches the official TF1 checkpoint of NAME (`CATALOGUE`), converts it
(as `anime_gan.weights.loading.convert_checkpoint` does: the checkpoint must hold exactly the official
generator variables, v1 or v2 told by their names) and exports a SavedModel (as `anime_gan.export`
does; --nosaved_model skips it), into DIR/NAME/: `generator.weights.h5`, `saved_model/` (TF Serving)
and `SOURCE.json` (the URLs, sizes, SHA-256 of what was downloaded, the date). Every model path (`stylize --model`, `export --checkpoint_dir`,
`anime_gan.load_generator`) then also accepts the bare name: `anime_gan.weights.loading.resolve_model` looks
it up in DIR (default `checkpoints`, or $ANIME_GAN_WEIGHTS_DIR).

Downloads go through `data_prep.download.download` (progress bar, retry, HTTP Range resume, size
checked against the Content-Length the server announced) into DIR/NAME.download/; a transfer that
failed is resumed from its `.part` file by running the same command again. A file completed by an
earlier run is checked again (size and SHA-256 recorded when it completed) before it is used.
DIR/NAME is written only once everything passed, by one rename, so a failure never leaves half a
model there nor removes the one that was there. A second run finds SOURCE.json and the files it
lists unchanged and does nothing (--force downloads and converts again).

Checksums are recorded, not pinned: the catalogue's `sha256` fields are None because the official
files could not be fetched when this was written, so no published value could be copied; what is
verified instead is the announced size, the checkpoint itself (readable, exactly the official
variables and shapes) and, on later runs, the recorded SHA-256. Fill `sha256` in to pin a file.

`--mirror` (or $ANIME_GAN_WEIGHTS_MIRROR) replaces `https://github.com` in every URL, so a mirror
serves the same paths, e.g. MIRROR/TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/....
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

from anime_gan import constants as C
from anime_gan.errors import ConfigError, ModelError, OutputExistsError, PathNotFoundError
from data_prep import download as http
from data_prep import report
from data_prep.report import DataError

# Named, not __name__: run as `python -m anime_gan.pretrained` this module is "__main__".
log = logging.getLogger("anime_gan.pretrained")

GITHUB = "https://github.com"
MIRROR_ENV = "ANIME_GAN_WEIGHTS_MIRROR"
DIR_ENV = "ANIME_GAN_WEIGHTS_DIR"
DEFAULT_DIR = "checkpoints"
MANIFEST = "SOURCE.json"
STAGING_SUFFIX = ".download"  # DIR/NAME.download/: the files being downloaded, kept for a resume
_STAGING_RECORD = "DOWNLOADED.json"  # in the staging folder: the files completed so far
_LOCAL_PREFIX = "ckpt"  # the prefix a checkpoint taken out of a zip is written under


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to download: its path under https://github.com (or the mirror), and its SHA-256 when
    known (None: recorded, not checked)."""

    path: str
    sha256: str | None = None

    @property
    def filename(self):
        return self.path.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A catalogue entry: `files` is a TF1 checkpoint (.index, .data-*) or, with `archive`, one zip
    holding a TF1 checkpoint folder."""

    name: str
    arch: str  # "v1" | "v2", checked against what the checkpoint's variable names say
    title: str
    files: tuple[RemoteFile, ...]
    archive: bool = False

    def urls(self, mirror=None):
        base = mirror_base(mirror)
        return [f"{base}/{f.path}" for f in self.files]


_V2_CHECKPOINT = "TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/generator_{style}_weight/{style}-{epoch}.ckpt"


def _v2(name, style, epoch):
    # In the AnimeGANv2 repository itself, not in its releases (ORIGINAL_V2.md, "Published weights");
    # the .meta graph is not needed.
    prefix = _V2_CHECKPOINT.format(style=style, epoch=epoch)
    return Pretrained(name, "v2", f"AnimeGANv2 {style}, epoch {epoch}",
                      (RemoteFile(prefix + ".index"), RemoteFile(prefix + ".data-00000-of-00001")))


CATALOGUE = {entry.name: entry for entry in (
    _v2("hayao-v2", "Hayao", 64),
    _v2("hayao-v2-99", "Hayao", 99),
    _v2("paprika-v2", "Paprika", 54),
    _v2("shinkai-v2", "Shinkai", 53),
    Pretrained("hayao-v1", "v1", "AnimeGAN Hayao, the v1.0 release Haoyao-style.zip",
               (RemoteFile("TachibanaYoshino/AnimeGAN/releases/download/Haoyao-style_V1.0/Haoyao-style.zip"),),
               archive=True),
)}


def mirror_base(mirror=None):
    """What replaces https://github.com: `mirror`, else $ANIME_GAN_WEIGHTS_MIRROR, else GitHub."""
    base = mirror or os.environ.get(MIRROR_ENV) or GITHUB
    if not http.is_url(base):
        raise ConfigError(f"the mirror {base!r} is not a URL; pass one such as https://example.org/github "
                          f"(it replaces {GITHUB} in every download URL).")
    return base.rstrip("/")


def weights_dir(directory=None):
    """Where the downloaded models live: `directory`, else $ANIME_GAN_WEIGHTS_DIR, else ./checkpoints."""
    return pathlib.Path(os.fspath(directory or os.environ.get(DIR_ENV) or DEFAULT_DIR)).expanduser()


def entry(name):
    """The catalogue entry of `name`; ConfigError naming every name otherwise."""
    if name not in CATALOGUE:
        raise ConfigError(f"no official weights named {name!r}; the names are {', '.join(CATALOGUE)} "
                          "(python -m anime_gan.pretrained list describes them).")
    return CATALOGUE[name]


def installed_folder(name, directory=None):
    """DIR/NAME for a downloaded catalogue name, else PathNotFoundError with the command to run."""
    folder = weights_dir(directory) / name
    if folder.is_dir():
        return folder
    staging = folder.with_name(name + STAGING_SUFFIX)
    started = f" (a partial download is in {staging})" if staging.is_dir() else ""
    raise PathNotFoundError(
        f"the official weights {name} are not downloaded yet{started}: run `python -m anime_gan.pretrained "
        f"download {name}` (looked for {folder}; set ${DIR_ENV} if they were downloaded with --dir).")


# ---- what is on disk -------------------------------------------------------------------------------
def read_manifest(folder):
    """SOURCE.json of an installed model as a dict, or None when absent or unreadable."""
    try:
        return json.loads((pathlib.Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def install_problem(folder, name, saved_model=True):
    """Why DIR/NAME is not a complete download of `name` (None: it is): SOURCE.json must name it,
    every file it lists must be there with the SHA-256 recorded when it was written, and
    saved_model/ must be there when asked for."""
    manifest = read_manifest(folder)
    if not isinstance(manifest, dict) or manifest.get("name") != name:
        return f"{MANIFEST} is missing, unreadable or names another model"
    for rel, digest in (manifest.get("written") or {}).items():
        path = pathlib.Path(folder) / rel
        if not path.is_file():
            return f"{rel} is missing"
        if http.sha256_of(str(path)) != digest:
            return f"{rel} was changed since it was written"
    if saved_model and not (pathlib.Path(folder) / "saved_model" / "saved_model.pb").is_file():
        return "saved_model/ is missing"
    return None


# ---- downloading -----------------------------------------------------------------------------------
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
                              f"check the URL, or the mirror if one is set (--mirror, ${MIRROR_ENV})")
    message = message.replace(" or pass a local path to --source", "")
    return message.replace("run again", "run the same command again")


def _fetch(url, dest, expected_sha256, record_path, retries, backoff, timeout, progress, verify=None):
    """Downloads url to dest unless a completed copy from an earlier run checks out; returns its record
    {url, bytes, sha256}."""
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


def _checkpoint_number(prefix):
    match = re.search(r"-(\d+)(?:\.ckpt)?$", prefix)
    return int(match.group(1)) if match else -1


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
        prefix = max(complete, key=lambda p: (_checkpoint_number(p), p))
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


def _convert(entry_, prefix, build, max_side, saved_model):
    """The TF1 checkpoint at prefix -> build/generator.weights.h5 (and build/saved_model/); ModelError
    (one sentence) when it is not exactly the official generator of the entry's architecture."""

    from anime_gan.weights import loading as weights
    from anime_gan.deploy.saved_model import export_saved_model

    # A data file cut short or damaged: read_tf1_checkpoint says so (ModelError, one sentence).
    values = weights.read_tf1_checkpoint(prefix)
    arch = weights.tf1_arch(values)
    if arch != entry_.arch:
        raise ModelError(f"it holds an {weights.ARCH_LABEL[arch]} generator, not the catalogue's "
                         f"{weights.ARCH_LABEL[entry_.arch]}.")
    generator = weights.tf1_to_generator(values)
    weights.save_generator(generator, build)
    log.info("converted the %d official variables (%s)%s", len(values), weights.ARCH_LABEL[arch],
             "; exporting a SavedModel" if saved_model else "")
    if saved_model:
        export_saved_model(generator, build / "saved_model", max_side=max_side)
    return len(values)


@dataclasses.dataclass
class Result:
    name: str
    folder: pathlib.Path
    downloaded: bool  # False: it was already there and nothing was done
    manifest: dict

    def sentence(self):
        if not self.downloaded:
            return (f"{self.name} is already in {self.folder} (downloaded {self.manifest.get('downloaded', '?')}); "
                    "nothing to do, pass --force to download it again.")
        use = f"--model={self.name}"
        if self.folder.parent.resolve() != weights_dir().resolve():
            use = f"--model={self.folder} (or --model={self.name} with {DIR_ENV}={self.folder.parent})"
        written = ", saved_model/" if self.manifest.get("saved_model") else ""
        return f"{self.name}: wrote {self.folder} (generator.weights.h5{written}, {MANIFEST}); use it as {use}."


def download(name, directory=None, force=False, mirror=None, retries=5, backoff=2.0, timeout=60.0,
             progress=True, saved_model=True, max_side=C.DEFAULT_MAX_SIDE):
    """Downloads, checks, converts and (with `saved_model`) exports the official weights `name` into
    DIR/NAME (see the module docstring); returns a Result. Errors: ConfigError (unknown name), OutputExistsError (DIR/NAME
    holds something else: --force replaces it), DataError (the transfer failed: run again to resume; or
    the size or SHA-256 is wrong), ModelError (what was downloaded is not the official checkpoint:
    removed), each one sentence; DIR/NAME is left as it was in every case."""
    entry_ = entry(name)
    directory = weights_dir(directory)
    report.not_a_folder(str(directory), "--dir")
    folder = directory / name
    if folder.exists() and not force:
        if not folder.is_dir() or read_manifest(folder) is None:
            raise OutputExistsError(f"{folder} already exists and was not written by anime_gan.pretrained (no "
                                    f"readable {MANIFEST}); move it away or pass --force to replace it.")
        problem = install_problem(folder, name, saved_model)
        if problem is None:
            return Result(name, folder, False, read_manifest(folder))
        log.warning("%s is incomplete (%s); downloading it again", folder, problem)
    staging = directory / (name + STAGING_SUFFIX)
    if force and staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    build = staging / "build"
    shutil.rmtree(build, ignore_errors=True)
    record_path = staging / _STAGING_RECORD
    try:
        files = []
        for remote, url in zip(entry_.files, entry_.urls(mirror)):
            dest = staging / remote.filename
            verify = (lambda p: http.verify_archive(p, str(staging))) if entry_.archive else None
            done = _fetch(url, dest, remote.sha256, record_path, retries, backoff, timeout, progress, verify)
            files.append({**done, "expected_sha256": remote.sha256})
        try:
            if entry_.archive:
                shutil.rmtree(staging / "extracted", ignore_errors=True)
                prefix, inside = extract_checkpoint(staging / entry_.files[0].filename, staging / "extracted")
                checkpoint = f"{entry_.files[0].filename}:{inside}"
            else:
                prefix = staging / entry_.files[0].filename[: -len(".index")]
                checkpoint = prefix.name
            n_variables = _convert(entry_, prefix, build, max_side, saved_model)
        except (ModelError, PathNotFoundError, zipfile.BadZipFile, DataError) as e:
            shutil.rmtree(staging, ignore_errors=True)  # what was downloaded is wrong: the next run starts clean
            raise ModelError(f"the download of {name} ({entry_.title}) is not its official checkpoint "
                             f"({str(e).rstrip('.')}); it was removed, check the mirror if one is set or run "
                             "again.") from None
        from anime_gan import __version__
        from anime_gan.weights.loading import WEIGHTS_FILENAME

        manifest = {
            "name": name,
            "title": entry_.title,
            "architecture": entry_.arch,
            "files": files,
            "checkpoint": checkpoint,
            "generator_variables": n_variables,
            "saved_model": saved_model,
            "downloaded": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "converted_by": f"anime_gan {__version__}",
            # What install_problem checks on the next run.
            "written": {WEIGHTS_FILENAME: http.sha256_of(str(build / WEIGHTS_FILENAME))},
        }
        _write_json(build / MANIFEST, manifest)
        _replace(build, folder, staging)
    finally:
        shutil.rmtree(build, ignore_errors=True)
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()  # nothing to resume from
    shutil.rmtree(staging, ignore_errors=True)
    return Result(name, folder, True, manifest)


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


# ---- the command -----------------------------------------------------------------------------------
def listing(directory=None):
    """One line per catalogue entry: name, architecture, what it is, whether it is downloaded."""
    directory = weights_dir(directory)
    width = max(map(len, CATALOGUE))
    lines = []
    for name, e in CATALOGUE.items():
        folder = directory / name
        state = f"downloaded in {folder}" if folder.is_dir() and read_manifest(folder) else "not downloaded"
        lines.append(f"{name:<{width}}  {e.title}  [{state}]")
    return lines


def define_flags():
    """Defined only when run as a command, so importing this module never adds global flags."""
    from absl import flags

    flags.DEFINE_string("dir", None, f"Folder the models are written into (default ${DIR_ENV}, else "
                        f"./{DEFAULT_DIR}); --model=NAME looks there.")
    flags.DEFINE_boolean("force", False, "Download (from the first byte) and convert again even if DIR/NAME "
                         "is complete; also replaces a DIR/NAME not written by this command.")
    flags.DEFINE_string("mirror", None, f"Replaces {GITHUB} in every download URL (default ${MIRROR_ENV}).")
    flags.DEFINE_integer("retries", 5, "Retries of a broken transfer (each resumes where it broke).",
                         lower_bound=0)
    flags.DEFINE_boolean("saved_model", True, "Also export DIR/NAME/saved_model/ for TF Serving.")
    flags.DEFINE_integer("max_side", C.DEFAULT_MAX_SIDE, "Largest image side the exported SavedModel accepts.",
                         lower_bound=C.MIN_SIDE)


USAGE = "pass `list` or `download NAME...` (names: " + ", ".join(CATALOGUE) + ")"


def main(argv):
    """The command (run by `anime_gan.cli.run`)."""
    from absl import flags

    FLAGS = flags.FLAGS
    args = argv[1:]
    if not args or args[0] not in ("list", "download"):
        raise ConfigError(f"unknown command {' '.join(args)!r}; {USAGE}." if args else f"no command; {USAGE}.")
    if args[0] == "list":
        if len(args) > 1:
            raise ConfigError(f"list takes no names, got {' '.join(args[1:])}; {USAGE}.")
        print("\n".join(listing(FLAGS.dir)))
        return 0
    names = args[1:]
    if not names:
        raise ConfigError(f"download needs a name; {USAGE}.")
    for name in names:
        entry(name)  # every name checked before anything is downloaded
    for name in names:
        result = download(name, FLAGS.dir, FLAGS.force, FLAGS.mirror, retries=FLAGS.retries,
                          saved_model=FLAGS.saved_model, max_side=FLAGS.max_side)
        print(result.sentence())
    return 0


if __name__ == "__main__":
    from anime_gan import cli

    define_flags()
    cli.run(main)
