"""The pretrained generators: where each one is published, and where a downloaded one lives.

`CATALOGUE` maps a name to its entry: the official AnimeGAN/AnimeGANv2 checkpoints (hayao-v2, ...) and
the PyTorch port's own models (face-paint-512-v2, face-paint-512-v1, celeba-distill);
`anime_gan.weights.install.download` puts the entry's files, converted, into DIR/NAME (DIR:
`weights_dir`, default ./checkpoints or $ANIME_GAN_WEIGHTS_DIR) with a SOURCE.json manifest, and every
model path then also accepts the bare name. A file's `sha256` is None (recorded on download, not checked)
until a published value is filled in.

`--mirror` (or $ANIME_GAN_WEIGHTS_MIRROR) replaces `https://github.com` in every URL, so a mirror
serves the same paths, e.g. MIRROR/TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/....

TensorFlow-free: the page and `python -m anime_gan.pretrained list` read it at start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from anime_gan import constants as C
from anime_gan.errors import ConfigError, PathNotFoundError
from data_prep import download as http

GITHUB = "https://github.com"
MIRROR_ENV = "ANIME_GAN_WEIGHTS_MIRROR"
DIR_ENV = "ANIME_GAN_WEIGHTS_DIR"
DEFAULT_DIR = "checkpoints"
MANIFEST = "SOURCE.json"
STAGING_SUFFIX = ".download"  # DIR/NAME.download/: the files being downloaded, kept for a resume


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to download: its path under https://github.com (or the mirror), and its SHA-256 when
    known (None: recorded, not checked)."""

    path: str
    sha256: str | None = None

    @property
    def filename(self):
        return self.path.rsplit("/", 1)[-1]


# The terms each publisher attached (each repository's README or LICENSE).
TERMS_ANIMEGAN = ("non-commercial use only (research, teaching, publications); commercial use needs the "
                  "author's permission (its README)")
TERMS_PORT = "MIT licence (its LICENSE)"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A catalogue entry: `files` is a TF1 checkpoint (.index, .data-*), or, with `archive`, one zip
    holding a TF1 checkpoint folder, or, with `pytorch`, one `.pt` state_dict of the PyTorch port
    (bryandlee/animegan2-pytorch), converted in the port's own mode (align-corners resize, GroupNorm
    epsilon 1e-5; `anime_gan.weights.torch_port`).

    `trained_size`: the side, in pixels, of the square images the generator was trained on (256 for
    the official styles, 512 for the port's face_paint faces), which a caller can resize to.
    `repository` (where it comes from) and `terms` (its licence) are shown by `listing`."""

    name: str
    arch: str  # "v1" | "v2", checked against what the checkpoint's variable names say
    title: str
    files: tuple[RemoteFile, ...]
    repository: str  # owner/name on GitHub
    terms: str
    archive: bool = False
    pytorch: bool = False
    trained_size: int = C.OFFICIAL_TRAIN_SIZE

    def urls(self, mirror=None):
        base = mirror_base(mirror)
        return [f"{base}/{f.path}" for f in self.files]

    @property
    def what(self):
        """What the download must be, in words."""
        return "the port's generator weights" if self.pytorch else "its official checkpoint"

    @property
    def origin(self):
        """Whose weights these are, in words (the page shows it)."""
        return "PyTorch port weights" if self.pytorch else "official weights"


_V2_CHECKPOINT = "TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/generator_{style}_weight/{style}-{epoch}.ckpt"
_PORT = "bryandlee/animegan2-pytorch"


def _v2(name, style, epoch):
    # In the AnimeGANv2 repository itself, not in its releases (docs/original.md); the .meta graph is
    # not needed.
    prefix = _V2_CHECKPOINT.format(style=style, epoch=epoch)
    return Pretrained(name, "v2", f"AnimeGANv2 {style}, epoch {epoch}",
                      (RemoteFile(prefix + ".index"), RemoteFile(prefix + ".data-00000-of-00001")),
                      "TachibanaYoshino/AnimeGANv2", TERMS_ANIMEGAN)


def _port(name, note, trained_size):
    # The PyTorch port's own models, in its weights folder: they exist only as .pt files.
    stem = name.replace("-", "_")
    return Pretrained(name, "v2", f"PyTorch port {stem} ({note})", (RemoteFile(f"{_PORT}/raw/main/weights/{stem}.pt"),),
                      _PORT, TERMS_PORT, pytorch=True, trained_size=trained_size)


CATALOGUE = {entry.name: entry for entry in (
    _v2("hayao-v2", "Hayao", 64),
    _v2("hayao-v2-99", "Hayao", 99),
    _v2("paprika-v2", "Paprika", 54),
    _v2("shinkai-v2", "Shinkai", 53),
    Pretrained("hayao-v1", "v1", "AnimeGAN Hayao, the v1.0 release Haoyao-style.zip",
               (RemoteFile("TachibanaYoshino/AnimeGAN/releases/download/Haoyao-style_V1.0/Haoyao-style.zip"),),
               "TachibanaYoshino/AnimeGAN", TERMS_ANIMEGAN, archive=True),
    _port("face-paint-512-v2", "portraits, aligned faces; the port's default", 512),
    _port("face-paint-512-v1", "portraits, aligned faces; its first version", 512),
    _port("celeba-distill", "portraits, a distillation", 256),
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
        raise ConfigError(f"no pretrained weights named {name!r}; the names are {', '.join(CATALOGUE)} "
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
        f"the pretrained weights {name} are not downloaded yet{started}: run `python -m anime_gan.pretrained "
        f"download {name}` (looked for {folder}; set ${DIR_ENV} if they were downloaded with --dir).")


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
    if saved_model and not (pathlib.Path(folder) / C.SAVED_MODEL_DIR / C.SAVED_MODEL_FILENAME).is_file():
        return f"{C.SAVED_MODEL_DIR}/ is missing"
    return None


def manual_route(entry, directory=None):
    """How to install `entry` without this command, in words: fetch its GitHub URLs elsewhere, copy
    them here and convert them with `anime_gan.convert` into DIR/NAME (so the name works)."""
    urls = entry.urls(GITHUB)
    files, after = ("them here", "") if len(urls) > 1 else ("it here", "")
    if entry.pytorch:
        source = f"--pytorch={entry.files[0].filename}"
    elif entry.archive:
        files, source = "it here, unzip it", "--tf1_checkpoint=PREFIX"
        after = " (PREFIX: the path of the checkpoint's .index file without .index)"
    else:
        source = f"--tf1_checkpoint={entry.files[0].filename[: -len('.index')]}"
    return (f"download {' and '.join(urls)} on a machine that is online, copy {files} and run "
            f"`python -m anime_gan.convert {source} --output={weights_dir(directory) / entry.name}`{after}")


def listing(directory=None):
    """Two lines per catalogue entry: its name, what it is, the size it was trained at and whether it is
    downloaded; then where it comes from and its terms."""
    directory = weights_dir(directory)
    width = max(map(len, CATALOGUE))
    lines = []
    for name, e in CATALOGUE.items():
        folder = directory / name
        if folder.is_dir():
            state = f"downloaded in {folder}" if read_manifest(folder) else f"in {folder}, not from this command"
        else:
            state = "not downloaded"
        lines.append(f"{name:<{width}}  {e.title}, trained at {e.trained_size}x{e.trained_size}  [{state}]")
        lines.append(f"{'':<{width}}  from {GITHUB}/{e.repository}; terms: {e.terms}")
    return lines
