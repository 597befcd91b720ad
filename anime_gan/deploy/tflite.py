"""TFLite / LiteRT export of a generator, and a runner for the file it writes.

    write_tflite(generator, "hayao_v2_256.tflite", precision="float16", height=256, width=256)
    TFLiteRunner("hayao_v2_256.tflite", threads=2)(images_uint8)   # [N, H, W, 3] uint8 -> uint8

Contract (the SavedModel's `serving_default`, `anime_gan.deploy.saved_model`): input uint8 [1, H, W, 3] RGB,
output uint8 [1, H, W, 3], the same size. Inside: x / 127.5 - 1, reflect pad at the bottom and right
to the next multiple of 4, G, crop back, truncate(clip((y + 1) / 2 * 255)). The size is fixed when
the model is written (height x width, default 256 x 256): every shape, pad and resize size is then
a constant and XNNPACK takes the whole network as one partition (only the uint8 casts at both ends
stay outside); a dynamic-size model was not built. Write one file per size you serve; the size is
checked when the file is written (each side at least MIN_SIDE = 8 pixels) and by `TFLiteRunner`
(the converter drops a graph's Asserts).

Precisions (PSNR against our float32 on held-out photos, real AnimeGANv2 Hayao weights, 256 x 256;
tests/deploy/test_export_tflite.py)
- "float32": the network as it is (within 1e-4 of `anime_gan.deploy.saved_model.generate` at the same size;
  ~90 dB).
- "float16": weights stored in float16 (half the file), dequantised once and computed in float32
  (65-67 dB).
- "int8": dynamic-range quantisation: int8 weights (per channel), activations quantised on the fly
  by XNNPACK; no calibration needed (47-49 dB).
- "int8_full": full-integer post-training quantisation (int8 weights and activations) calibrated
  on `calibration_images` (real photos, uint8 [H, W, 3], centre-cropped and resized to the model's
  size); the uint8 input and output stay uint8. 32-34 dB: the 24 layer norms' statistics (means
  over ~1M values) carry the int8 error forward.

Hard ops and how they are written here
- Reflect padding: TFLite's MIRROR_PAD is correct but XNNPACK does not take it, so each of G's
  24-ish pads would split the graph into another delegate partition. Here it is written as
  one-row/column slices and concatenations (reflect padding copies values, so the output is the
  same bit for bit), which XNNPACK runs; concatenations have at most three inputs (XNNPACK left the
  7-input one of a 3-pixel pad out). `reflect_pad="mirror_pad"` keeps the plain op (same output,
  tested; slower).
- TF1's legacy bilinear resize (align_corners=False, half_pixel_centers=False) converts to
  RESIZE_BILINEAR with both flags false, exactly.
- Instance and layer norm (`tf.nn.moments` + `tf.nn.batch_normalization`) convert to MEAN,
  SQUARED_DIFFERENCE, RSQRT, MUL, SUB, ADD.
- The output mapping in "int8_full" is y * 127.5 + 127.5 (see `frozen_function`).
- Variables: converting a concrete function of a Keras model can keep its weights as resource
  variables (READ_VARIABLE, NaN under XNNPACK); the graph is frozen to constants before conversion.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from anime_gan import constants as C
from anime_gan.errors import ConfigError, ModelError, UserError, first_line

REFLECT_PADS = ("slices", "mirror_pad")
DEFAULT_SIZE = 256
METADATA_NAME = "anime_gan"


# ---- export ----------------------------------------------------------------------------------------
def reflect_pad_by_slices(x, top, bottom, left, right):
    """Reflect padding of NHWC x as one-row/column slices + concatenations (exactly tf.pad REFLECT),
    which XNNPACK runs (it does not take MIRROR_PAD); G's layers pad this way while `frozen_function`
    traces them with reflect_pad="slices"."""
    import tensorflow as tf

    def along(x, axis, before, after):
        if before == 0 and after == 0:
            return x

        def row(i):  # x[..., i:i+1, ...] along `axis`; i < 0 counts from the end
            index = [slice(None)] * 4
            index[axis] = slice(i, i + 1 if i != -1 else None)
            return x[tuple(index)]

        # before: rows before..1 (reversed); after: rows -2..-(after+1). Concatenations of at most
        # three inputs: XNNPACK leaves a 7-input one (G's 7x7 convs pad by 3) to the reference kernel.
        def joined(parts):
            return parts[0] if len(parts) == 1 else tf.concat(parts, axis)

        parts = [joined([row(i) for i in range(before, 0, -1)]) if before else None, x,
                 joined([row(-2 - i) for i in range(after)]) if after else None]
        return tf.concat([p for p in parts if p is not None], axis)

    return along(along(x, 1, top, bottom), 2, left, right)


@contextlib.contextmanager
def _reflect_pad_as(mode):
    """While tracing (in this thread), G's layers pad with `mode` ("slices" or "mirror_pad")."""
    from anime_gan.nets import layers

    with layers.reflect_pad_as(None if mode == "mirror_pad" else reflect_pad_by_slices):
        yield layers.reflect_pad


