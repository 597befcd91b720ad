"""The perceptual network: weight sources, Caffe preprocessing, and the conv4_4 (pre-ReLU) output.

References are independent: a tf.nn.conv2d chain written here from the weights file, NumPy
preprocessing, and Keras' own VGG19 loading the same synthetic Keras weights file. No network: the
"imagenet" source is served from 127.0.0.1 or a pre-populated cache directory.
"""

import functools
import hashlib
import http.server
import logging
import socket
import threading

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from anime_gan import constants as C
from anime_gan.nets import vgg

# The official layout: conv name -> (in, out) channels, VGG19 all the way to conv5_4.
OFFICIAL = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
            ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256),
            ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
            ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512)]
UP_TO_CONV4_4 = [name for name, _, _ in OFFICIAL[:12]]
NOTOP = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_name(official):
    block, index = official[4:].split("_")
    return f"block{block}_conv{index}"


@pytest.fixture(scope="module")
def synthetic_weights():
    """Random VGG19 conv weights (He-scaled so activations stay O(1) through 12 layers); block 5 zeros."""
    rng = np.random.default_rng(19)
    weights = {}
    for name, cin, cout in OFFICIAL:
        if name.startswith("conv5"):
            weights[name] = [np.zeros((3, 3, cin, cout), np.float32), np.zeros(cout, np.float32)]
        else:
            kernel = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * np.sqrt(2.0 / (9 * cin))
            weights[name] = [kernel.astype(np.float32), (rng.standard_normal(cout) * 0.1).astype(np.float32)]
    return weights


@pytest.fixture(scope="module")
def npy_file(synthetic_weights, tmp_path_factory):
    """vgg19.npy as the original distributes it: a pickled dict name -> [kernel, bias], fc layers too."""
    data = dict(synthetic_weights)
    for name, shape in (("fc6", (8, 4)), ("fc7", (4, 4)), ("fc8", (4, 3))):  # small stand-ins
        data[name] = [np.ones(shape, np.float32), np.zeros(shape[1], np.float32)]
    path = tmp_path_factory.mktemp("npy") / "vgg19.npy"
    np.save(path, data)
    return path


def write_legacy_keras_h5(path, weights):
    """The Keras 2 layout of Keras' downloaded notop file: one group per layer, listed in attrs."""
    layer_names = ["input_1"]
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S")
        for name, _, _ in OFFICIAL:
            layer = keras_name(name)
            group = f.create_group(layer)
            kernel, bias = weights[name]
            # Block 5 is zeros: compress it so the file stays ~40 MB (readers decompress transparently).
            opts = {"compression": "gzip"} if name.startswith("conv5") else {}
            group.create_dataset(f"{layer}/kernel:0", data=kernel, **opts)
            group.create_dataset(f"{layer}/bias:0", data=bias, **opts)
            group.attrs["weight_names"] = np.array([f"{layer}/kernel:0", f"{layer}/bias:0"], dtype="S")
            layer_names.append(layer)
            if name in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"):
                pool = f"block{name[4]}_pool"
                f.create_group(pool).attrs["weight_names"] = np.array([], dtype="S")
                layer_names.append(pool)
        f.attrs["layer_names"] = np.array(layer_names, dtype="S")


@pytest.fixture(scope="module")
def h5_file(synthetic_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("h5") / NOTOP
    write_legacy_keras_h5(path, synthetic_weights)
    return path


def assert_weights_equal(model, weights):
    assert [conv.name for conv in model.convs] == UP_TO_CONV4_4
    for name in UP_TO_CONV4_4:
        conv = model.conv_layer(name)
        np.testing.assert_array_equal(conv.kernel.numpy(), weights[name][0], err_msg=name)
        np.testing.assert_array_equal(conv.bias.numpy(), weights[name][1], err_msg=name)


def reference_conv4_4(images, weights):
    """The original's network written out: Caffe preprocessing in NumPy, then tf.nn ops."""
    x = (images.astype(np.float64) + 1) / 2 * 255.0
    x = np.stack([x[..., 2] - 103.939, x[..., 1] - 116.779, x[..., 0] - 123.68], axis=-1)
    x = tf.constant(x, tf.float32)
    for name in UP_TO_CONV4_4:
        kernel, bias = weights[name]
        x = tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), bias)
        if name == "conv4_4":
            return x.numpy()
        x = tf.nn.relu(x)
        if name in ("conv1_2", "conv2_2", "conv3_4"):
            x = tf.nn.max_pool2d(x, 2, 2, padding="SAME")


def assert_close(actual, expected, rtol=1e-4):
    scale = np.max(np.abs(expected))
    assert scale > 0
    np.testing.assert_allclose(actual, expected, atol=rtol * scale, rtol=0)


@pytest.fixture(scope="module")
def images():
    # 20 x 12: after the pools 10x6, 5x3, 3x2 -- odd sizes exercise the original's 'SAME' pooling.
    return np.random.default_rng(7).uniform(-1, 1, (2, 20, 12, 3)).astype(np.float32)


