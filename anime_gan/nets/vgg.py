"""The perceptual network: VGG19 up to `conv4_4` before its ReLU, and where its weights come from.

The content and style losses compare VGG19 features (ImageNet weights converted from Caffe) of
photos, anime frames and generated images. As in the original, the network sees Caffe's
preprocessing: [-1, 1] -> [0, 255], RGB -> BGR, minus the BGR channel means; its convolutions are
3x3 'same' with bias and ReLU, max pools 2x2 stride 2 ('SAME' padding, as the original's
`tf.nn.max_pool`, which differs from Keras' VGG19 on odd sizes) after conv1_2, conv2_2 and conv3_4,
and the output is conv4_4 *before* its ReLU.

Weight sources (`load_vgg19(weights=...)`):
- ``"imagenet"``: the Keras ImageNet notop file, via Keras' download cache (``~/.keras/models``), so
  a machine that already ran ``keras.applications.VGG19(weights="imagenet")`` downloads nothing.
- a path ending ``.npy``: the original's ``vgg19.npy`` (a pickled dict ``"conv1_1" -> [kernel, bias]``).
- a path ending ``.h5``: a Keras VGG19 weights file (the legacy Keras 2 layout Keras downloads, a
  whole-model ``.h5``, or a Keras 3 ``.weights.h5`` saved from ``keras.applications.VGG19``).
- ``"random"``: seeded random weights that keep the image (`looks_linear_weights`), with a warning
  (for tests and smoke runs only).
- ``"auto"``: ImageNet if it can be had (cache, then download), otherwise random with a loud warning.
A source that was asked for by name and fails raises `VGGWeightsError`; only ``"auto"`` falls back.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.errors import UserError
from anime_gan.image_io import unit_range_to_pixels

log = logging.getLogger(__name__)

# (official name, Keras applications name, output channels), in order.
VGG19_CONV_LAYERS = (
    ("conv1_1", "block1_conv1", 64),
    ("conv1_2", "block1_conv2", 64),
    ("conv2_1", "block2_conv1", 128),
    ("conv2_2", "block2_conv2", 128),
    ("conv3_1", "block3_conv1", 256),
    ("conv3_2", "block3_conv2", 256),
    ("conv3_3", "block3_conv3", 256),
    ("conv3_4", "block3_conv4", 256),
    ("conv4_1", "block4_conv1", 512),
    ("conv4_2", "block4_conv2", 512),
    ("conv4_3", "block4_conv3", 512),
    ("conv4_4", "block4_conv4", 512),
)
POOL_AFTER = ("conv1_2", "conv2_2", "conv3_4")
OUTPUT_LAYER = "conv4_4"

# Keras' ImageNet VGG19 without the classifier (the file `keras.applications.VGG19(include_top=False,
# weights="imagenet")` fetches), its md5, and where Keras caches it (<cache_dir>/models/<name>).
KERAS_VGG19_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
    "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
KERAS_VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_VGG19_NOTOP_MD5 = "253f8cb515780f3b799900260a226db6"

# The weight sources named by a keyword (anything else is a path ending .npy or .h5); training's
# --vgg_weights checks against this list.
WEIGHT_CHOICES = ("auto", "imagenet", "random")
_HOW_TO_SUPPLY = (
    f"download the official vgg19.npy ({C.VGG19_NPY_URL}) or the Keras file ({KERAS_VGG19_NOTOP_URL}) "
    "and pass --vgg_weights=/path/to/vgg19.npy or --vgg_weights=/path/to/vgg19.h5"
)


class VGGWeightsError(UserError):
    """The requested VGG19 weights could not be read; the message names the file or URL and the fix."""


def caffe_preprocess(images):
    """Images in [-1, 1] (RGB, NHWC) -> Caffe VGG input: [0, 255], BGR, minus the BGR means. float32."""
    # (y + 1) / 2 * 255 equals the original's (y + 1) * 127.5 bit for bit: halving is exact.
    scaled = unit_range_to_pixels(tf.cast(images, tf.float32))
    bgr = tf.reverse(scaled, axis=[-1])
    return bgr - tf.constant(C.VGG_MEAN_BGR, tf.float32)


def looks_linear_weights(seed: int = 0) -> dict:
    """Seeded random VGG19 weights that keep the image: {official name: (kernel, bias)}.

    Without ImageNet weights the perceptual losses still need features that depend on the image.
    He-normal random kernels do not give that here: after twelve random ReLU convolutions the conv4_4
    features barely depend on the input's colours, and the init phase does not learn to reproduce the
    photos. These kernels are delta-orthogonal (only the centre tap is non-zero and it is an
    orthogonal matrix: Xiao et al. 2018) in the looks-linear layout (the output channels come in
    pairs (u, -u), each layer reads a pair as relu(u) - relu(-u) = u: Balduzzi et al. 2017), with
    zero biases. Between the pools the stack is then an exact isometry of the Caffe-preprocessed
    image, and the three 2x2 max pools keep each window's extremes along random colour directions, so
    conv4_4 is a random but faithful description of the image at 1/8 of its size.
    """
    rng = np.random.default_rng(seed)
    weights, in_channels = {}, 3
    for official, _, channels in VGG19_CONV_LAYERS:
        half_in = in_channels if in_channels == 3 else in_channels // 2
        half_out = channels // 2
        # Orthonormal rows: half_in x half_out (half_in <= half_out throughout VGG19).
        q, r = np.linalg.qr(rng.standard_normal((half_out, half_in)))
        m = (q * np.sign(np.diag(r))).T
        centre = np.concatenate([m, -m], axis=1)              # u -> (u, -u)
        if in_channels != 3:
            centre = np.concatenate([centre, -centre], axis=0)  # (relu(u), relu(-u)) -> u
        kernel = np.zeros((3, 3, in_channels, channels), np.float32)
        kernel[1, 1] = centre
        weights[official] = (kernel, np.zeros(channels, np.float32))
        in_channels = channels
    return weights


class VGG19Features(keras.Model):
    """Frozen VGG19 feature extractor: images in [-1, 1] (NHWC) -> conv4_4 pre-ReLU features, float32.

    Under a mixed precision policy the convolutions compute in the policy's dtype; the output is
    float32 either way. Layers carry the official names (`conv1_1` ... `conv4_4`).
    `weights_source` says where the weights came from ("imagenet", "npy:<path>", "h5:<path>",
    "random"); `untrained` is True for random weights.
    """

    def __init__(self, seed: int = 0, name: str = "vgg19", **kwargs):
        super().__init__(name=name, **kwargs)
        self.convs = []
        in_channels = 3
        for official, _, channels in VGG19_CONV_LAYERS:
            conv = keras.layers.Conv2D(channels, 3, padding="same", use_bias=True, name=official)
            conv.build((None, None, None, in_channels))
            self.convs.append(conv)
            in_channels = channels
        self.built = True
        self.trainable = False
        self.set_conv_weights(looks_linear_weights(seed), "random")
        self.untrained = True

    def conv_layer(self, name):
        for conv in self.convs:
            if conv.name == name:
                return conv
        raise KeyError(name)

    def set_conv_weights(self, weights: dict, source: str):
        """Assigns {official name: (kernel [3,3,in,out], bias [out])} for conv1_1..conv4_4."""
        for conv in self.convs:
            kernel, bias = weights[conv.name]
            conv.kernel.assign(np.asarray(kernel, np.float32))
            conv.bias.assign(np.asarray(bias, np.float32))
        self.weights_source = source
        self.untrained = False

    def call(self, images):
        x = caffe_preprocess(images)
        for conv in self.convs:
            x = conv(x)
            if conv.name == OUTPUT_LAYER:
                break
            x = tf.nn.relu(x)
            if conv.name in POOL_AFTER:
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
        return tf.cast(x, tf.float32)


# ---------------------------------------------------------------------------------------------------
# Weight readers: each returns {official name: (kernel, bias)} for conv1_1..conv4_4, shape-checked.

def _expected_shapes():
    shapes, in_channels = {}, 3
    for official, _, channels in VGG19_CONV_LAYERS:
        shapes[official] = ((3, 3, in_channels, channels), (channels,))
        in_channels = channels
    return shapes


def _check(weights: dict, where: str) -> dict:
    out = {}
    for official, (k_shape, b_shape) in _expected_shapes().items():
        if official not in weights:
            raise VGGWeightsError(
                f"VGG19 weights file {where} has no layer {official}; {_HOW_TO_SUPPLY}.")
        kernel, bias = (np.asarray(a) for a in weights[official])
        if kernel.shape != k_shape or bias.shape != b_shape:
            raise VGGWeightsError(
                f"VGG19 weights file {where}: layer {official} has kernel {kernel.shape} and bias "
                f"{bias.shape}, expected {k_shape} and {b_shape}; {_HOW_TO_SUPPLY}.")
        out[official] = (kernel.astype(np.float32), bias.astype(np.float32))
    return out


def read_vgg19_npy(path) -> dict:
    """Reads the original's vgg19.npy: a pickled dict 'conv1_1' -> [kernel (3,3,in,out), bias (out,)]."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VGGWeightsError(f"VGG19 weights file {path} does not exist; {_HOW_TO_SUPPLY}.")
    try:
        data = np.load(path, allow_pickle=True, encoding="latin1").item()
        wanted = {official for official, _, _ in VGG19_CONV_LAYERS}
        weights = {name: (value[0], value[1]) for name, value in data.items() if name in wanted}
    except Exception as e:  # a truncated download or another kind of .npy
        raise VGGWeightsError(
            f"VGG19 weights file {path} is not a vgg19.npy dict of layer weights ({e}); "
            f"{_HOW_TO_SUPPLY}.") from None
    return _check(weights, path)