def _size(height, width):
    if height is None and width is None:
        return DEFAULT_SIZE, DEFAULT_SIZE
    if height is None or width is None:
        raise ConfigError("give both height and width of the TFLite model, or neither (256 x 256).")
    height, width = int(height), int(width)
    if min(height, width) < C.MIN_SIDE:
        raise ConfigError(f"the TFLite model size {height}x{width} has a side below {C.MIN_SIDE} pixels, "
                          "the smallest G accepts.")
    return height, width


def frozen_function(generator, height, width, reflect_pad="slices", float_io=False, full_integer=False):
    """The concrete function `write_tflite` converts: the uint8 [1, height, width, 3] -> uint8 graph
    of one fixed size, frozen (no variables left in it); reflect_pad: one of REFLECT_PADS.

    float_io: float32 in [-1, 1] in and out instead, the pixel mappings left out (the network alone,
    comparable to `anime_gan.deploy.saved_model.generate`). full_integer: the output mapping written as
    y * 127.5 + 127.5, the same map in one step: the quantiser gave (y + 1) / 2 the scale of the
    final [0, 255] value (one int8 step = 1 level), which leaves two output values (9 dB)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from anime_gan.image_io import images_to_unit_range, unit_range_to_images

    pad_h, pad_w = (-height) % C.GENERATOR_STRIDE, (-width) % C.GENERATOR_STRIDE
    align_corners = getattr(generator, "resize", "tf1") == "align_corners"

    dtype = tf.float32 if float_io else tf.uint8

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], dtype, name="images")], autograph=False)
    def stylize(images):
        x = images if float_io else images_to_unit_range(images)
        if align_corners:  # keeps any size itself (see anime_gan.deploy.saved_model.generate)
            y = generator(x)
        else:
            y = generator(pad(x, 0, pad_h, 0, pad_w))[:, :height, :width, :]
        if float_io:
            return {"images_out": y}
        if full_integer:
            return {"images_out": tf.cast(tf.clip_by_value(y * 127.5 + 127.5, 0.0, 255.0), tf.uint8)}
        return {"images_out": unit_range_to_images(y)}

    with _reflect_pad_as(reflect_pad) as pad:
        concrete = stylize.get_concrete_function()
    return convert_variables_to_constants_v2(concrete)


def fit_photo(image, height, width):
    """uint8 [h, w, 3] -> [height, width, 3]: centre crop to the aspect ratio, then area resize."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = min(h / height, w / width)
    ch, cw = round(height * scale), round(width * scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(image[top:top + ch, left:left + cw], (width, height), interpolation=cv2.INTER_AREA)


def _representative_dataset(images, height, width):
    if images is None or len(images) == 0:
        raise ConfigError("int8_full needs calibration_images: a few real photos (uint8 [H, W, 3] RGB arrays).")
    checked = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"calibration image {i} is {image.dtype} {list(image.shape)}; give uint8 "
                              "[H, W, 3] RGB arrays.")
        checked.append(fit_photo(image, height, width))

    def dataset():
        for image in checked:
            yield [image[None]]

    return dataset


def convert_to_tflite(concrete, precision, calibration_images=None, height=None, width=None):
    """The TFLite flatbuffer (bytes, no metadata) of a `frozen_function` in `precision` (one of
    TFLITE_PRECISIONS); "int8_full" calibrates on calibration_images fitted to height x width."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8_full":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_dataset(calibration_images, height, width)
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def _with_metadata(model_bytes, metadata):
    """The flatbuffer with a `anime_gan` metadata entry (JSON) added."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path):
    """The `anime_gan` metadata of a file written by `write_tflite` (dict), or {} if it has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        data = f.read()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode())
    return {}


def write_tflite(generator, path, precision="float32", calibration_images=None, height=None, width=None,
                 reflect_pad="slices"):
    """Write `generator` as a TFLite file of a fixed size; returns the path.

    precision: one of TFLITE_PRECISIONS (see the module docstring); calibration_images: uint8 [H, W, 3] RGB
    photos, needed for "int8_full" (centre-cropped and resized to the model's size). height, width: the
    model's input size (default 256 x 256). The file is written beside `path` and renamed into place,
    so an existing file there is replaced only by a complete one. The generator's arch, options,
    the precision and the size are stored in the file's `anime_gan` metadata (`read_metadata`).
    """
    if precision not in C.TFLITE_PRECISIONS:
        raise ConfigError(f"unknown TFLite precision {precision!r}; choose one of {', '.join(C.TFLITE_PRECISIONS)}.")
    if reflect_pad not in REFLECT_PADS:
        raise ConfigError(f"unknown reflect_pad {reflect_pad!r}; choose one of {', '.join(REFLECT_PADS)}.")
    height, width = _size(height, width)
    from anime_gan.deploy.saved_model import float32_generator  # TensorFlow: not when only running a file

    generator = float32_generator(generator)
    concrete = frozen_function(generator, height, width, reflect_pad, full_integer=precision == "int8_full")
    model_bytes = convert_to_tflite(concrete, precision, calibration_images, height, width)
    metadata = {"arch": generator.arch, "options": generator.options(), "precision": precision,
                "height": height, "width": width, "reflect_pad": reflect_pad,
                "input": "uint8 [1, H, W, 3] RGB", "output": "uint8 [1, H, W, 3]"}
    model_bytes = _with_metadata(model_bytes, metadata)
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; pass a file path ending in .tflite.")
    from data_prep.files import write_bytes

    write_bytes(path, model_bytes)
    return path


# ---- run -------------------------------------------------------------------------------------------
def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteRunner:
    """A TFLite file of `write_tflite` in LiteRT (ai_edge_litert; else tf.lite) with XNNPACK.

    Callable on uint8 [N, H, W, 3] RGB -> uint8 [N, H, W, 3], one image at a time. A fixed-size
    model takes only its own size (a dynamic one is resized to each image's size).
    """

    def __init__(self, path, threads=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise UserError(f"{path} is not a file; pass the .tflite file written by the export.")
        try:
            self.interpreter = _interpreter_class()(model_path=path, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{path} is not a TFLite model this runtime can load ({first_line(e)}).") from None
        self.path = path
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or inputs[0]["dtype"] != np.uint8 or len(inputs[0]["shape"]) != 4:
            raise ModelError(f"{path} is not a model written by the anime_gan TFLite export "
                             "(one uint8 [1, H, W, 3] input and one output expected).")
        self._input, self._output = inputs[0], outputs[0]
        signature = self._input.get("shape_signature", self._input["shape"])
        self.dynamic = bool(np.any(np.asarray(signature)[1:3] < 0))
        self.size = tuple(int(s) for s in self._input["shape"][1:3])

    def _fit(self, height, width):
        if (height, width) == self.size:
            return
        if not self.dynamic:
            raise UserError(f"{self.path} takes {self.size[0]}x{self.size[1]} images (height x width) only, "
                            f"not {height}x{width}; export a model of that size or resize the images.")
        self.interpreter.resize_tensor_input(self._input["index"], [1, height, width, 3])
        self.interpreter.allocate_tensors()
        self._input, self._output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.size = (height, width)

    def __call__(self, images):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"images must be uint8 [N, H, W, 3] RGB, not {images.dtype} {list(images.shape)}.")
        if images.shape[0] == 0:
            return np.zeros(images.shape, np.uint8)
        self._fit(*images.shape[1:3])
        out = np.empty(images.shape, np.uint8)
        for i, image in enumerate(images):
            self.interpreter.set_tensor(self._input["index"], image[None])
            self.interpreter.invoke()
            out[i] = self.interpreter.get_tensor(self._output["index"])[0]
        return out
