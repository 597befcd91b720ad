"""The PyTorch port's `.pt` weights (bryandlee/animegan2-pytorch), read without PyTorch.

Two layers: the refusal tests need no torch (the files are written by hand); the rest
`importorskip("torch")` (`make test-torch` installs it into .venv), write real files with
torch.save and compare our generator with a PyTorch model of the port's architecture, written here
from its description (docs/original.md, "bryandlee/animegan2-pytorch"), not taken from our code.
"""

import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from references import v2_reference as R

from anime_gan import constants as C
from anime_gan.errors import ModelError, PathNotFoundError
from anime_gan.weights.torch_port import (
    PORT_EPSILON,
    PORT_NAMES,
    convert_torch,
    load_torch_generator,
    port_to_tf1,
    read_state_dict,
)
from anime_gan.constants import WEIGHTS_FILENAME
from anime_gan.weights import load_generator
from helpers import ENV, random_port_state, write_torch_state_dict

needs_reference = pytest.mark.skipif(not os.path.isfile(R.REFERENCE_V2), reason=R.SKIP_REASON)


# ---- without torch: what must never run ------------------------------------------------------------
class _Call:
    """Unpickled by a plain pickle.load, this calls function(*args)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _zip_pt(path, pickled, root="archive"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", pickled)
        zf.writestr(f"{root}/byteorder", "little")
        zf.writestr(f"{root}/version", "3\n")


def test_a_pickled_call_of_os_system_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    pickled = pickle.dumps({"block_a.0.1.weight": _Call(os.system, f"touch {marker}")}, protocol=2)
    assert b"system" in pickled
    path = tmp_path / "evil.pt"
    _zip_pt(path, pickled)
    with pytest.raises(ModelError, match=r"evil.pt asks for the Python object (os|posix).system when it is "
                                         r"unpickled, which could run any code, so it is not read"):
        read_state_dict(path)
    assert not marker.exists()

    legacy = tmp_path / "evil_legacy.pt"  # the pre-1.6 stream: a plain sequence of pickles
    legacy.write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(ModelError, match="asks for the Python object (os|posix).system"):
        read_state_dict(legacy)
    assert not marker.exists()

    # The same pickle through plain pickle.load does run it: the test's payload is real.
    pickle.loads(pickled)
    assert marker.exists()


def test_a_global_hidden_in_a_tensor_record_is_refused(tmp_path):
    """A refused global anywhere (here: builtins.eval inside the storage record of a tensor)."""
    storage = ("storage", _Call(eval, "1+1"), "0", "cpu", 4)
    pickled = pickle.dumps({"k": storage}, protocol=2)
    assert pickle.loads(pickled)["k"][1] == 2
    path = tmp_path / "eval.pt"
    _zip_pt(path, pickled)
    with pytest.raises(ModelError, match=r"asks for the Python object (__builtin__|builtins).eval"):
        read_state_dict(path)


def test_a_pickle_cannot_change_what_the_next_file_is_read_with(tmp_path):
    """BUILD writes attributes into the object on the stack: here float32's storage type is told its
    bytes are float64, and the rebuild function gets a new attribute."""
    from anime_gan.weights import torch_port

    for target in (b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n"):
        pickled = b"\x80\x02" + target + b"}X\x05\x00\x00\x00numpyX\x03\x00\x00\x00<f8sb."
        path = tmp_path / "poison.pt"
        _zip_pt(path, pickled)
        with pytest.raises(ModelError):
            read_state_dict(path)
    assert torch_port.STORAGE_TYPES["FloatStorage"].numpy == "<f4"
    assert not hasattr(torch_port.rebuild_tensor, "numpy")


def _tensor_pickle(size, stride, numel):
    """A state_dict {"k": tensor} pickled by hand (protocol 2 opcodes), as torch.save writes it."""
    def text(t):
        return b"X" + len(t).to_bytes(4, "little") + t.encode()

    def ints(values):
        return b"(" + b"".join(b"J" + v.to_bytes(4, "little") for v in values) + b"t"

    storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"J" + numel.to_bytes(4, "little") + b"tQ"
    record = b"(" + storage + b"J\x00\x00\x00\x00" + ints(size) + ints(stride) + b"\x89}t"
    return b"\x80\x02}" + text("k") + b"ctorch._utils\n_rebuild_tensor_v2\n" + record + b"Rs."


def test_a_tensor_larger_than_its_file_says_is_refused(tmp_path):
    """A stride-0 tensor of 2**31 elements over a 1-element storage: refused before any allocation."""
    path = tmp_path / "huge.pt"
    _zip_pt(path, _tensor_pickle((1 << 16, 1 << 15), (0, 0), 1))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/data/0", np.float32(1).tobytes())
    with pytest.raises(ModelError, match=r"huge.pt holds 8589934592 bytes of tensors, more than this reader takes"):
        read_state_dict(path)
    fine = tmp_path / "fine.pt"  # the same hand-made record, within its storage, reads as it says
    _zip_pt(fine, _tensor_pickle((2, 3), (1, 2), 6))
    with zipfile.ZipFile(fine, "a") as zf:
        zf.writestr("archive/data/0", np.arange(6, dtype=np.float32).tobytes())
    np.testing.assert_array_equal(read_state_dict(fine)["k"], [[0, 2, 4], [1, 3, 5]])
    path = tmp_path / "past_the_end.pt"
    _zip_pt(path, _tensor_pickle((2, 3), (3, 1), 5))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/data/0", np.zeros(5, np.float32).tobytes())
    with pytest.raises(ModelError, match=r"a tensor of size \(2, 3\) reaches past the end of its storage \(5 elements\)"):
        read_state_dict(path)


def test_files_that_are_not_state_dicts_say_so(tmp_path):
    with pytest.raises(PathNotFoundError, match="no PyTorch file at"):
        read_state_dict(tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ModelError, match="notes.pt is not a PyTorch file"):
        read_state_dict(text)
    other_zip = tmp_path / "other.pt"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(ModelError, match="is a zip file but not one torch.save wrote"):
        read_state_dict(other_zip)
    number = tmp_path / "number.pt"
    _zip_pt(number, pickle.dumps(12, protocol=2))
    with pytest.raises(ModelError, match="holds int, not a state_dict of tensors"):
        read_state_dict(number)
    truncated = tmp_path / "truncated.pt"
    _zip_pt(truncated, pickle.dumps({"a": 1}, protocol=2)[:-3])
    with pytest.raises(ModelError, match="cannot read .*truncated.pt as a PyTorch state_dict"):
        read_state_dict(truncated)


def test_the_port_names_map_onto_the_official_77():
    state = random_port_state()
    assert len(state) == C.GENERATOR_V2_VARIABLES == 77
    values = port_to_tf1(state)
    s = C.TF1_SCOPE
    # Spot checks written out from the port's model.py, each with its layout change.
    np.testing.assert_array_equal(values[s + "A/Conv/weights"], state["block_a.0.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(values[s + "B/LayerNorm_1/gamma"], state["block_b.1.2.weight"])
    np.testing.assert_array_equal(values[s + "C/r3/r3/w"], state["block_c.3.layers.1.1.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(values[s + "C/r3/r3/bias"], state["block_c.3.layers.1.1.bias"])
    np.testing.assert_array_equal(values[s + "C/r1/1/beta"], state["block_c.1.layers.1.2.bias"])
    np.testing.assert_array_equal(values[s + "C/r4/Conv_1/weights"][0, 0], state["block_c.4.layers.2.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(values[s + "C/r2/2/gamma"], state["block_c.2.layers.3.weight"])
    np.testing.assert_array_equal(values[s + "C/LayerNorm_1/beta"], state["block_c.5.2.bias"])
    np.testing.assert_array_equal(values[s + "E/Conv_2/weights"], state["block_e.2.1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(values[s + "out_layer/Conv/weights"][0, 0], state["out_layer.0.weight"][:, :, 0, 0].T)


def test_another_state_dict_is_refused_by_name():
    state = random_port_state()
    del state["block_c.2.layers.1.1.bias"]
    state["block_f.0.1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    state["block_a.0.1.weight"] = np.zeros((32, 3, 3, 3), np.float32)
    with pytest.raises(ModelError, match=r"not the AnimeGANv2 generator of bryandlee/animegan2-pytorch: "
                                         r"missing 1: block_c.2.layers.1.1.bias; unexpected 1: block_f.0.1.weight; "
                                         r"wrong shape 1: block_a.0.1.weight \(32, 3, 3, 3\) instead of \(32, 3, 7, 7\)\."):
        port_to_tf1(state)


# ---- with torch: real files, the port's forward ----------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch


def port_generator(torch):
    """The port's Generator as its description (docs/original.md) has it: each ConvNormLReLU a Sequential
    (pad, conv, GroupNorm(1, C), LeakyReLU 0.2); IRB layers = expand k1, depthwise with bias,
    1x1 conv, GroupNorm; forward(align_corners=True) resizes to the sizes recorded on the way down."""
    nn, F = torch.nn, torch.nn.functional

    def cnl(cin, cout, kernel=3, stride=1, pad=1, groups=1, bias=False):
        return nn.Sequential(nn.ReflectionPad2d(pad), nn.Conv2d(cin, cout, kernel, stride, 0, groups=groups, bias=bias),
                             nn.GroupNorm(1, cout), nn.LeakyReLU(0.2))

    down = (0, 1, 0, 1)  # left, right, top, bottom: the official stride-2 padding

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout=256):
            super().__init__()
            hidden = 2 * cin
            self.residual = cin == cout
            self.layers = nn.Sequential(cnl(cin, hidden, kernel=1, pad=0), cnl(hidden, hidden, groups=hidden, bias=True),
                                        nn.Conv2d(hidden, cout, 1, bias=False), nn.GroupNorm(1, cout))

        def forward(self, x):
            y = self.layers(x)
            return x + y if self.residual else y

    class PortGenerator(nn.Module):
        def __init__(self):
            super().__init__()
            self.block_a = nn.Sequential(cnl(3, 32, kernel=7, pad=3), cnl(32, 64, stride=2, pad=down), cnl(64, 64))
            self.block_b = nn.Sequential(cnl(64, 128, stride=2, pad=down), cnl(128, 128))
            self.block_c = nn.Sequential(cnl(128, 128), InvertedResidual(128), InvertedResidual(256),
                                         InvertedResidual(256), InvertedResidual(256), cnl(256, 128))
            self.block_d = nn.Sequential(cnl(128, 128), cnl(128, 128))
            self.block_e = nn.Sequential(cnl(128, 64), cnl(64, 64), cnl(64, 32, kernel=7, pad=3))
            self.out_layer = nn.Sequential(nn.Conv2d(32, 3, 1, bias=False), nn.Tanh())

        def forward(self, x, align_corners=True):
            a = self.block_a(x)
            y = self.block_c(self.block_b(a))
            if align_corners:
                y = F.interpolate(y, a.shape[-2:], mode="bilinear", align_corners=True)
            else:
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = self.block_d(y)
            if align_corners:
                y = F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=True)
            else:
                y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            return self.out_layer(self.block_e(y))

    return PortGenerator()


def seeded_port_generator(torch, seed=0):
    """Default PyTorch initialisation, plus random GroupNorm gammas and betas and depthwise biases
    (their defaults 1, 0, ~0 would hide a swap)."""
    torch.manual_seed(seed)
    model = port_generator(torch).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand_like(p) * 0.8 + 0.6 if name.endswith("2.weight") or name.endswith("3.weight")
                        else torch.randn_like(p) * 0.2)
    return model


def port_forward(torch, model, image):
    """The port's forward on an NHWC float image, returned NHWC."""
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def port_file(torch, tmp_path_factory):
    model = seeded_port_generator(torch)
    path = tmp_path_factory.mktemp("port") / "port.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_the_model_written_here_has_the_ports_keys(torch):
    """The 77 keys and shapes the port's state_dict has (so the model above is the port's)."""
    state = port_generator(torch).state_dict()
    assert sorted(state) == sorted(port for port, _, _ in PORT_NAMES)
    assert tuple(state["block_c.1.layers.1.1.weight"].shape) == (256, 1, 3, 3)
    assert tuple(state["block_c.2.layers.2.weight"].shape) == (256, 512, 1, 1)
    assert sum(v.numel() for v in state.values()) == C.GENERATOR_V2_PARAMS


