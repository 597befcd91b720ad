"""Export a generator as an ONNX model (ONNX Runtime, OpenVINO, anything that reads ONNX opset 17).

    python -m anime_gan.export --format=onnx --checkpoint_dir=checkpoints/hayao --output=hayao.onnx

Contract (the SavedModel's `serving_default`, see `anime_gan.deploy.saved_model`): input `images` uint8
[N, H, W, 3] RGB with N, H and W dynamic; output `stylized` uint8 [N, H, W, 3], the same size.
A second output, `stylized_unit_range`, is the float32 [-1, 1] image before it is quantised (what the
tests compare at 1e-4; a client asking only for `stylized` pays nothing for it in ONNX Runtime).
The pixel mapping is `images_to_unit_range` in (x / 127.5 - 1) and `unit_range_to_images` out
(clip((y + 1) / 2 * 255, 0, 255), then a Cast to uint8, which truncates as TF's cast does), so a
pixel comes out as the SavedModel's does (within one level where float32 rounding differs).
Each image is reflect-padded at the bottom and right to a multiple of 4 and cropped back, as
`anime_gan.deploy.saved_model.generate` does; a v2 generator in align-corners mode runs unpadded.

What the model does not do: the SavedModel's in-graph size checks (at least 8 pixels a side, at
most max_side) and its N = 0 answer. tf2onnx drops Assert ops, so the runner checks sizes before
the call (`anime_gan.inference.runners`), and the cap is stored in the metadata (`anime_gan.max_side`) with
the architecture (`anime_gan.arch`), its options (`anime_gan.options`, JSON) and the padding rule.

The ops that needed care, and what tf2onnx made of them (opset 17):
- Reflect padding (the generator's own MirrorPad and the dynamic pad to a multiple of 4): `Pad`
  with mode="reflect"; the dynamic one gets its pads from `Shape`/`Mod` arithmetic. The pad loses
  the static channel count, which the convolutions need: a reshape to [N, H', W', 3] restores it.
- TF1's legacy bilinear resize (align_corners=False, half_pixel_centers=False): `Resize` with
  coordinate_transformation_mode="asymmetric", mode="linear" (exact, not half-pixel); v2's
  align-corners mode: `Resize` with "align_corners" to the sizes taken on the way down.
- Instance norm (v1) and layer norm (v2), written as `tf.nn.moments` + `batch_normalization`: the
  means over H and W became `GlobalAveragePool` (80 of them in v1: mean and variance of 40 norms),
  the rest `Sub`, `Mul`, `Sqrt`, `Reciprocal`, `Add` element-wise, no fused norm op, so the statistics
  are float32 as in TF (the order of summation is the backend's: 4e-5 from TF at 256x256).
- The pad to a multiple of 4: `(-h) % 4` became an ONNX `Mod` that keeps the sign (-3 for h = 75,
  and a negative pad crops), so it is written `(4 - h % 4) % 4`.
- Separable convolutions: `Conv` with group = channels (depthwise) then a 1x1 `Conv`.
"""

from __future__ import annotations

import json
import logging
import os

from anime_gan import constants as C
from anime_gan.errors import OutputExistsError

INPUT_NAME = "images"  # the SavedModel's input name; the outputs must be named otherwise (tf2onnx)
OUTPUT_NAME = "stylized"
FLOAT_OUTPUT_NAME = "stylized_unit_range"
OPSET = 17
METADATA_PREFIX = "anime_gan."
# Bumped when the graph written here changes, so cached conversions (anime_gan.inference.runners) are redone.
FORMAT_VERSION = "1"


def pads_input(generator):
    """False for a v2 generator in align-corners mode (it keeps any size and resizes to recorded sizes)."""
    return getattr(generator, "resize", "tf1") != "align_corners"


def onnx_function(generator):
    """A tf.function uint8 [N, H, W, 3] -> {stylized: uint8, stylized_unit_range: float32} over
    the generator's variables (frozen to constants by tf2onnx)."""
    import tensorflow as tf

    from anime_gan.deploy.saved_model import float32_generator
    from anime_gan.image_io import images_to_unit_range, unit_range_to_images

    generator = float32_generator(generator)
    pad = pads_input(generator)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def stylize(images):
        x = images_to_unit_range(images)
        if pad:
            shape = tf.shape(x)
            count, height, width = shape[0], shape[1], shape[2]
            # (s - h % s) % s, not (-h) % s: tf2onnx turns FloorMod of a negative number into an
            # ONNX Mod that keeps the sign (-75 % 4 = -3), and a negative pad crops.
            stride = C.GENERATOR_STRIDE
            pad_h = (stride - height % stride) % stride
            pad_w = (stride - width % stride) % stride
            x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
            # The dynamic pad forgets the channel count; the convolutions need it back.
            x = tf.reshape(x, tf.stack([count, height + pad_h, width + pad_w, 3]))
            y = generator(x)[:, :height, :width, :]
        else:
            y = generator(x)
        return {OUTPUT_NAME: unit_range_to_images(y), FLOAT_OUTPUT_NAME: tf.identity(y)}

    return stylize, generator


def metadata(generator, max_side):
    return {
        "arch": generator.arch,
        "options": json.dumps(generator.options(), sort_keys=True),
        "max_side": str(int(max_side)),
        "padding": "reflect bottom/right to a multiple of 4, cropped back" if pads_input(generator) else "none",
        "contract": "images uint8 [N,H,W,3] RGB -> stylized uint8 [N,H,W,3] (same size); "
                    "stylized_unit_range float32 [-1,1]",
        "format_version": FORMAT_VERSION,
    }


def to_onnx(generator, max_side=C.DEFAULT_MAX_SIDE):
    """The generator as an onnx.ModelProto (the contract in the module docstring)."""
    import tensorflow as tf
    import tf2onnx

    from anime_gan.deploy.saved_model import checked_max_side

    max_side = checked_max_side(max_side)
    fn, generator = onnx_function(generator)
    # tf2onnx logs its optimiser passes at INFO, which would bury a command's own lines.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = (tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME),)
    model, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
    for key, value in metadata(generator, max_side).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    model.producer_name = "anime_gan"
    return model


def write_onnx(generator, output, max_side=C.DEFAULT_MAX_SIDE, overwrite=False):
    """Write the generator as ONNX to the file `output` (a temp file beside it, then renamed); returns it."""
    output = os.path.abspath(os.fspath(output))
    if os.path.isdir(output):
        raise OutputExistsError(f"--output={output} is a directory; pass a file path such as model.onnx.")
    if os.path.exists(output) and not overwrite:
        raise OutputExistsError(
            f"--output={output} already exists; pass --overwrite to replace it or choose another path.")
    from data_prep.files import write_bytes

    write_bytes(output, to_onnx(generator, max_side).SerializeToString())
    return output


def read_metadata(model_proto):
    """{key without the anime_gan. prefix: value} of an onnx.ModelProto's metadata_props."""
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model_proto.metadata_props
            if p.key.startswith(METADATA_PREFIX)}
