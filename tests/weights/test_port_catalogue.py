"""Issue 21 item 1: the PyTorch port's own models (face-paint-512-v2, face-paint-512-v1, celeba-distill)
in the catalogue: downloaded like the official entries, converted in the port's own mode, refused when
the file is not the port's generator.

No torch is needed: the `.pt` files are written here by `helpers.write_torch_state_dict` (which a
torch test checks against `torch.load`), served by `helpers.LocalServer` on 127.0.0.1 under the
catalogue's GitHub paths. What the download installs is compared with the same file converted by
`convert_torch` (what `python -m anime_gan.convert --pytorch` runs), a path that shares no code with
the download, the manifest or the name lookup."""

import hashlib
import json
import os

import numpy as np
import pytest

from anime_gan.errors import ModelError
from anime_gan.weights import catalogue, install
from data_prep.report import DataError
from helpers import random_port_state, write_torch_state_dict

PORT_PATH = "bryandlee/animegan2-pytorch/raw/main/weights/{}.pt"
FACE_V2 = PORT_PATH.format("face_paint_512_v2")


@pytest.fixture(scope="module")
def port_file(tmp_path_factory):
    """A .pt of the port's generator (seeded weights) and its bytes."""
    path = tmp_path_factory.mktemp("port") / "face_paint_512_v2.pt"
    write_torch_state_dict(path, random_port_state(seed=21))
    return path, path.read_bytes()


@pytest.fixture(scope="module")
def port_state():
    return random_port_state(seed=2)


def one_sentence(message):
    assert "\n" not in message and message.endswith(".") and ". " not in message, message


def test_the_ports_entries_say_where_they_come_from_and_the_size_they_were_trained_at(at):
    gh = "https://github.com/"
    expected = {"face-paint-512-v2": ("face_paint_512_v2", 512), "face-paint-512-v1": ("face_paint_512_v1", 512),
                "celeba-distill": ("celeba_distill", 256)}
    for name, (stem, size) in expected.items():
        e = catalogue.CATALOGUE[name]
        assert (e.arch, e.pytorch, e.archive, e.trained_size) == ("v2", True, False, size)
        assert e.urls() == [f"{gh}bryandlee/animegan2-pytorch/raw/main/weights/{stem}.pt"]
        assert e.urls("http://m.example/") == [f"http://m.example/{PORT_PATH.format(stem)}"]
        assert e.repository == "bryandlee/animegan2-pytorch" and "MIT" in e.terms
        assert e.files[0].sha256 is None  # recorded on the first download, not pinned
    # The official entries were trained on 256x256 crops and carry the AnimeGAN terms.
    for name in ("hayao-v2", "hayao-v2-99", "paprika-v2", "shinkai-v2", "hayao-v1"):
        e = catalogue.CATALOGUE[name]
        assert e.trained_size == 256 and not e.pytorch and e.repository.startswith("TachibanaYoshino/AnimeGAN")
        assert "non-commercial" in e.terms
    # `list`: two lines an entry, the second with its origin and terms.
    lines = catalogue.listing()
    assert len(lines) == 2 * len(catalogue.CATALOGUE) == 16
    face = lines[2 * list(catalogue.CATALOGUE).index("face-paint-512-v2"):][:2]
    assert face[0].startswith("face-paint-512-v2  PyTorch port face_paint_512_v2 (")
    assert face[0].endswith(", trained at 512x512  [not downloaded]")
    assert face[1].split() == ["from", "https://github.com/bryandlee/animegan2-pytorch;", "terms:", "MIT", "licence",
                               "(its", "LICENSE)"]