@pytest.mark.parametrize("height,width", [(256, 256), (131, 75)])
def test_converted_weights_compute_the_ports_forward(torch, port_file, height, width):
    model, path = port_file
    image = np.random.default_rng(height).uniform(-1, 1, (1, height, width, 3)).astype(np.float32)
    expected = port_forward(torch, model, image)
    assert expected.shape == (1, height, width, 3)
    generator = load_torch_generator(path)
    assert generator.resize == "align_corners" and generator.epsilon == PORT_EPSILON
    got = generator(image).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.abs(expected).mean() > 0.1  # not a flat output that anything would match


def test_the_options_travel_with_the_converted_file(torch, port_file, tmp_path):
    model, path = port_file
    written = convert_torch(path, tmp_path / "converted")
    assert written == tmp_path / "converted" / WEIGHTS_FILENAME
    generator = load_generator(tmp_path / "converted")  # no flag: resize and epsilon come from the file
    assert (generator.resize, generator.epsilon) == ("align_corners", PORT_EPSILON)
    image = np.random.default_rng(5).uniform(-1, 1, (1, 60, 44, 3)).astype(np.float32)
    np.testing.assert_allclose(generator(image).numpy(), port_forward(torch, model, image), atol=1e-4, rtol=0)

    convert_torch(path, tmp_path / "official_graph", resize="tf1")
    official = load_generator(tmp_path / "official_graph")
    assert (official.resize, official.epsilon) == ("tf1", PORT_EPSILON)
    np.testing.assert_array_equal(official.out_kernel.numpy(), generator.out_kernel.numpy())