# ---- preprocessing ---------------------------------------------------------------------------------------

def test_caffe_preprocess_hand_values():
    # White, pure red and black pixels in [-1, 1] -> BGR in [0, 255] minus (103.939, 116.779, 123.68).
    pixels = np.array([[1, 1, 1], [1, -1, -1], [-1, -1, -1]], np.float32).reshape(1, 1, 3, 3)
    expected = np.array([[255 - 103.939, 255 - 116.779, 255 - 123.68],
                         [-103.939, -116.779, 255 - 123.68],
                         [-103.939, -116.779, -123.68]])
    out = vgg.caffe_preprocess(pixels)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().reshape(3, 3), expected, rtol=1e-6)


# ---- vgg19.npy -------------------------------------------------------------------------------------------

def test_npy_sets_every_conv_layer(npy_file, synthetic_weights, images):
    model = vgg.load_vgg19(str(npy_file))
    assert model.weights_source == f"npy:{npy_file}"
    assert not model.untrained
    assert_weights_equal(model, synthetic_weights)
    assert model.trainable_weights == [] and len(model.weights) == 24

    out = model(images)
    assert out.dtype == tf.float32 and out.shape == (2, 3, 2, 512)
    expected = reference_conv4_4(images, synthetic_weights)
    assert np.any(expected < 0)  # taken before the ReLU
    assert_close(out.numpy(), expected)


def test_npy_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "vgg19.npy"
    with pytest.raises(vgg.VGGWeightsError, match=str(missing)) as err:
        vgg.load_vgg19(str(missing))
    assert "--vgg_weights" in str(err.value)


def test_npy_not_a_weights_dict(tmp_path):
    bad = tmp_path / "vgg19.npy"
    bad.write_text("not numpy")
    with pytest.raises(vgg.VGGWeightsError, match=str(bad)):
        vgg.load_vgg19(str(bad))


def test_npy_wrong_shape_names_layer(tmp_path, synthetic_weights):
    data = dict(synthetic_weights)
    data["conv2_1"] = [np.zeros((3, 3, 64, 64), np.float32), np.zeros(64, np.float32)]
    path = tmp_path / "vgg19.npy"
    np.save(path, data)
    with pytest.raises(vgg.VGGWeightsError, match="conv2_1"):
        vgg.load_vgg19(str(path))


# ---- Keras .h5 -------------------------------------------------------------------------------------------

def test_h5_matches_keras_own_vgg19(h5_file, synthetic_weights, images, tmp_path):
    model = vgg.load_vgg19(str(h5_file))
    assert model.weights_source == f"h5:{h5_file}"
    assert_weights_equal(model, synthetic_weights)

    # Keras' VGG19 reads the same file with its own loader; its block4_conv4 is our output after ReLU.
    # 16 x 24 input: pools see even sizes, where 'SAME' and Keras' 'valid' pooling agree.
    images = np.random.default_rng(8).uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
    reference = keras.applications.VGG19(include_top=False, weights=str(h5_file))
    block4 = keras.Model(reference.input, reference.get_layer("block4_conv4").output)
    expected = block4(keras.applications.vgg19.preprocess_input((images + 1.0) * 127.5)).numpy()
    assert_close(tf.nn.relu(model(images)).numpy(), expected)

    # A Keras 3 .weights.h5 saved from keras.applications.VGG19 loads too.
    keras3_file = tmp_path / "vgg19.weights.h5"
    reference.save_weights(keras3_file)
    assert_weights_equal(vgg.load_vgg19(str(keras3_file)), synthetic_weights)


def test_h5_missing_file_names_path(tmp_path):
    missing = tmp_path / "vgg19.h5"
    with pytest.raises(vgg.VGGWeightsError, match=str(missing)):
        vgg.load_vgg19(str(missing))