def test_a_port_model_downloads_resumes_and_computes_as_convert_pytorch(at, serve, port_file):
    from anime_gan.web import choices
    from anime_gan.weights import convert_torch, load_generator, load_torch_generator, resolve_model

    path, data = port_file
    folder, staging = at / "checkpoints" / "face-paint-512-v2", at / "checkpoints" / "face-paint-512-v2.download"
    server = serve({FACE_V2: data}, break_once=[FACE_V2])
    # Cut halfway, no retry allowed: the half is kept, nothing is installed.
    with pytest.raises(DataError, match="run the same command again to resume"):
        install.download("face-paint-512-v2", mirror=server.url, retries=0, backoff=0, progress=False)
    assert (staging / "face_paint_512_v2.pt.part").stat().st_size == len(data) // 2 and not folder.exists()
    # Run again: resumed from the half, converted, installed.
    result = install.download("face-paint-512-v2", mirror=server.url, retries=0, backoff=0, progress=False)
    assert server.requests == [(FACE_V2, None), (FACE_V2, f"bytes={len(data) // 2}-")]
    assert result.downloaded and sorted(os.listdir(folder)) == ["SOURCE.json", "generator.weights.h5"]
    assert not staging.exists()
    manifest = json.loads((folder / "SOURCE.json").read_text())
    assert manifest["files"] == [{"url": f"{server.url}/{FACE_V2}", "bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest(), "expected_sha256": None}]
    assert manifest["architecture"] == "v2" and manifest["generator_variables"] == 77
    assert manifest["checkpoint"] == "face_paint_512_v2.pt"
    assert catalogue.install_problem(folder, "face-paint-512-v2", saved_model=False) is None

    # The name is a model path; the generator runs in the port's own mode.
    source = resolve_model("face-paint-512-v2")
    assert source.kind == "weights" and source.path == folder.relative_to(at) / "generator.weights.h5"
    g = load_generator("face-paint-512-v2")
    assert g.arch == "v2" and g.options() == {"resize": "align_corners", "epsilon": 1e-5}
    # Independent path: the same file through convert_torch (`convert --pytorch`), loaded by path.
    converted = load_generator(convert_torch(path, at / "converted"))
    image = np.random.default_rng(4).uniform(-1, 1, (1, 37, 53, 3)).astype(np.float32)  # odd sizes
    out = g(image).numpy()
    assert out.shape == image.shape  # align-corners resize back to the recorded sizes
    assert 0.05 < out.std() and np.abs(out).max() < 0.999  # a real picture, not a saturated one
    np.testing.assert_array_equal(out, converted(image).numpy())
    for a, b in zip(g.weights, converted.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The mode matters: the official graph's x2 upsampling gives another picture from the same weights.
    legacy = load_torch_generator(path, resize="tf1")(image[:, :36, :52]).numpy()
    assert np.abs(legacy - g(image[:, :36, :52]).numpy()).max() > 1e-3

    # The page offers it by name, as the port's weights.
    [choice] = choices.find_models(directory=at / "checkpoints")
    assert (choice.name, choice.arch, choice.origin) == ("face-paint-512-v2", "v2", "PyTorch port weights")
    row = 2 * list(catalogue.CATALOGUE).index("face-paint-512-v2")
    assert catalogue.listing()[row].endswith("[downloaded in checkpoints/face-paint-512-v2]")
    # Converted by hand (the manual route: no SOURCE.json), the name and the page still find it.
    (folder / "SOURCE.json").unlink()
    assert catalogue.listing()[row].endswith("[in checkpoints/face-paint-512-v2, not from this command]")
    assert [c.name for c in choices.find_models(directory=at / "checkpoints")] == ["face-paint-512-v2"]
    assert resolve_model("face-paint-512-v2") == source


@pytest.mark.parametrize("case", ["another state_dict", "one tensor of another shape", "an HTML page"])
def test_a_file_that_is_not_the_ports_generator_is_refused_and_nothing_remains(at, serve, case, tmp_path,
                                                                                  port_state):
    state = dict(port_state)
    if case == "another state_dict":
        state = {f"layer{i}.weight": v for i, v in enumerate(state.values())}
    elif case == "one tensor of another shape":
        state["block_a.0.1.weight"] = np.zeros((32, 3, 3, 3), np.float32)
    if case == "an HTML page":
        data = b"<html><body>Not Found</body></html>"
    else:
        data = write_torch_state_dict(tmp_path / "other.pt", state).read_bytes()
    server = serve({PORT_PATH.format("celeba_distill"): data})
    with pytest.raises(ModelError) as info:
        install.download("celeba-distill", mirror=server.url, retries=0, backoff=0, progress=False)
    message = str(info.value)
    one_sentence(message)
    assert message.startswith("the download of celeba-distill (PyTorch port celeba_distill (portraits, a "
                              "distillation)) is not the port's generator weights (")
    assert message.endswith("); it was removed, check the mirror if one is set or run again.")
    reason = {"another state_dict": "this is not the AnimeGANv2 generator of bryandlee/animegan2-pytorch: missing 77: ",
              "one tensor of another shape": "this is not the AnimeGANv2 generator of bryandlee/animegan2-pytorch: "
                                             "wrong shape 1: block_a.0.1.weight (32, 3, 3, 3) instead of (32, 3, 7, 7)",
              "an HTML page": "celeba_distill.pt is not a PyTorch file"}[case]
    assert reason in message
    assert os.listdir(at / "checkpoints") == []  # no model, no staging folder, no partial file
