"""The models the page offers: every --model, the catalogue's weights downloaded with
`anime_gan.pretrained`, the training runs in the weights folder, each with the architecture and style
it holds (`find_models`); and `Models`, which loads them on first use, keeps them and lets one request
at a time run through them."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import threading
import time

from anime_gan import constants as C
from anime_gan import inference
from anime_gan.errors import USER_ERRORS, ConfigError
from anime_gan.weights import ARCH_LABEL, catalogue, resolve_model, source_spec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One model the page offers: `path` is what `anime_gan.inference.load_model` is given."""

    key: str  # its id in the page
    path: str
    name: str  # shown in the list
    arch: str  # "v1" | "v2" | "" (unknown)
    style: str  # what it holds, in words
    origin: str  # "--model" | a catalogue entry's origin ("official weights", ...) | "training run"

    def as_json(self):
        """What the page's model list shows of it."""
        arch = ARCH_LABEL.get(self.arch, "architecture unknown")
        short = f"{self.name} · {self.style}" if self.name in catalogue.CATALOGUE else f"{self.style} · {arch}"
        return {"key": self.key, "name": self.name, "label": short, "arch": self.arch, "arch_label": arch,
                "style": self.style, "origin": self.origin, "path": self.path}


def arch_of(source):
    """"v1" / "v2" of what resolve_model found, read from its files without building a model."""
    if source.kind == "torch":
        return "v2"  # the PyTorch port's weights are AnimeGANv2 (anime_gan.weights.torch_port)
    return source_spec(source)[0]


def style_of(path, source):
    """The catalogue title of official weights, else the run's or file's name."""
    name = pathlib.Path(path).name
    if name in catalogue.CATALOGUE:
        return catalogue.CATALOGUE[name].title
    manifest = catalogue.read_manifest(path) if pathlib.Path(path).is_dir() else None
    if manifest and manifest.get("title"):
        return manifest["title"]
    folder = source.path if source.path.is_dir() else source.path.parent
    # A run's final weights sit in RUN/generator/, a SavedModel may be RUN/saved_model/.
    while folder.name in ("generator", C.SAVED_MODEL_DIR) and folder.parent != folder:
        folder = folder.parent
    return folder.name or str(path)


class _ChoiceList:
    """The list find_models builds: each model once (by its real path), keyed in order."""

    def __init__(self):
        self.choices, self.seen = [], set()

    def add(self, path, name, origin, strict):
        try:
            source = resolve_model(path)
            arch = arch_of(source)
        except USER_ERRORS as e:
            if strict:
                raise ConfigError(f"--model={path}: {str(e)[:1].lower()}{str(e)[1:]}") from None
            log.info("not listing %s: %s", path, e)
            return
        identity = os.path.realpath(source.path)
        if identity in self.seen:
            return
        self.seen.add(identity)
        key = f"m{len(self.choices)}"
        self.choices.append(ModelChoice(key, os.fspath(path), name, arch, style_of(path, source), origin))


def find_models(paths=(), directory=None):
    """[ModelChoice]: each of `paths` (a user error, in one sentence, if one is not a model), then the
    catalogue's weights downloaded into the weights folder (`catalogue.weights_dir`), then the
    other models in it (training runs, converted weights). Each model once, in that order."""
    found = _ChoiceList()
    for path in paths:
        found.add(path, os.fspath(path), "--model", strict=True)
    folder = catalogue.weights_dir(directory)
    for name, entry in catalogue.CATALOGUE.items():
        if (folder / name).is_dir():  # downloaded, or converted by hand (catalogue.manual_route)
            found.add(str(folder / name), name, entry.origin, strict=False)
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name not in catalogue.CATALOGUE and not child.name.startswith("."):
                if not child.name.endswith(catalogue.STAGING_SUFFIX):
                    found.add(str(child), str(child), "training run", strict=False)
    return found.choices


def no_model_message(directory=None):
    """The sentence when there is nothing to offer, with the three ways to get a model."""
    return (f"no model to offer: none was passed and {catalogue.weights_dir(directory)} holds none; pass "
            "--model=PATH, download official weights (python -m anime_gan.pretrained download hayao-v2) or "
            "train the demo (make train).")


class Models:
    """The Stylizers, loaded on first use and kept per (model key, precision); `lock` lets one request
    at a time use them. float32 runs in TensorFlow (large images in bounded memory), float16 and int8
    in the fastest runtime measured here at that precision (`runtime_for`)."""

    def __init__(self, choices, max_side=None):
        self.choices = {c.key: c for c in choices}
        self.max_side = int(max_side or C.DEFAULT_MAX_SIDE)
        self.lock = threading.Lock()
        self._loaded = {}
        self.load_seconds = {}  # (key, precision) -> seconds its loading took
        self.first_call_seconds = {}  # (key, precision) -> seconds of its first call (which traces the graph)

    def choice(self, key):
        """The ModelChoice of key, or a ConfigError naming the ones there are."""
        if key not in self.choices:
            names = ", ".join(c.name for c in self.choices.values())
            raise ConfigError(f"no model {key!r} on this page; pick one of the list ({names}).")
        return self.choices[key]

    @staticmethod
    def runtime_for(precision):
        """The runtime a precision runs in on the page: tensorflow for float32, else auto."""
        if precision not in C.PRECISIONS:
            raise ConfigError(f"no precision {precision!r} on this page; pick one of {', '.join(C.PRECISIONS)}.")
        return inference.default_runtime(precision)

    def is_loaded(self, key, precision="float32"):
        return (key, precision) in self._loaded

    def get(self, key, precision="float32"):
        """The Stylizer of a model at a precision (one of constants.PRECISIONS); call with `lock` held
        (loading runs TensorFlow too; int8 quantises once, cached on disk)."""
        choice = self.choice(key)
        runtime = self.runtime_for(precision)
        if (key, precision) not in self._loaded:
            started = time.monotonic()
            self._loaded[key, precision] = inference.load_model(choice.path, max_side=self.max_side, runtime=runtime,
                                                                precision=precision)
            self.load_seconds[key, precision] = time.monotonic() - started
            log.info("loaded %s (%s) in %.1f s", choice.name, precision, self.load_seconds[key, precision])
        return self._loaded[key, precision]

    def run(self, key, images, precision="float32"):
        """The Stylizer of key at precision on uint8 [N, H, W, 3]; call with `lock` held. Returns (result,
        seconds)."""
        stylizer = self.get(key, precision)
        started = time.monotonic()
        result = stylizer(images)
        seconds = time.monotonic() - started
        self.first_call_seconds.setdefault((key, precision), seconds)
        return result, seconds