def test_h5_of_another_kind_is_an_error(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(vgg.VGGWeightsError, match=str(text)):
        vgg.load_vgg19(str(text))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(vgg.VGGWeightsError, match=str(other)):
        vgg.load_vgg19(str(other))


def test_unknown_source():
    with pytest.raises(vgg.VGGWeightsError, match="imagenet"):
        vgg.load_vgg19("vgg19.pth")


# ---- ImageNet through Keras' download cache, served locally ---------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(h5_file):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(h5_file.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{NOTOP}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_url():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{NOTOP}"


@pytest.fixture(scope="module")
def md5(h5_file):
    return hashlib.md5(h5_file.read_bytes()).hexdigest()


def test_imagenet_downloads_into_cache_then_reuses_it(local_server, dead_url, md5, h5_file,
                                                      synthetic_weights, tmp_path):
    cache = tmp_path / "keras_home"
    model = vgg.load_vgg19("imagenet", url=local_server, file_hash=md5, cache_dir=str(cache))
    assert model.weights_source == "imagenet" and not model.untrained
    assert_weights_equal(model, synthetic_weights)
    cached = cache / "models" / NOTOP
    assert cached.read_bytes() == h5_file.read_bytes()
    # The second time the cache answers: an unreachable URL does not matter.
    again = vgg.load_vgg19("imagenet", url=dead_url, file_hash=md5, cache_dir=str(cache))
    assert_weights_equal(again, synthetic_weights)


def test_imagenet_prepopulated_cache_needs_no_network(h5_file, dead_url, md5, synthetic_weights, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / NOTOP).write_bytes(h5_file.read_bytes())
    model = vgg.load_vgg19("imagenet", url=dead_url, file_hash=md5, cache_dir=str(tmp_path))
    assert_weights_equal(model, synthetic_weights)


def test_imagenet_failed_download_is_an_error(dead_url, tmp_path):
    with pytest.raises(vgg.VGGWeightsError) as err:
        vgg.load_vgg19("imagenet", url=dead_url, cache_dir=str(tmp_path))
    message = str(err.value)
    assert dead_url in message and str(tmp_path / "models" / NOTOP) in message
    assert "--vgg_weights=/path/to/vgg19.npy" in message


def test_imagenet_corrupt_download_is_an_error(local_server, tmp_path):
    with pytest.raises(vgg.VGGWeightsError, match=local_server):
        vgg.load_vgg19("imagenet", url=local_server, file_hash="0" * 32, cache_dir=str(tmp_path))


def test_default_imagenet_source_is_keras_own():
    from keras.src.applications import vgg19 as keras_vgg19  # where Keras defines its URL

    assert vgg.KERAS_VGG19_NOTOP_URL == keras_vgg19.WEIGHTS_PATH_NO_TOP
    assert vgg.KERAS_VGG19_NOTOP_URL.endswith("/" + NOTOP)


# ---- auto and random -------------------------------------------------------------------------------------

def test_auto_uses_imagenet_when_available(local_server, md5, synthetic_weights, tmp_path):
    model = vgg.load_vgg19("auto", url=local_server, file_hash=md5, cache_dir=str(tmp_path))
    assert model.weights_source == "imagenet"
    assert_weights_equal(model, synthetic_weights)


def test_auto_falls_back_to_random_loudly(dead_url, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        model = vgg.load_vgg19("auto", url=dead_url, cache_dir=str(tmp_path))
    assert model.untrained and model.weights_source == "random"
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "RANDOM" in warning and dead_url in warning and "!" * 40 in warning


def test_random_warns_and_is_seeded(caplog):
    with caplog.at_level(logging.WARNING):
        a = vgg.load_vgg19("random", seed=5)
    assert any("RANDOM" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert a.untrained and a.weights_source == "random"
    b = vgg.load_vgg19("random", seed=5)
    c = vgg.load_vgg19("random", seed=6)
    k = lambda m: m.conv_layer("conv3_1").kernel.numpy()
    np.testing.assert_array_equal(k(a), k(b))
    assert not np.array_equal(k(a), k(c))


def test_random_weights_keep_the_image():
    """Offline the perceptual losses must still see the image: the random network is exact enough
    to read each pixel's Caffe colour vector back from conv4_4 where the pools lose nothing."""
    model = vgg.load_vgg19("random", seed=2)
    rng = np.random.default_rng(0)
    # Constant 8x8 blocks: every 2x2 max pool then sees equal values and the stack is linear.
    blocks = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    images = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)
    out = model(images).numpy()
    assert out.shape == (2, 4, 4, 512)
    caffe = (blocks[..., ::-1].astype(np.float64) + 1) * 127.5 - np.array(C.VGG_MEAN_BGR)
    # Looks-linear pairs (u, -u), and u an isometric image of the pixel's colour vector.
    np.testing.assert_allclose(out[..., 256:], -out[..., :256], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(out[..., :256], axis=-1), np.linalg.norm(caffe, axis=-1), rtol=1e-4)
    # ... which is a linear map: the Gram matrix of the features is that of the colours.
    u = out[..., :256].reshape(-1, 256).astype(np.float64)
    c = caffe.reshape(-1, 3)
    np.testing.assert_allclose(u @ u.T, c @ c.T, rtol=1e-3, atol=1e-2 * np.abs(c @ c.T).max())


# ---- mixed precision -------------------------------------------------------------------------------------

def test_mixed_precision_returns_float32(npy_file, synthetic_weights, images):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = vgg.load_vgg19(str(npy_file))
        assert model.conv_layer("conv1_1").compute_dtype == "bfloat16"
        assert model.conv_layer("conv1_1").kernel.dtype == "float32"
        out = model(images)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    expected = reference_conv4_4(images, synthetic_weights)
    # bfloat16 keeps 8 bits of mantissa; 12 layers deep the features agree to a few percent.
    assert_close(out.numpy(), expected, rtol=0.1)
    assert np.corrcoef(out.numpy().ravel(), expected.ravel())[0, 1] > 0.99
