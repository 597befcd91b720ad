"""Serving: a SavedModel with two signatures around the generator, loadable without `anime_gan`.

The exported object is a plain `tf.Module` whose `tf.function`s capture the generator's variables
(no Keras objects are saved), so `tf.saved_model.load`, `saved_model_cli` and TF Serving run it in
a process where neither `anime_gan` nor Keras can be imported.

Signatures
- `serving_default`: `images` uint8 [N, H, W, 3] -> `images` uint8 [N, H, W, 3].
- `stylize_bytes`: `image_bytes` string [N] (JPEG, PNG, BMP or GIF; first frame) -> `image_bytes`
  string [N] (PNG), each image keeping its own size (TF Serving's REST `{"b64": ...}` convention:
  the output name ends in `_bytes`). Decoding is TensorFlow's `decode_image`: grayscale becomes
  RGB, 16-bit PNGs are scaled to 8 bits, alpha is dropped (the colour under it is stylized) and the
  EXIF orientation is not applied, so send upright images (`anime_gan.stylize` applies it and
  composites transparency over white).

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
from anime_gan.errors import ConfigError, OutputExistsError
from anime_gan.image_io import images_to_unit_range, unit_range_to_images

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


def size_checks(height, width, max_side):
    """`size_error` in the graph: assertions that raise InvalidArgumentError with the same sentences."""
    def message(template):
        return tf.strings.format(template.format(name="image", height="{}", width="{}", max_side=max_side),
                                 (height, width))

    small = tf.debugging.Assert(tf.minimum(height, width) >= MIN_SIDE, [message(_TOO_SMALL)])
    large = tf.debugging.Assert(tf.maximum(height, width) <= max_side, [message(_TOO_LARGE)])
    return [small, large]


def _float32_generator(generator):
    """The generator itself if it computes in float32, else a float32 copy of it.

    Serving runs on any device, where a float16 policy left over from training would only cost
    accuracy; the weights are float32 either way.
    """
    if generator.compute_dtype == "float32":
        return generator
    from anime_gan.generator import build_generator

    clone = build_generator("float32")
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

    def __init__(self, generator, max_side=DEFAULT_MAX_SIDE):
        super().__init__(name="anime_gan")
        if not generator.built:
            generator.build()
        max_side = int(max_side)
        if max_side < MIN_SIDE:
            raise ConfigError(f"--max_side={max_side} is below the smallest side G accepts ({MIN_SIDE}).")
        generator = _float32_generator(generator)
        # Only the raw variables are tracked; the generator is held by the closures below, so the
        # SavedModel contains variables and graphs, no Keras objects.
        self.generator_variables = [_raw_variable(v) for v in generator.weights]
        self.max_side = max_side
        # Saved with the model so clients (and `anime_gan.stylize`) can read the cap back.
        self.max_side_variable = tf.Variable(max_side, dtype=tf.int32, trainable=False, name="max_side")

        def stylize_batch(images):
            """uint8 [N, H, W, 3] -> uint8 [N, H, W, 3] (one size per batch)."""
            shape = tf.shape(images)
            height, width = shape[1], shape[2]
            with tf.control_dependencies(size_checks(height, width, max_side)):
                x = images_to_unit_range(images)
            pad_h = (-height) % C.GENERATOR_STRIDE
            pad_w = (-width) % C.GENERATOR_STRIDE
            # Bottom/right only, so the crop back is a plain slice; reflect (not edge) padding is what
            # G does internally and leaves no flat band for the instance norm statistics.
            x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
            y = generator(x)
            return unit_range_to_images(y[:, :height, :width, :])

        def stylize_one_encoded(image_bytes):
            # TF's own message for b"" is a bare "Input is empty."; name the input instead.
            not_empty = tf.debugging.Assert(
                tf.strings.length(image_bytes) > 0,
                [f"an element of {BYTES_KEY} is empty (0 bytes); send the encoded image file's bytes."],
            )
            with tf.control_dependencies([not_empty]):
                image_bytes = tf.identity(image_bytes)
            # channels=3 turns grayscale into RGB and drops alpha; expand_animations=False keeps the
            # first frame of a GIF as a 3-D image. dtype=uint8 scales 16-bit PNGs down.
            image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
            image.set_shape([None, None, 3])
            return tf.io.encode_png(stylize_batch(image[tf.newaxis])[0])

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_KEY)])
        def serving_default(images):
            return {IMAGES_KEY: stylize_batch(images)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_KEY)])
        def stylize_bytes(image_bytes):
            # One image at a time: each may have its own size.
            encoded = tf.map_fn(
                stylize_one_encoded, image_bytes, fn_output_signature=tf.TensorSpec([], tf.string)
            )
            return {BYTES_KEY: encoded}

        self.serving_default = serving_default
        self.stylize_bytes = stylize_bytes

    def __call__(self, images_uint8):
        """uint8 [N, H, W, 3] -> uint8 [N, H, W, 3] as a tf.Tensor."""
        return self.serving_default(images_uint8)[IMAGES_KEY]

    def signatures(self):
        return {
            SERVING_SIGNATURE: self.serving_default.get_concrete_function(),
            BYTES_SIGNATURE: self.stylize_bytes.get_concrete_function(),
        }


def export_saved_model(generator, output_dir, max_side=DEFAULT_MAX_SIDE):
    """Write a SavedModel with `serving_default` and `stylize_bytes` to output_dir; returns its path.

    The model is written beside output_dir first and moved into place at the end, so an existing
    model there is replaced only by a complete one. An existing output_dir that is not a
    SavedModel (and not empty) is left alone and reported.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not os.path.exists(
        os.path.join(output_dir, "saved_model.pb")
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
