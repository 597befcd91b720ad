"""Serving: a SavedModel with two signatures around the generator, loadable without `anime_gan`.

The exported object is a plain `tf.Module` whose `tf.function`s capture the generator's variables
(no Keras objects are saved), so `tf.saved_model.load`, `saved_model_cli` and TF Serving run it in
a process where neither `anime_gan` nor Keras can be imported.

Signatures
- `serving_default`: `images` uint8 [N, H, W, 3] -> `images` uint8 [N, H, W, 3]. N = 0 gives an
  empty [0, H, W, 3]. The signature declares no shape (a server does not enforce the declared one):
  the graph checks it, so a rank-3 image or a 4-channel batch is refused in one sentence.
- `stylize_bytes`: `image_bytes` string [N] (JPEG, PNG, BMP, WebP or GIF; first frame) ->
  `image_bytes` string [N] (PNG), each image keeping its own size (TF Serving's REST `{"b64": ...}`
  convention: the output name ends in `_bytes`). The size is read from the file's header
  (`encoded_image_size`) and checked before anything is decoded, so a 20000x20000 PNG of 1.2 MB is
  refused without the 1.2 GB its pixels would take. Decoding is TensorFlow's `decode_image`:
  grayscale becomes RGB, 16-bit PNGs are scaled to 8 bits, alpha is dropped (the colour under it is
  stylized) and the EXIF orientation is not applied, so send upright images (`anime_gan.stylize`
  applies it and composites transparency over white).

Sizes. The original resized every photo to multiples of 32 before running G. Here each image is
instead reflect-padded at the bottom and right to the next multiple of 4 (G halves the resolution
twice), stylized, and cropped back, so the output has exactly the input's size and no resampling
blurs it. The size rule (`size_error` in Python, `size_checks` in the graph, one wording): each side
at least `MIN_SIDE` = 8 pixels (G's reflect pads need 2 pixels at quarter resolution) and at most
`max_side`. In the graph a refusal is an `InvalidArgumentError`: a bad request fails alone and the
server keeps serving.

Pixel mapping: `anime_gan.image_io.images_to_unit_range` in, `unit_range_to_images` out (the
original's x / 127.5 - 1 and truncate(clip((y + 1) / 2 * 255))).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.constants import DEFAULT_MAX_SIDE, MIN_SIDE
from anime_gan.deploy.banded import DEFAULT_MEMORY_BUDGET, MemoryBoundedGenerator, memory_bounded
from anime_gan.errors import ConfigError, OutputExistsError
from anime_gan.image_io import images_to_unit_range, unit_range_to_images
from anime_gan.nets import build_generator

SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "stylize_bytes"
IMAGES_KEY = "images"
BYTES_KEY = "image_bytes"


# The size rule's two sentences; {name}, {height} and {width} are filled in per image.
_TOO_SMALL = ("{name} is {height}x{width} pixels (height x width); each side must be at least "
              f"{MIN_SIDE} pixels (the generator halves the image twice); upscale it or leave it out.")
_TOO_LARGE = ("{name} is {height}x{width} pixels (height x width); each side must be at most {max_side} "
              "pixels (the size cap of this model); downscale it or use a model exported with a larger "
              "--max_side.")


def size_error(height, width, max_side, name="image"):
    """The one sentence saying why an image of this size cannot be stylized, or None if it can."""
    if min(height, width) < MIN_SIDE:
        return _TOO_SMALL.format(name=name, height=height, width=width)
    if max(height, width) > max_side:
        return _TOO_LARGE.format(name=name, height=height, width=width, max_side=max_side)
    return None


def checked_max_side(max_side):
    """max_side as an int, or ConfigError if it is below the smallest side G accepts."""
    max_side = int(max_side)
    if max_side < MIN_SIDE:
        raise ConfigError(f"--max_side={max_side} is below the smallest side G accepts ({MIN_SIDE}).")
    return max_side


def size_checks(height, width, max_side, applies=True):
    """`size_error` in the graph: assertions that raise InvalidArgumentError with the same sentences.

    applies: a boolean tensor; where it is False (a size that could not be read) nothing is checked.
    """
    def message(template):
        return tf.strings.format(template.format(name="image", height="{}", width="{}", max_side=max_side),
                                 (height, width))

    def holds(condition):
        return tf.logical_or(tf.logical_not(applies), condition)

    small = tf.debugging.Assert(holds(tf.minimum(height, width) >= MIN_SIDE), [message(_TOO_SMALL)])
    large = tf.debugging.Assert(holds(tf.maximum(height, width) <= max_side), [message(_TOO_LARGE)])
    return [small, large]


# The batch-shape rule of `serving_default`, in one sentence each; {} is filled in the graph.
_NOT_A_BATCH = ("images must be a batch of shape [N, H, W, 3] (rank 4), not rank {}; "
                "send one image as [1, H, W, 3].")
_NOT_RGB = "images must have 3 channels (RGB) in their last dimension, not {}; convert gray or RGBA images to RGB."


def checked_batch(images):
    """images (any shape) -> the same tensor with static shape [None, None, None, 3], after assertions
    that it is rank 4 with 3 channels (InvalidArgumentError in one sentence otherwise)."""
    dims = tf.shape(images)
    rank = tf.size(dims)
    # Padded so that reading dimension 3 never fails on a lower rank: the assertions speak first.
    channels = tf.concat([dims, tf.zeros([4], tf.int32)], 0)[3]
    is_batch = tf.debugging.Assert(tf.equal(rank, 4), [tf.strings.format(_NOT_A_BATCH, rank)])
    is_rgb = tf.debugging.Assert(tf.logical_or(tf.not_equal(rank, 4), tf.equal(channels, 3)),
                                 [tf.strings.format(_NOT_RGB, channels)])
    with tf.control_dependencies([is_batch, is_rgb]):
        return tf.ensure_shape(tf.identity(images), [None, None, None, 3])


def _bytes_at(head, offset, literal):
    """True where the header bytes at offset equal literal (bytes)."""
    expected = tf.constant(list(literal), tf.int64)
    return tf.reduce_all(tf.equal(head[offset:offset + len(literal)], expected))


def _header(image_bytes, n=32):
    """The first n bytes of a scalar string as int64 [n], zero-padded when it is shorter."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, n), b"\0" * n]), 0, n)
    return tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)