def _kernel_and_bias(arrays, where, layer):
    kernels = [a for a in arrays if a.ndim == 4]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise VGGWeightsError(
            f"VGG19 weights file {where}: layer {layer} does not hold one kernel and one bias; "
            f"{_HOW_TO_SUPPLY}.")
    return kernels[0], biases[0]


def read_vgg19_h5(path) -> dict:
    """Reads a Keras VGG19 weights file (legacy Keras 2 layout, whole-model .h5, or Keras 3 .weights.h5)."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VGGWeightsError(f"VGG19 weights file {path} does not exist; {_HOW_TO_SUPPLY}.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise VGGWeightsError(f"VGG19 weights file {path} is not a readable HDF5 file ({e}); "
                              f"{_HOW_TO_SUPPLY}.") from None
    try:
        with f:
            weights = _read_open_h5(f, path)
    except (KeyError, ValueError, OSError) as e:  # a layout this reader does not know
        raise VGGWeightsError(f"VGG19 weights file {path} does not have the layout of a Keras VGG19 "
                              f"weights file ({e}); {_HOW_TO_SUPPLY}.") from None
    return _check(weights, path)


def _read_open_h5(f, path) -> dict:
    """{official name: (kernel, bias)} from an open Keras weights file (not yet shape-checked)."""
    root = f["model_weights"] if "model_weights" in f else f
    weights = {}
    if "layer_names" in root.attrs:
        # Keras 2 layout: one group per layer name, its datasets listed in attrs["weight_names"].
        for official, keras_name, _ in VGG19_CONV_LAYERS:
            group_name = keras_name if keras_name in root else official
            if group_name not in root:
                continue
            group = root[group_name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            weights[official] = _kernel_and_bias([np.asarray(group[n]) for n in names], path, group_name)
    elif "layers" in f:
        # Keras 3 layout: layers/<auto name>/vars/<i>, names like conv2d, conv2d_1, ... in build
        # order; take the 3x3 convolutions in that order (read_vgg19_h5 then checks every shape).
        def order(name):
            m = re.search(r"_(\d+)$", name)
            return int(m.group(1)) if m else 0

        convs = []
        for name in sorted(f["layers"].keys(), key=order):
            vars_ = f["layers"][name].get("vars")
            if vars_ is None:
                continue
            arrays = [np.asarray(vars_[k]) for k in sorted(vars_.keys(), key=int)]
            if any(a.ndim == 4 and a.shape[:2] == (3, 3) for a in arrays):
                convs.append(_kernel_and_bias(arrays, path, name))
        for (official, _, _), kb in zip(VGG19_CONV_LAYERS, convs):
            weights[official] = kb
    else:
        raise VGGWeightsError(f"VGG19 weights file {path} is not a Keras weights file; {_HOW_TO_SUPPLY}.")
    return weights


def keras_cache_dir(cache_dir=None) -> str:
    """The Keras home that `keras.utils.get_file` will really use (created if missing).

    Keras' rule: `cache_dir`, else $KERAS_HOME, else ~/.keras; a directory that is not writable (or
    does not exist yet) is silently replaced by /tmp/.keras, so create it first and report the real one.
    """
    base = cache_dir or os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    base = os.path.expanduser(os.fspath(base))
    try:
        os.makedirs(os.path.join(base, "models"), exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return base


def fetch_imagenet_weights(url: str | None = None, file_hash: str | None = None, cache_dir=None) -> str:
    """Path of Keras' ImageNet VGG19 notop file: from Keras' cache, else downloaded into it."""
    url = url or KERAS_VGG19_NOTOP_URL
    file_hash = KERAS_VGG19_NOTOP_MD5 if file_hash is None else (file_hash or None)
    base = keras_cache_dir(cache_dir)
    try:
        return keras.utils.get_file(KERAS_VGG19_NOTOP_FILE, url, file_hash=file_hash,
                                    cache_subdir="models", cache_dir=base)
    except Exception as e:
        raise VGGWeightsError(
            f"Could not get the ImageNet VGG19 weights from {url} into the Keras cache "
            f"{os.path.join(base, 'models', KERAS_VGG19_NOTOP_FILE)} ({e}); put that file there, or "
            f"{_HOW_TO_SUPPLY}.") from None


_BANNER = "\n" + "!" * 78 + "\n"


def load_vgg19(weights: str = "auto", *, seed: int = 0, url: str | None = None,
               file_hash: str | None = None, cache_dir=None) -> VGG19Features:
    """Builds the frozen perceptual network with weights from `weights`.

    weights: "auto", "imagenet", "random", or a path ending .npy (the original's vgg19.npy) or .h5
    (Keras). url / file_hash / cache_dir override Keras' ImageNet URL, its md5 (pass "" to skip the
    check) and the Keras home (tests point these at local files).
    """
    weights = os.fspath(weights)
    lowered = weights.lower()
    if lowered not in WEIGHT_CHOICES and not lowered.endswith((".npy", ".h5")):
        raise VGGWeightsError(
            f"Unknown VGG19 weights {weights!r}: use one of {', '.join(WEIGHT_CHOICES)} or a path "
            f"ending .npy or .h5 ({_HOW_TO_SUPPLY}).")
    model = VGG19Features(seed=seed)
    if lowered == "random":
        log.warning("VGG19 weights are RANDOM (--vgg_weights=random): the content and style losses "
                    "will not measure perceptual similarity; use this only for tests and smoke runs.")
        return model
    if lowered in ("imagenet", "auto"):
        try:
            path = fetch_imagenet_weights(url, file_hash, cache_dir)
            model.set_conv_weights(read_vgg19_h5(path), "imagenet")
        except VGGWeightsError as e:
            if lowered == "imagenet":
                raise
            log.warning(
                "%sVGG19: NO PRETRAINED WEIGHTS, TRAINING WITH A RANDOM PERCEPTUAL NETWORK.\n"
                "%s\n"
                "The content and style losses will be meaningless and the results will not look "
                "like AnimeGAN.%s", _BANNER, e, _BANNER)
        return model
    path = os.path.expanduser(weights)
    if lowered.endswith(".npy"):
        model.set_conv_weights(read_vgg19_npy(path), f"npy:{path}")
    else:
        model.set_conv_weights(read_vgg19_h5(path), f"h5:{path}")
    return model
