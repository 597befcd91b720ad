"""The PyTorch port's weights (bryandlee/animegan2-pytorch `.pt` files), read without PyTorch.

    python -m anime_gan.convert --pytorch=face_paint_512_v2.pt --output=checkpoints/face_paint_v2

`read_state_dict(path)` reads a file written by `torch.save(model.state_dict(), path)`, the zip
format of torch >= 1.6 (`<root>/data.pkl`, `<root>/data/<key>`, `<root>/byteorder`) or the older
single-stream format, into {key: numpy array}. Its pickle is read by an unpickler that knows only
what a state_dict of tensors needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`
and the parameter variants, the storage classes `torch.FloatStorage`, `torch.HalfStorage`, ...);
any other global, which could run code when unpickled, is refused before it is called. Storage
offsets and strides are honoured; each array keeps its storage's type (bfloat16, which numpy lacks,
becomes float32), and `port_to_tf1` casts to float32.
A state_dict wrapped in a training checkpoint (`{"state_dict": ...}` and similar) or saved from a
`DataParallel` (`module.` prefixes) is unwrapped.

`port_to_tf1(state)` maps the port's 77 tensors to the official TF1 variable names (their
`model.py`: block_a..block_e, out_layer; see PORT_NAMES) and layouts (conv OIHW -> HWIO,
depthwise [C,1,3,3] -> [3,3,C,1]). `load_torch_generator` builds a `GeneratorV2` from them with the
port's forward: `resize="align_corners"` (resize to the recorded sizes, output = input size) and
GroupNorm's epsilon 1e-5 (PORT_EPSILON). `convert_torch` writes it as `generator.weights.h5`; the
options travel in that file, so loading it needs no flag.

Errors (one sentence each): PathNotFoundError (no file), ModelError (not a PyTorch file, a pickle
that asks for anything else than tensors, a state_dict that is not the port's generator).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import pathlib
import pickle
import struct
import zipfile

import numpy as np

from anime_gan import constants as C
from anime_gan.errors import ModelError, PathNotFoundError
from anime_gan.nets import GeneratorV2, build_generator
from anime_gan.weights.keras_h5 import save_generator
from anime_gan.weights.tf1 import tf1_to_generator

PORT_EPSILON = 1e-5  # torch.nn.GroupNorm's default eps, which the port's layers keep
PORT_RESIZE = "align_corners"  # the port's default forward(align_corners=True)
MAX_BYTES = 1 << 30  # the tensors of one file together; the generator holds 8.6 MB

# torch.save's legacy (pre-1.6) stream: five pickles (magic number, protocol, system info, the
# object, the storage keys), then each storage as an int64 element count and its bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "generator", "netG", "G", "params_ema", "params")


@dataclasses.dataclass(frozen=True, slots=True)
class _DType:
    name: str
    numpy: str  # little-endian numpy type of the bytes on disk

    @property
    def itemsize(self):
        return np.dtype(self.numpy).itemsize


# The storage classes a state_dict's pickle may name (`torch.FloatStorage`, ...) and how their bytes read.
STORAGE_TYPES = {
    "FloatStorage": _DType("float32", "<f4"),
    "HalfStorage": _DType("float16", "<f2"),
    "BFloat16Storage": _DType("bfloat16", "<u2"),  # numpy has no bfloat16: the top half of a float32
    "DoubleStorage": _DType("float64", "<f8"),
    "LongStorage": _DType("int64", "<i8"),
    "IntStorage": _DType("int32", "<i4"),
    "ShortStorage": _DType("int16", "<i2"),
    "CharStorage": _DType("int8", "i1"),
    "ByteStorage": _DType("uint8", "u1"),
    "BoolStorage": _DType("bool", "?"),
    "UntypedStorage": _DType("uint8", "u1"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage named by the pickle; its bytes are read once the pickle has been read."""

    key: str
    dtype: _DType
    numel: int
    offset: int = 0  # legacy storage views: elements into the root storage


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """What the pickle's torch._utils._rebuild_tensor(_v2) calls make: a reference to a tensor of a storage.

    Arguments: (storage, offset, size, stride, requires_grad, hooks, metadata); a layout that is not
    non-negative integers of matching lengths is a ModelError."""
    if not isinstance(storage, _StorageRef):
        raise ModelError("a tensor in this file has no storage of its own.")
    ints = (storage_offset, *size, *stride)
    if not all(type(v) is int and v >= 0 for v in ints) or len(size) != len(stride):
        raise ModelError(f"a tensor in this file has an invalid layout (size {size}, stride {stride}).")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    """torch._utils._rebuild_parameter(_with_state): (tensor, requires_grad, hooks[, state])."""
    return data


# The only globals a state_dict's pickle may name. Everything else is refused unread. A pickle can
# also write attributes into what it names (BUILD): the storage types are frozen slot-only objects
# and OrderedDict a built-in type, which refuse that, and each function is handed out as a fresh
# wrapper, so no file can change what the next one is read with.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): dtype for name, dtype in STORAGE_TYPES.items()},
}

# What a malformed pickle or storage raises while it is read (never a refused global: that is a
# ModelError already).
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
              AttributeError, struct.error, UnicodeDecodeError, OverflowError, RecursionError)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, path, legacy=False):
        super().__init__(file)
        self.path, self.legacy = path, legacy
        self.storages = {}  # root key: a _StorageRef of it, for every storage the pickle names

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise ModelError(
                f"{self.path} asks for the Python object {module}.{name} when it is unpickled, which could run "
                "any code, so it is not read: only a state_dict of tensors is (torch.save(model.state_dict(), FILE)).")
        if isinstance(found, _DType) or found is collections.OrderedDict:
            return found
        return lambda *args: found(*args)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise ModelError(f"{self.path} refers to an object {str(pid)[:80]} that is not a tensor storage.")
        if self.legacy:  # ('storage', type, root key, location, numel, view metadata)
            if len(pid) != 6:
                raise ModelError(f"{self.path} has a malformed storage record.")
            _, dtype, key, _location, numel, view = pid
        else:  # ('storage', type, key, location, numel)
            if len(pid) != 5:
                raise ModelError(f"{self.path} has a malformed storage record.")
            _, dtype, key, _location, numel = pid
            view = None
        if not isinstance(dtype, _DType) or type(numel) is not int or numel < 0:
            raise ModelError(f"{self.path} has a malformed storage record.")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        known = self.storages.setdefault(key, _StorageRef(key, dtype, numel))
        if known.dtype != dtype or known.numel != numel:
            raise ModelError(f"{self.path} names its storage {key} twice with different types or sizes.")
        if view is None:
            return known
        _view_key, offset, view_numel = view
        if not (type(offset) is int and type(view_numel) is int and 0 <= offset and offset + view_numel <= numel):
            raise ModelError(f"{self.path} has a malformed storage view.")
        return _StorageRef(key, dtype, numel, offset)


def _unpickle(file, path, legacy=False):
    """(the unpickled object, {root key: _StorageRef} of the storages it names)."""
    unpickler = _StateDictUnpickler(file, path, legacy)
    return unpickler.load(), unpickler.storages


# ---- the file formats ------------------------------------------------------------------------------
def _storage_array(raw, dtype, big_endian):
    array = np.frombuffer(raw, dtype=np.dtype(dtype.numpy).newbyteorder(">" if big_endian else "<"))
    if dtype.name == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.dtype(dtype.numpy).newbyteorder("="), copy=False)


def _tensor_array(ref, storages, path):
    flat = storages[ref.storage.key][ref.storage.offset:]
    offset, size, stride = ref.offset, ref.size, ref.stride
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= len(flat):
        raise ModelError(f"{path}: a tensor of size {size} reaches past the end of its storage ({len(flat)} elements).")
    if not all(size):
        return np.zeros(size, flat.dtype)
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride])
    return np.array(view)


def _check_total(counts, path):
    """counts: (elements, bytes each) of the storages or arrays to be made."""
    total = sum(n * size for n, size in counts)
    if total > MAX_BYTES:
        raise ModelError(f"{path} holds {total} bytes of tensors, more than this reader takes ({MAX_BYTES}); "
                         "it is not an AnimeGANv2 generator.")


def _read_zip(path, zf):
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ModelError(f"{path} is a zip file but not one torch.save wrote (no single <name>/data.pkl in it).")
    root = pickles[0][: -len("data.pkl")]
    with zf.open(pickles[0]) as f:
        result, _ = _unpickle(f, path)
    big_endian = False
    if root + "byteorder" in zf.namelist():
        big_endian = zf.read(root + "byteorder").strip() == b"big"

    def load(refs):
        """{key: flat array} of the storages of `refs` (the state_dict's own)."""
        refs = list({r.key: r for r in refs}.values())
        _check_total([(r.numel, r.dtype.itemsize) for r in refs], path)
        storages = {}
        for ref in refs:
            name = f"{root}data/{ref.key}"
            nbytes = ref.numel * ref.dtype.itemsize
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise ModelError(f"{path} lacks the tensor data {name}; the file is incomplete.") from None
            if info.file_size < nbytes:
                raise ModelError(f"{path}: {name} holds {info.file_size} bytes, not the {nbytes} its tensor needs; "
                                 "the file is truncated.")
            with zf.open(info) as f:
                storages[ref.key] = _storage_array(f.read(nbytes), ref.dtype, big_endian)
        return storages

    return result, load


def _read_legacy(path, f):
    """torch.save(..., _use_new_zipfile_serialization=False) and torch < 1.6."""
    if _unpickle(f, path)[0] != _LEGACY_MAGIC:
        raise ModelError(f"{path} is not a PyTorch file (neither torch.save's zip format nor its older stream).")
    protocol = _unpickle(f, path)[0]
    if protocol != _LEGACY_PROTOCOL:
        raise ModelError(f"{path} uses PyTorch's serialization protocol {protocol}, which is not read here; "
                         "re-save it with torch.save from torch >= 1.6.")
    info = _unpickle(f, path)[0]
    big_endian = isinstance(info, dict) and info.get("little_endian") is False
    result, named = _unpickle(f, path, legacy=True)
    keys = _unpickle(f, path)[0]
    if not isinstance(keys, list):
        raise ModelError(f"{path} has a malformed storage list.")
    keys = [k.decode("ascii") if isinstance(k, bytes) else str(k) for k in keys]
    if set(keys) != set(named):
        raise ModelError(f"{path} lists other storages than its tensors name; the file is corrupt.")

    def load(_refs):
        """{key: flat array} of every storage: they follow each other, so all are read in order."""
        _check_total([(r.numel, r.dtype.itemsize) for r in named.values()], path)
        storages = {}
        for key in keys:
            dtype = named[key].dtype
            head = f.read(8)
            if len(head) != 8:
                raise ModelError(f"{path} ends inside its tensor data; the file is truncated.")
            (numel,) = struct.unpack(">q" if big_endian else "<q", head)
            nbytes = numel * dtype.itemsize
            if numel != named[key].numel:
                raise ModelError(f"{path} has a malformed tensor record.")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ModelError(f"{path} ends inside its tensor data; the file is truncated.")
            storages[key] = _storage_array(raw, dtype, big_endian)
        return storages

    return result, load


def _state_dict_refs(obj, path):
    """The {key: _TensorRef} in what the pickle held: a state_dict, or one inside a known wrapper."""
    def tensors_only(d):
        return isinstance(d, dict) and d and all(isinstance(v, _TensorRef) for v in d.values())

    if tensors_only(obj):
        state = obj
    else:
        inner = [obj[k] for k in _WRAPPER_KEYS if isinstance(obj, dict) and tensors_only(obj.get(k))]
        if not inner:
            what = (f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict)
                    else type(obj).__name__)
            raise ModelError(f"{path} holds {what}, not a state_dict of tensors "
                             "(torch.save(model.state_dict(), FILE)).")
        state = inner[0]
    state = {str(k): v for k, v in state.items()}
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path):
    """{key: numpy array} of a `.pt` file written by torch.save; see the module docstring."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise PathNotFoundError(f"no PyTorch file at {path}.")
    if not path.is_file():
        raise ModelError(f"{path} is not a file; pass a .pt file written by torch.save.")
    try:
        with open(path, "rb") as f, contextlib.ExitStack() as stack:
            if zipfile.is_zipfile(f):
                obj, load = _read_zip(path, stack.enter_context(zipfile.ZipFile(f)))
            else:
                f.seek(0)
                if f.read(1) != b"\x80":  # the legacy stream starts with a pickle (protocol >= 2)
                    raise ModelError(f"{path} is not a PyTorch file (neither torch.save's zip format nor its "
                                     "older stream); a tar file from torch < 0.4 needs re-saving with a newer torch.")
                f.seek(0)
                obj, load = _read_legacy(path, f)
            refs = _state_dict_refs(obj, path)
            # A tensor may repeat its storage's elements (stride 0): count what the arrays will hold.
            _check_total([(math.prod(r.size), r.storage.dtype.itemsize) for r in refs.values()], path)
            storages = load([r.storage for r in refs.values()])
            return {k: _tensor_array(ref, storages, path) for k, ref in refs.items()}
    except ModelError:
        raise
    except (zipfile.BadZipFile, *_MALFORMED) as e:
        raise ModelError(f"cannot read {path} as a PyTorch state_dict: {str(e).strip() or type(e).__name__}.") from None


# ---- the port's names ------------------------------------------------------------------------------
def _port_names():
    """[(port key, official name without generator/G_MODEL/, layout)]: layout "conv" (OIHW), "depthwise"
    ([C,1,3,3]) or "vector". In the port's model.py each ConvNormLReLU is a Sequential whose item 1
    is the Conv2d and item 2 the GroupNorm (weight = gamma, bias = beta)."""
    names = []

    def cnl(port, conv, norm, depthwise=None):
        if depthwise:
            names.append((port + "1.weight", depthwise + "/w", "depthwise"))
            names.append((port + "1.bias", depthwise + "/bias", "vector"))
        else:
            names.append((port + "1.weight", conv + "/weights", "conv"))
        names.append((port + "2.weight", norm + "/gamma", "vector"))
        names.append((port + "2.bias", norm + "/beta", "vector"))

    def suffix(i):
        return f"_{i}" if i else ""

    for block, scope, count in (("block_a", "A", 3), ("block_b", "B", 2), ("block_d", "D", 2), ("block_e", "E", 3)):
        for i in range(count):
            cnl(f"{block}.{i}.", f"{scope}/Conv{suffix(i)}", f"{scope}/LayerNorm{suffix(i)}")
    cnl("block_c.0.", "C/Conv", "C/LayerNorm")
    for k in range(1, C.N_INVERTED_RESIDUAL_V2 + 1):
        port, r = f"block_c.{k}.layers.", f"C/r{k}"
        cnl(port + "0.", f"{r}/Conv", f"{r}/LayerNorm")
        cnl(port + "1.", None, f"{r}/1", depthwise=f"{r}/r{k}")
        names.append((port + "2.weight", f"{r}/Conv_1/weights", "conv"))
        names.append((port + "3.weight", f"{r}/2/gamma", "vector"))
        names.append((port + "3.bias", f"{r}/2/beta", "vector"))
    cnl(f"block_c.{C.N_INVERTED_RESIDUAL_V2 + 1}.", "C/Conv_1", "C/LayerNorm_1")
    names.append(("out_layer.0.weight", "out_layer/Conv/weights", "conv"))
    return names


PORT_NAMES = _port_names()
_TO_TF1_LAYOUT = {"conv": (2, 3, 1, 0), "depthwise": (2, 3, 0, 1), "vector": (0,)}


def _listed(names, limit=4):
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def port_to_tf1(state, generator=None):
    """{official TF1 name: float32 array in our layout} from the port's state_dict; any key missing,
    unexpected or of another shape than the generator's (`generator`, else a new GeneratorV2) is
    refused in one sentence naming them."""
    if generator is None:
        generator = GeneratorV2()
    expected = {name: tuple(v.shape) for name, v in generator.tf1_variable_map().items()}
    ports = {port: (C.TF1_SCOPE + name, layout) for port, name, layout in PORT_NAMES}
    missing = set(ports) - set(state)
    unexpected = set(state) - set(ports)
    values, wrong = {}, []
    for port in set(ports) & set(state):
        name, layout = ports[port]
        array = np.asarray(state[port])
        axes = _TO_TF1_LAYOUT[layout]
        value = array.transpose(axes) if array.ndim == len(axes) else None
        if value is None or value.shape != expected[name]:
            want = tuple(expected[name][a] for a in np.argsort(axes))
            wrong.append(f"{port} {tuple(array.shape)} instead of {want}")
            continue
        values[name] = np.ascontiguousarray(value, dtype=np.float32)
    if missing or unexpected or wrong:
        found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        parts = [f"{label} {len(items)}: {_listed(items)}" for label, items in found if items]
        raise ModelError("this is not the AnimeGANv2 generator of bryandlee/animegan2-pytorch: "
                         + "; ".join(parts) + ".")
    return values


def load_torch_generator(path, resize=PORT_RESIZE, policy=None):
    """A ready GeneratorV2 with the weights of a port `.pt` file, computing as the port's forward
    (resize="align_corners", eps 1e-5); resize="tf1" gives the official graph's legacy x2 instead."""
    state = read_state_dict(path)
    generator = build_generator(policy, arch="v2", resize=resize, epsilon=PORT_EPSILON)
    return tf1_to_generator(port_to_tf1(state, generator), generator)


def convert_torch(path, output_dir, resize=PORT_RESIZE):
    """Port `.pt` file -> `output_dir/generator.weights.h5` (with its resize and epsilon). Returns its path."""
    return save_generator(load_torch_generator(path, resize), output_dir)