# JPEG XL (decode_image reads it too), bare codestream or ISO container: its size is not read here.
_JPEG_XL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
_UNKNOWN_FORMAT = (f"an element of {{key}} is not a JPEG, PNG, GIF, BMP or WebP file (its first bytes say so); "
                   "send the bytes of the image file as they are on disk.")


def encoded_image_size(image_bytes):
    """(height, width) int64 of one encoded image (a scalar string) read from its header, decoding no
    pixel; (-1, -1) when the format is not recognised (the decoder then says what is wrong).

    JPEG through `tf.io.extract_jpeg_shape` (libjpeg reads the header only); PNG (IHDR), GIF (logical
    screen), BMP (BITMAPCOREHEADER and BITMAPINFOHEADER and later) and WebP (VP8, VP8L, VP8X) from
    their fixed header fields, as `data_prep.image_header.image_size` reads them in Python.
    """
    b = _header(image_bytes)

    def le(offset, size):  # unsigned little-endian
        return sum(b[offset + i] * (1 << (8 * i)) for i in range(size))

    def be(offset, size):  # unsigned big-endian
        return sum(b[offset + i] * (1 << (8 * (size - 1 - i))) for i in range(size))

    def signed32(value):
        return tf.abs(tf.where(value >= 1 << 31, value - (1 << 32), value))  # BMP: negative = top-down

    bmp_header = le(14, 4)
    vp8l = le(21, 4)
    candidates = [  # (recognised, height, width)
        (_bytes_at(b, 0, b"\x89PNG\r\n\x1a\n") & _bytes_at(b, 12, b"IHDR"), be(20, 4), be(16, 4)),
        (_bytes_at(b, 0, b"GIF87a") | _bytes_at(b, 0, b"GIF89a"), le(8, 2), le(6, 2)),
        (_bytes_at(b, 0, b"BM") & tf.equal(bmp_header, 12), le(20, 2), le(18, 2)),
        (_bytes_at(b, 0, b"BM") & (bmp_header >= 40), signed32(le(22, 4)), signed32(le(18, 4))),
        (_bytes_at(b, 0, b"RIFF") & _bytes_at(b, 8, b"WEBPVP8 ") & _bytes_at(b, 23, b"\x9d\x01\x2a"),
         le(28, 2) % (1 << 14), le(26, 2) % (1 << 14)),
        (_bytes_at(b, 0, b"RIFF") & _bytes_at(b, 8, b"WEBPVP8L") & tf.equal(b[20], 0x2F),
         (vp8l // (1 << 14)) % (1 << 14) + 1, vp8l % (1 << 14) + 1),
        (_bytes_at(b, 0, b"RIFF") & _bytes_at(b, 8, b"WEBPVP8X"), le(27, 3) + 1, le(24, 3) + 1),
    ]
    height = width = tf.constant(-1, tf.int64)
    for recognised, h, w in reversed(candidates):
        height, width = tf.where(recognised, h, height), tf.where(recognised, w, width)

    def jpeg_size():
        shape = tf.cast(tf.io.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0], shape[1]

    return tf.cond(_bytes_at(b, 0, b"\xff\xd8"), jpeg_size, lambda: (height, width))


def generate(generator, x):
    """G on one batch of one size: float32 [N, H, W, 3] in [-1, 1] -> the same shape, any H and W >= MIN_SIDE.

    The one place the served graph runs the generator (a bounded-memory executor may replace it).
    Padded at the bottom and right to the next multiple of GENERATOR_STRIDE and cropped back; a v2
    generator in the PyTorch port's align-corners mode keeps any size itself and resizes to the
    recorded sizes, so padding would move its resize grid: it runs on the image as it is.
    """
    if getattr(generator, "resize", "tf1") == "align_corners":
        return generator(x)
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    pad_h = (-height) % C.GENERATOR_STRIDE
    pad_w = (-width) % C.GENERATOR_STRIDE
    # Bottom/right only, so the crop back is a plain slice; reflect (not edge) padding is what G does
    # internally and leaves no flat band for the instance norm statistics.
    x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
    return generator(x)[:, :height, :width, :]


def float32_generator(generator):
    """The generator (built) itself if it computes in float32, else a float32 copy of it: what every
    export and runtime runs.

    Serving runs on any device, where a float16 policy left over from training would only cost
    accuracy; the weights are float32 either way.
    """
    if not generator.built:
        generator.build()
    if generator.compute_dtype == "float32":
        return generator
    clone = build_generator("float32", arch=generator.arch, **generator.options())
    clone.set_weights(generator.get_weights())
    return clone


def _raw_variable(v):
    # Keras 3 variables wrap a tf.Variable; tracking the tf.Variable itself keeps Keras types out
    # of the SavedModel's object graph.
    raw = getattr(v, "value", v)
    if not isinstance(raw, tf.Variable):
        raise TypeError(f"expected a tf.Variable behind generator weight {v.name}, got {type(raw)}")
    return raw


class StylizeModule(tf.Module):
    """The generator wrapped for serving: `serving_default` and `stylize_bytes` tf.functions."""

    def __init__(self, generator, max_side=DEFAULT_MAX_SIDE, memory_budget=None):
        """memory_budget: bytes of working memory one image may take (default
        `anime_gan.deploy.banded.DEFAULT_MEMORY_BUDGET`); larger images run banded (see `anime_gan.deploy.banded`)."""
        super().__init__(name="anime_gan")
        max_side = checked_max_side(max_side)
        generator = float32_generator(generator)
        # Only the raw variables are tracked; the generator is held by the closures below, so the
        # SavedModel contains variables and graphs, no Keras objects.
        self.generator_variables = [_raw_variable(v) for v in generator.weights]
        self.max_side = max_side
        # Saved with the model so clients (and `anime_gan.stylize`) can read the cap back.
        self.max_side_variable = tf.Variable(max_side, dtype=tf.int32, trainable=False, name="max_side")
        # Images too large to run whole within the memory budget run banded, with whole-image norm
        # statistics (`anime_gan.deploy.banded`); the signatures hold both graphs.
        bounded = memory_bounded(generator, max_side=max_side,
                                 memory_budget=memory_budget or DEFAULT_MEMORY_BUDGET)

        def stylize_batch(images, runner=bounded):
            """uint8 [N, H, W, 3] -> uint8 [N, H, W, 3] (one size per batch; N may be 0)."""
            shape = tf.shape(images)
            count, height, width = shape[0], shape[1], shape[2]
            with tf.control_dependencies(size_checks(height, width, max_side)):
                x = images_to_unit_range(images)
            # An empty batch has nothing to pad (MirrorPad refuses it): answer [0, H, W, 3] directly.
            return tf.cond(
                count > 0,
                lambda: unit_range_to_images(generate(runner, x)),
                lambda: tf.zeros(tf.stack([0, height, width, 3]), tf.uint8),
            )

        def stylize_one_encoded(image_bytes):
            # TF's own message for b"" is a bare "Input is empty."; name the input instead.
            not_empty = tf.debugging.Assert(
                tf.strings.length(image_bytes) > 0,
                [f"an element of {BYTES_KEY} is empty (0 bytes); send the bytes of the encoded image file."],
            )
            with tf.control_dependencies([not_empty]):
                height, width = encoded_image_size(image_bytes)
            head = _header(image_bytes)
            known = tf.reduce_any([height >= 0] + [_bytes_at(head, 0, sig) for sig in _JPEG_XL_SIGNATURES])
            # TF's own message for an unknown format is two sentences; ours names the input.
            header_checks = [tf.debugging.Assert(known, [_UNKNOWN_FORMAT.format(key=BYTES_KEY)])]
            # The size in the header is checked before decode_image allocates the pixels.
            header_checks += size_checks(height, width, max_side, applies=height >= 0)
            with tf.control_dependencies(header_checks):
                image_bytes = tf.identity(image_bytes)
            # channels=3 turns grayscale into RGB and drops alpha; expand_animations=False keeps the
            # first frame of a GIF as a 3-D image. dtype=uint8 scales 16-bit PNGs down.
            image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
            image.set_shape([None, None, 3])
            return tf.io.encode_png(stylize_batch(image[tf.newaxis])[0])

        # Declared without a shape: servers do not enforce a declared shape, so `checked_batch` checks
        # it in the graph (a declared rank would let the optimiser fold those checks away).
        @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name=IMAGES_KEY)])
        def serving_default(images):
            return {IMAGES_KEY: stylize_batch(checked_batch(images))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_KEY)])
        def stylize_bytes(image_bytes):
            # One image at a time: each may have its own size.
            encoded = tf.map_fn(
                stylize_one_encoded, image_bytes, fn_output_signature=tf.TensorSpec([], tf.string)
            )
            return {BYTES_KEY: encoded}

        self.serving_default = serving_default
        self.stylize_bytes = stylize_bytes
        # In-process calls (`__call__`) on batches that run whole take a graph of the plain generator:
        # the banded graphs are traced (seconds) only when an image needs them. Held outside the
        # module's tracked state, so the SavedModel never contains it.
        self._whole = _NotSaved(
            bounded.runs_whole if isinstance(bounded, MemoryBoundedGenerator) else (lambda *size: True),
            tf.function(lambda images: {IMAGES_KEY: stylize_batch(checked_batch(images), generator)},
                        input_signature=[tf.TensorSpec(None, tf.uint8)]),
        )

    def __call__(self, images_uint8):
        """uint8 [N, H, W, 3] -> uint8 [N, H, W, 3] as a tf.Tensor: what `serving_default` gives."""
        shape = getattr(images_uint8, "shape", ())
        fits, whole = self._whole.runs_whole, self._whole.function
        if len(shape) == 4 and None not in shape and fits(*shape[:3]):
            return whole(images_uint8)[IMAGES_KEY]
        return self.serving_default(images_uint8)[IMAGES_KEY]

    def signatures(self):
        return {
            SERVING_SIGNATURE: self.serving_default.get_concrete_function(),
            BYTES_SIGNATURE: self.stylize_bytes.get_concrete_function(),
        }


class _NotSaved:
    """A batch-size test and a tf.function, held where `tf.saved_model.save` does not look."""

    def __init__(self, runs_whole, function):
        self.runs_whole = runs_whole
        self.function = function


def export_saved_model(generator, output_dir, max_side=DEFAULT_MAX_SIDE):
    """Write a SavedModel with `serving_default` and `stylize_bytes` to output_dir; returns its path.

    The model is written beside output_dir first and moved into place at the end, so an existing
    model there is replaced only by a complete one. An existing output_dir that is not a
    SavedModel (and not empty) is left alone and reported.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not os.path.exists(
        os.path.join(output_dir, C.SAVED_MODEL_FILENAME)
    ):
        raise OutputExistsError(
            f"{output_dir} exists and is not a SavedModel; choose another --output or empty it first."
        )
    if os.path.isfile(output_dir):
        raise OutputExistsError(f"{output_dir} is a file; pass a directory path as --output.")
    module = StylizeModule(generator, max_side=max_side)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".saved_model_tmp_", dir=parent)
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        if os.path.exists(output_dir):
            old = output_dir + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output_dir, old)
            os.replace(staging, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir
