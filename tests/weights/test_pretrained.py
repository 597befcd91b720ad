"""Issue 13 item 2: the official pretrained weights in one command (`anime_gan.pretrained`).

Everything is local: checkpoints in the official layout are built here (the v2 one by TF1 code from
the facts, `v2_reference.tf1_reference_graph`; the v1 one with the official graph's variables),
served by `helpers.LocalServer` on 127.0.0.1 under the catalogue's GitHub paths, and the catalogue's base
URL is pointed at it ($ANIME_GAN_WEIGHTS_MIRROR or mirror=)."""

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from anime_gan.deploy.saved_model import export_saved_model
from anime_gan.errors import ConfigError, ModelError, OutputExistsError, PathNotFoundError
from anime_gan.weights import catalogue, install
from data_prep.report import DataError

V2_PATH = "TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/generator_Hayao_weight/Hayao-64.ckpt"
V1_PATH = "TachibanaYoshino/AnimeGAN/releases/download/Haoyao-style_V1.0/Haoyao-style.zip"
INDEX, DATA = V2_PATH + ".index", V2_PATH + ".data-00000-of-00001"
MAX_ABS = 1e-5  # our generator against the TF1 graph, same process (test_generator_v2, test_generator)


def save_tf1(values, prefix):
    """A name-based (TF1) checkpoint of {name: array} at prefix, as tf.compat.v1.train.Saver writes."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(values)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(values[n]) for n in names])
    return str(prefix)


def read_tf1(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def files_of(prefix):
    return {ext: open(f"{prefix}{ext}", "rb").read() for ext in (".index", ".data-00000-of-00001")}


def one_sentence(message):
    assert "\n" not in message and message.endswith(".") and ". " not in message.replace("vs. ", ""), message


@pytest.fixture(scope="module")
def v2_official(tmp_path_factory):
    """The official v2 layout written by TF1 code (Saver), its files, an image and the TF1 output on it."""
    from references.v2_reference import tf1_reference_graph

    session, saver, x, y = tf1_reference_graph(seed=13)
    image = np.random.default_rng(1).uniform(-1, 1, (1, 64, 96, 3)).astype(np.float32)
    with session:
        prefix = saver.save(session, str(tmp_path_factory.mktemp("v2") / "Hayao-64.ckpt"), write_meta_graph=False)
        expected = session.run(y, {x: image})
    return prefix, files_of(prefix), image, expected


def test_catalogue_urls_names_and_mirror(at, monkeypatch):
    gh = "https://github.com/TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/generator_{0}_weight/{0}-{1}.ckpt"
    expected = {
        "hayao-v2": ("v2", gh.format("Hayao", 64)), "hayao-v2-99": ("v2", gh.format("Hayao", 99)),
        "paprika-v2": ("v2", gh.format("Paprika", 54)), "shinkai-v2": ("v2", gh.format("Shinkai", 53)),
    }
    for name, (arch, prefix) in expected.items():
        e = catalogue.CATALOGUE[name]
        assert e.arch == arch and not e.archive
        assert e.urls() == [prefix + ".index", prefix + ".data-00000-of-00001"]
    v1 = catalogue.CATALOGUE["hayao-v1"]
    assert v1.arch == "v1" and v1.archive and v1.urls() == [
        "https://github.com/TachibanaYoshino/AnimeGAN/releases/download/Haoyao-style_V1.0/Haoyao-style.zip"]
    port = ["face-paint-512-v2", "face-paint-512-v1", "celeba-distill"]  # test_port_catalogue.py
    assert sorted(catalogue.CATALOGUE) == sorted([*expected, "hayao-v1", *port])
    assert all(f.sha256 is None for e in catalogue.CATALOGUE.values() for f in e.files)  # recorded, not pinned
    # A mirror replaces https://github.com, from the argument or the environment.
    monkeypatch.setenv(catalogue.MIRROR_ENV, "http://m.example/gh/")
    assert catalogue.CATALOGUE["paprika-v2"].urls()[0] == (
        "http://m.example/gh/TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/generator_Paprika_weight/"
        "Paprika-54.ckpt.index")
    assert v1.urls("http://x")[0] == "http://x/" + V1_PATH
    with pytest.raises(ConfigError, match="is not a URL"):
        catalogue.mirror_base("not a url")
    with pytest.raises(ConfigError) as info:
        install.download("hayao-v3")
    assert str(info.value) == ("no pretrained weights named 'hayao-v3'; the names are hayao-v2, hayao-v2-99, "
                               "paprika-v2, shinkai-v2, hayao-v1, face-paint-512-v2, face-paint-512-v1, celeba-distill "
                               "(python -m anime_gan.pretrained list describes them).")
    assert not (at / "checkpoints").exists()
    lines = catalogue.listing()
    assert len(lines) == 16 and all(line.endswith("[not downloaded]") for line in lines[::2])
    assert lines[0] == "hayao-v2           AnimeGANv2 Hayao, epoch 64, trained at 256x256  [not downloaded]"
    assert lines[1] == (" " * 19 + "from https://github.com/TachibanaYoshino/AnimeGANv2; terms: non-commercial use only "
                        "(research, teaching, publications); commercial use needs the author's permission (its README)")


def test_v2_download_resumes_converts_exports_and_runs_once(at, serve, v2_official, monkeypatch):
    from anime_gan.nets import build_generator
    from anime_gan.weights import ModelSource, load_generator, resolve_model, restore_saved_model

    prefix, files, image, expected = v2_official
    folder, staging = at / "checkpoints" / "hayao-v2", at / "checkpoints" / "hayao-v2.download"
    with pytest.raises(PathNotFoundError) as info:
        resolve_model("hayao-v2")
    assert str(info.value) == (
        "the pretrained weights hayao-v2 are not downloaded yet: run `python -m anime_gan.pretrained download "
        "hayao-v2` (looked for checkpoints/hayao-v2; set $ANIME_GAN_WEIGHTS_DIR if they were downloaded with --dir).")

    server = serve({INDEX: files[".index"], DATA: files[".data-00000-of-00001"]}, break_once=[DATA])
    monkeypatch.setenv(catalogue.MIRROR_ENV, server.url)
    # The connection breaks halfway through the data file and no retry is allowed: one sentence that
    # says how to resume; nothing in checkpoints/hayao-v2, half the file kept.
    with pytest.raises(DataError) as info:
        install.download("hayao-v2", retries=0, backoff=0, progress=False, saved_model=export_saved_model)
    part = staging / "Hayao-64.ckpt.data-00000-of-00001.part"
    assert str(info.value) == (
        f"Download of {server.url}/{DATA} failed after 1 attempts (connection closed after "
        f"{len(files['.data-00000-of-00001']) // 2} of {len(files['.data-00000-of-00001'])} bytes); run the same "
        f"command again to resume from {part.relative_to(at)}.")
    assert not folder.exists() and part.stat().st_size == len(files[".data-00000-of-00001"]) // 2
    with pytest.raises(PathNotFoundError, match="a partial download is in checkpoints/hayao-v2.download"):
        resolve_model("hayao-v2")

    # Run again: the finished .index is checked, not fetched again; the data file resumes from its .part.
    result = install.download("hayao-v2", retries=0, backoff=0, progress=False, saved_model=export_saved_model)
    n = len(files[".data-00000-of-00001"])
    assert server.requests == [(INDEX, None), (DATA, None), (DATA, f"bytes={n // 2}-")]
    assert result.downloaded and result.folder == folder.relative_to(at)
    assert sorted(os.listdir(folder)) == ["SOURCE.json", "generator.weights.h5", "saved_model"]
    assert not staging.exists()
    manifest = json.loads((folder / "SOURCE.json").read_text())
    assert manifest["files"] == [
        {"url": f"{server.url}/{path}", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
         "expected_sha256": None}
        for path, data in ((INDEX, files[".index"]), (DATA, files[".data-00000-of-00001"]))]
    assert manifest["architecture"] == "v2" and manifest["generator_variables"] == 77 and manifest["saved_model"]
    assert manifest["checkpoint"] == "Hayao-64.ckpt" and manifest["downloaded"].endswith("+00:00")

    # The name is a model path now; its generator computes what the TF1 graph computes.
    assert resolve_model("hayao-v2") == ModelSource("weights", folder.relative_to(at) / "generator.weights.h5")
    g = load_generator("hayao-v2")
    assert g.arch == "v2"
    assert np.abs(g(image).numpy() - expected).max() <= MAX_ABS
    exported = build_generator(arch="v2")
    restore_saved_model(folder / "saved_model", exported)  # the SavedModel holds the same variables
    for a, b in zip(exported.weights, g.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # A second run finds everything in place and does nothing.
    mtime = (folder / "generator.weights.h5").stat().st_mtime_ns
    again = install.download("hayao-v2", retries=0, backoff=0, progress=False, saved_model=export_saved_model)
    assert not again.downloaded and len(server.requests) == 3
    assert again.sentence() == (f"hayao-v2 is already in checkpoints/hayao-v2 (downloaded {manifest['downloaded']}); "
                                "nothing to do, pass --force to download it again.")
    assert (folder / "generator.weights.h5").stat().st_mtime_ns == mtime
    assert catalogue.listing()[0].endswith("[downloaded in checkpoints/hayao-v2]")
    # A changed file is noticed (the next run downloads again).
    with open(folder / "generator.weights.h5", "ab") as f:
        f.write(b"\0")
    assert catalogue.install_problem(folder, "hayao-v2") == "generator.weights.h5 was changed since it was written"


def test_a_file_completed_by_an_earlier_run_is_checked_again(at, serve):
    payload = bytes(range(256)) * 40
    server = serve({"w/f.bin": payload})
    dest, record = at / "staging" / "f.bin", at / "staging" / "DOWNLOADED.json"

    def fetch():
        return install.fetch(f"{server.url}/w/f.bin", dest, None, record, 0, 0, 10, False)

    done = fetch()
    assert done == {"url": f"{server.url}/w/f.bin", "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest()}
    assert fetch() == done and len(server.requests) == 1  # unchanged: used as it is
    dest.write_bytes(payload[::-1])  # same size, other bytes: downloaded again
    assert fetch() == done and len(server.requests) == 2 and dest.read_bytes() == payload


def _missing_one(files, tmp_path):
    """The same checkpoint without one of the 77 generator variables."""
    prefix = tmp_path / "src" / "Hayao-64.ckpt"
    for ext, data in files.items():
        prefix.parent.mkdir(exist_ok=True)
        (prefix.parent / ("Hayao-64.ckpt" + ext)).write_bytes(data)
    values = read_tf1(prefix)
    del values["generator/G_MODEL/C/r3/r3/w"]
    return files_of(save_tf1(values, tmp_path / "cut" / "Hayao-64.ckpt"))


@pytest.mark.parametrize("case", ["not on the server", "sends more than announced", "sends less than announced",
                                  "one byte damaged", "not a checkpoint", "one variable missing",
                                  "pinned SHA-256 differs"])
def test_a_wrong_download_is_refused_and_nothing_is_installed(at, serve, v2_official, case, monkeypatch):
    _, files, _, _ = v2_official
    announce = {}
    if case == "pinned SHA-256 differs":  # the catalogue pins nothing yet; a pinned value is checked
        e = catalogue.CATALOGUE["hayao-v2"]
        pinned = (dataclasses.replace(e.files[0], sha256="ab" * 32), e.files[1])
        monkeypatch.setitem(catalogue.CATALOGUE, "hayao-v2", dataclasses.replace(e, files=pinned))
    if case == "sends more than announced":  # the client stops at Content-Length: a truncated data file
        announce = {DATA: -1000}
    elif case == "sends less than announced":
        announce = {DATA: 1000}
    elif case == "one byte damaged":
        data = bytearray(files[".data-00000-of-00001"])
        data[5000] ^= 0xFF
        files = {**files, ".data-00000-of-00001": bytes(data)}
    elif case == "not a checkpoint":  # e.g. an HTML page served with status 200
        files = {ext: b"<html><body>Moved</body></html>" for ext in files}
    else:
        files = _missing_one(files, at)
    served = {INDEX: files[".index"], DATA: files[".data-00000-of-00001"]} if case != "not on the server" else {}
    server = serve(served, announce=announce)
    folder, staging = at / "checkpoints" / "hayao-v2", at / "checkpoints" / "hayao-v2.download"
    with pytest.raises((DataError, ModelError)) as info:
        install.download("hayao-v2", mirror=server.url, retries=1, backoff=0, progress=False,
                         saved_model=export_saved_model)
    message = str(info.value)
    one_sentence(message)
    assert not folder.exists()
    if case == "not on the server":  # nothing to resume: no folder left behind
        assert message == (f"Download of {server.url}/{INDEX} failed with HTTP 404 Not Found; check the URL, or the "
                           "mirror if one is set (--mirror, $ANIME_GAN_WEIGHTS_MIRROR).")
        assert not staging.exists() and os.listdir(at / "checkpoints") == []
        return
    if case == "pinned SHA-256 differs":
        assert message == (f"the SHA-256 of {server.url}/{INDEX} is {hashlib.sha256(files['.index']).hexdigest()}, "
                           f"not the catalogue's {'ab' * 32}; the file was removed, check the URL or the mirror.")
        assert not (staging / "Hayao-64.ckpt.index").exists()
        return
    if case == "sends less than announced":  # a transfer that never completes: keep it for a resume
        n = len(files[".data-00000-of-00001"])
        assert type(info.value) is DataError and message.startswith(
            f"Download of {server.url}/{DATA} failed after 2 attempts (connection closed after {n} of {n + 1000} bytes)")
        assert "run the same command again to resume" in message and "--source" not in message
        return
    assert type(info.value) is ModelError and not staging.exists()  # refused: the next run starts clean
    assert message.startswith("the download of hayao-v2 (AnimeGANv2 Hayao, epoch 64) is not its official checkpoint (")
    assert message.endswith("); it was removed, check the mirror if one is set or run again.")
    reason = {"sends more than announced": "cannot read the TF1 checkpoint checkpoints/hayao-v2.download/Hayao-64.ckpt: "
                                           "Read less bytes than requested",
              "one byte damaged": "cannot read the TF1 checkpoint checkpoints/hayao-v2.download/Hayao-64.ckpt: "
                                  "TensorBundle at ",
              "not a checkpoint": "cannot read the TF1 checkpoint",
              "one variable missing": "this is not an official AnimeGANv2 generator checkpoint: missing 1: "
                                      "generator/G_MODEL/C/r3/r3/w"}[case]
    assert reason in message, message


def test_v1_release_zip_converts_and_a_foreign_folder_needs_force(at, serve, official_meta):
    from references.official_graph import OfficialGenerator
    from anime_gan.weights import load_generator

    og = OfficialGenerator(official_meta)
    values = og.randomize(seed=4)
    image = np.random.default_rng(2).uniform(-1, 1, (1, 48, 64, 3)).astype(np.float32)
    expected = og(image)
    og.close()
    # A training checkpoint, as the release holds: G, D, Adam slots, counters.
    extra = {"discriminator/conv_0/w": np.ones((3, 3, 3, 32), np.float32), "beta1_power": np.float32(0.5),
             "generator/G_MODEL/b1/Conv/weights/Adam": np.zeros((3, 3, 3, 64), np.float32)}
    prefix = save_tf1({**values, **extra}, at / "src" / "AnimeGAN.model-60")
    top = "Haoyao-style/checkpoint/AnimeGAN_Hayao_lsgan_300_300_1_2_10/"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for ext, data in files_of(prefix).items():
            zf.writestr(top + "AnimeGAN.model-60" + ext, data)
        zf.writestr(top + "AnimeGAN.model-60.meta", b"graph")
        zf.writestr(top + "checkpoint", 'model_checkpoint_path: "AnimeGAN.model-60"\n')
        zf.writestr("__MACOSX/" + top + "._AnimeGAN.model-99.index", b"resource fork")  # not a checkpoint
        zf.writestr(top + "AnimeGAN.model-61.index", b"an index without its data")  # incomplete: not used
    server = serve({V1_PATH: buf.getvalue()})

    folder = at / "checkpoints" / "hayao-v1"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError) as info:
        install.download("hayao-v1", mirror=server.url, progress=False, saved_model=export_saved_model)
    assert str(info.value) == ("checkpoints/hayao-v1 already exists and was not written by anime_gan.pretrained (no "
                               "readable SOURCE.json); move it away or pass --force to replace it.")
    assert server.requests == [] and (folder / "mine.txt").read_text() == "keep me"

    # (The SavedModel export, the slow part, is left out here: the v2 test covers it.)
    result = install.download("hayao-v1", mirror=server.url, force=True, progress=False, backoff=0,
                              saved_model=None)
    assert result.downloaded and sorted(os.listdir(folder)) == ["SOURCE.json", "generator.weights.h5"]
    assert sorted(os.listdir(at / "checkpoints")) == ["hayao-v1"]
    manifest = json.loads((folder / "SOURCE.json").read_text())
    assert manifest["checkpoint"] == "Haoyao-style.zip:" + top + "AnimeGAN.model-60"
    assert manifest["architecture"] == "v1" and manifest["generator_variables"] == 129
    assert not manifest["saved_model"] and catalogue.install_problem(folder, "hayao-v1", saved_model=False) is None
    assert catalogue.install_problem(folder, "hayao-v1") == "saved_model/ is missing"
    assert manifest["files"][0]["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    g = load_generator("hayao-v1")
    assert g.arch == "v1"
    assert np.abs(g(image).numpy() - expected).max() <= MAX_ABS


@pytest.mark.slow
def test_the_commands_download_then_stylize_by_name(at, serve, v2_official):
    """The real commands in fresh processes: download (twice), an unknown name, list, stylize with
    --model=NAME and with the exported SavedModel."""
    from helpers import ENV, read_rgb, textured, to_uint8, write_rgb

    prefix, files, _, _ = v2_official
    server = serve({INDEX: files[".index"], DATA: files[".data-00000-of-00001"]})

    def command(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=at, env=ENV, capture_output=True, text=True,
                              timeout=600)

    first = command("anime_gan.pretrained", "download", "hayao-v2", f"--mirror={server.url}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == ("hayao-v2: wrote checkpoints/hayao-v2 (generator.weights.h5, saved_model/, "
                                    "SOURCE.json); use it as --model=hayao-v2.")
    second = command("anime_gan.pretrained", "download", "hayao-v2", f"--mirror={server.url}")
    assert second.returncode == 0 and second.stdout.startswith("hayao-v2 is already in checkpoints/hayao-v2")
    assert len(server.requests) == 2
    unknown = command("anime_gan.pretrained", "download", "hayao")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines() == [
        "error: no pretrained weights named 'hayao'; the names are hayao-v2, hayao-v2-99, paprika-v2, shinkai-v2, "
        "hayao-v1, face-paint-512-v2, face-paint-512-v1, celeba-distill (python -m anime_gan.pretrained list "
        "describes them)."]
    # Offline (nothing listens on the mirror's port): one line at once, no retry warnings before it.
    from helpers import closed_port

    offline = command("anime_gan.pretrained", "download", "paprika-v2", f"--mirror=http://127.0.0.1:{closed_port()}")
    assert offline.returncode == 2
    assert [line for line in offline.stderr.splitlines() if not line.startswith("downloading ")] == [
        line for line in offline.stderr.splitlines() if line.startswith("error: cannot reach 127.0.0.1:")]
    assert "pass --mirror=URL" in offline.stderr and "python -m anime_gan.convert --tf1_checkpoint=Paprika-54.ckpt" in (
        offline.stderr)
    listed = command("anime_gan.pretrained", "list")
    assert listed.returncode == 0 and "[downloaded in checkpoints/hayao-v2]" in listed.stdout.splitlines()[0]

    photo = textured((64, 96, 3), seed=3)
    write_rgb(at / "photo.png", photo)
    run = command("anime_gan.stylize", "--model=hayao-v2", "--input=photo.png", "--output=anime.png")
    assert run.returncode == 0, run.stderr
    served = command("anime_gan.stylize", "--model=checkpoints/hayao-v2/saved_model", "--input=photo.png",
                     "--output=served.png")
    assert served.returncode == 0, served.stderr
    # Against the TF1 graph on the same photo (computed in this process).
    from references.v2_reference import tf1_reference_graph

    session, saver, x, y = tf1_reference_graph(seed=13)
    with session:
        saver.restore(session, prefix)
        want = to_uint8(session.run(y, {x: photo[None].astype(np.float32) / 127.5 - 1.0})[0])
    for name in ("anime.png", "served.png"):
        got = read_rgb(at / name)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 0.01, name