def test_tensor_layouts_dtypes_and_wrappers_read_exactly(torch, tmp_path):
    """float16, bfloat16, float64 and int64 storages; a storage offset; transposed and strided views;
    a scalar and an empty tensor; the legacy (pre-1.6) stream; a training checkpoint around a
    DataParallel state_dict."""
    torch.manual_seed(1)
    shared = torch.randn(40)
    tensors = {
        "half_transposed": torch.randn(3, 5).half().t(),
        "bfloat16": torch.randn(6).bfloat16(),
        "float64": torch.randn(2, 3, dtype=torch.float64),
        "int64": torch.arange(7),
        "offset": shared[13:29].view(4, 4),
        "strided": shared.view(5, 8)[1:, ::3],
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 3),
    }
    expected = {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()}
    for name, obj, legacy in [
        ("plain.pt", tensors, False),
        ("legacy.pt", tensors, True),
        ("wrapped.pt", {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tensors.items()}}, False),
    ]:
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=not legacy)
        got = read_state_dict(tmp_path / name)
        assert sorted(got) == sorted(expected), name
        for k, v in expected.items():
            assert got[k].shape == v.shape and got[k].dtype == v.dtype, (name, k)
            np.testing.assert_array_equal(got[k], v, err_msg=f"{name}: {k}")


def test_the_helpers_hand_written_pt_is_what_torch_load_reads(torch, tmp_path):
    """helpers.write_torch_state_dict (the .pt the default tests build without torch) is a file torch reads."""
    state = {"block_a.0.1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "scalar": np.float32(1.5),
             **random_port_state(seed=5)}
    write_torch_state_dict(tmp_path / "hand.pt", state)
    loaded = torch.load(tmp_path / "hand.pt", weights_only=True)
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == torch.float32
        np.testing.assert_array_equal(loaded[key].numpy(), value)


def test_half_precision_weights_load_as_their_float32_values(torch, port_file, tmp_path):
    model, _ = port_file
    half = {k: v.half() for k, v in model.state_dict().items()}
    torch.save(half, tmp_path / "half.pt")
    values = port_to_tf1(read_state_dict(tmp_path / "half.pt"))
    name = C.TF1_SCOPE + "C/r2/r2/w"
    np.testing.assert_array_equal(values[name], half["block_c.2.layers.1.1.weight"].float().numpy().transpose(2, 3, 0, 1))


def psnr(a, b):
    """PSNR of images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


@pytest.mark.slow
@needs_reference
def test_which_mode_is_faithful_to_what_on_real_photos(torch):
    """The real Hayao weights (the reference's, dequantised) in the port's model: our align_corners
    mode is the port's forward; the official graph (resize="tf1", either epsilon) is 20-26 dB from it
    on real photos (measured 21.0-23.8 dB), so a port file trained with align-corners resizing must
    run in that mode, and the official weights give another picture through the port."""
    from anime_gan.nets import build_generator
    from anime_gan.weights import tf1_to_generator

    it = R.interpreter()
    official = R.official_weights(it)
    to_port = {"conv": (3, 2, 0, 1), "depthwise": (2, 3, 0, 1), "vector": (0,)}
    model = port_generator(torch).eval()
    model.load_state_dict({port: torch.from_numpy(np.ascontiguousarray(official[C.TF1_SCOPE + name].transpose(to_port[layout])))
                           for port, name, layout in PORT_NAMES})
    generators = {(resize, eps): tf1_to_generator(official, build_generator(arch="v2", resize=resize, epsilon=eps))
                  for resize, eps in [("align_corners", PORT_EPSILON), ("tf1", PORT_EPSILON), ("tf1", C.LN_EPSILON)]}
    for photo in R.photos(256):
        x = (photo.astype(np.float32) / 127.5 - 1)[None]
        port = port_forward(torch, model, x)
        scores = {key: psnr(g(x).numpy(), port) for key, g in generators.items()}
        assert scores[("align_corners", PORT_EPSILON)] > 100, scores
        assert 20 < scores[("tf1", PORT_EPSILON)] < 26, scores
        assert abs(scores[("tf1", C.LN_EPSILON)] - scores[("tf1", PORT_EPSILON)]) < 0.05, scores


def test_the_convert_command_takes_a_pt_file(torch, port_file, tmp_path):
    model, path = port_file
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "anime_gan.convert", f"--pytorch={path}", f"--output={out}",
                          "--nosaved_model"], capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out / WEIGHTS_FILENAME}" in run.stdout
    generator = load_generator(out)
    image = np.random.default_rng(9).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(generator(image).numpy(), port_forward(torch, model, image), atol=1e-4, rtol=0)



def test_the_convert_command_says_which_source_to_pass(tmp_path):
    """Usage errors, checked before anything is read (one light process runs main on each argv)."""
    cases = [
        (["--pytorch=a.pt", "--tf1_checkpoint=b"], "pass one of --tf1_checkpoint and --pytorch, not both."),
        ([], "pass --tf1_checkpoint=PREFIX (an official TF1 checkpoint) or --pytorch=FILE "
             "(a .pt file of bryandlee/animegan2-pytorch)."),
        (["--tf1_checkpoint=b", "--resize=tf1"], "--resize applies to --pytorch only"),
    ]
    code = textwrap.dedent(f"""
        from absl import flags
        from anime_gan import convert
        from anime_gan.errors import ConfigError
        convert.define_flags()
        for args in {[a for a, _ in cases]!r}:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(["convert", *args, "--output={tmp_path / 'out'}"])
            try:
                convert.main(["convert"])
                print("no error")
            except ConfigError as e:
                print(e)
        """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == len(cases)
    for line, (_, message) in zip(lines, cases):
        assert line.startswith(message)
    assert "tensorflow" not in run.stderr.lower()
    assert not (tmp_path / "out").exists()


def test_a_pt_file_is_a_model_path_and_odd_sizes_are_not_padded(torch, port_file):
    """load_generator and the served graph take a .pt as it is: the port's align-corners generator runs
    on the image as it is (padding to a multiple of 4 would move its resize grid: up to 68 levels off)."""
    from anime_gan.deploy.saved_model import StylizeModule

    model, path = port_file
    g = load_generator(path)
    assert g.arch == "v2" and g.options() == {"resize": "align_corners", "epsilon": 1e-5}
    image = np.random.default_rng(3).integers(0, 256, (1, 75, 131, 3), dtype=np.uint8)
    served = StylizeModule(g).serving_default(tf.constant(image))["images"].numpy()
    want = port_forward(torch, model, image.astype(np.float32) / 127.5 - 1)
    want = np.clip((want + 1) / 2 * 255, 0, 255).astype(np.uint8)  # the contract: truncated
    assert served.shape == (1, 75, 131, 3)
    assert np.abs(served.astype(int) - want).max() <= 1
