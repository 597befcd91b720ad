"""The AnimeGANv2 Hayao reference of ../shared (a full-integer TFLite conversion of the official
generator): its weights dequantised under their official names, and its interpreter.

Read only by tests; the file itself is never copied into the project (its README: non-commercial
weights). Weight mapping (docs/original.md): conv weights are named after the op that reads them, so
each conv op's input 1 loses its last name part to give the official scope; OHWI (depthwise 1HWC)
becomes HWIO (HWC1); real = scale * (q - zero_point) per output channel. The conv ops' own bias
inputs are int32 zeros borrowed from other layers; only the depthwise biases are real.
"""

from __future__ import annotations

import os

import numpy as np

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
REFERENCE_V2 = os.path.join(SHARED, "reference", "animeganv2_hayao_int8", "animeganv2_hayao_256x256_integer_quant.tflite")
SCOPE = "generator/G_MODEL/"
SKIP_REASON = f"the AnimeGANv2 reference ({REFERENCE_V2}) is not here (it lives in the maintainers' ../shared)"


def interpreter(preserve_all_tensors=False):
    import tensorflow as tf

    options = {}
    if preserve_all_tensors:
        # Per-op checks read intermediate tensors: no delegate (XNNPACK fuses them away).
        options = {"experimental_preserve_all_tensors": True,
                   "experimental_op_resolver_type": tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = tf.lite.Interpreter(model_path=REFERENCE_V2, num_threads=2, **options)
    it.allocate_tensors()
    return it


def dequantize(detail, q):
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"], params["zero_points"]
    shape = [1] * q.ndim
    if len(scales) > 1:
        shape[params["quantized_dimension"]] = -1
    return (q.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)


def official_weights(it):
    """{official variable name: float32 array in our (TF1) layout}: the 77 variables."""
    details = {d["index"]: d for d in it.get_tensor_details()}
    weights = {}
    for op in it._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        w = details[op["inputs"][1]]
        scope = w["name"].rsplit("/", 1)[0]
        real = dequantize(w, it.get_tensor(w["index"])).transpose(1, 2, 3, 0)
        weights[scope + ("/w" if op["op_name"] == "DEPTHWISE_CONV_2D" else "/weights")] = real
        if op["op_name"] == "DEPTHWISE_CONV_2D":
            b = details[op["inputs"][2]]
            weights[scope + "/bias"] = dequantize(b, it.get_tensor(b["index"]))
    for d in details.values():
        if d["name"].endswith(("/gamma", "/beta")) and d["name"].startswith(SCOPE):
            weights[d["name"]] = dequantize(d, it.get_tensor(d["index"]))
    return {k: v.astype(np.float32) for k, v in weights.items()}


def run(it, image):
    """The reference's output for one float image [256, 256, 3] in [-1, 1]."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], image[None].astype(np.float32))
    it.invoke()
    return it.get_tensor(out["index"])[0]


def input_range(it):
    """The float range the reference's int8 input can hold (its calibration clips the input)."""
    detail = {d["name"]: d for d in it.get_tensor_details()}["input_int8"]
    (scale,), (zero_point,) = detail["quantization_parameters"]["scales"], detail["quantization_parameters"]["zero_points"]
    return scale * (-128 - zero_point), scale * (127 - zero_point)


def variance_maxima(it):
    """{layer norm scope: the largest variance its int8 `moments/variance` tensor can hold}."""
    maxima = {}
    for d in it.get_tensor_details():
        if d["name"].endswith("/moments/variance") and d["dtype"] == np.int8:
            (scale,), (zero_point,) = d["quantization_parameters"]["scales"], d["quantization_parameters"]["zero_points"]
            maxima[d["name"][: -len("/moments/variance")]] = scale * (127 - zero_point)
    return maxima


def layer_norm_ranges(it):
    """{layer norm scope: {tensor name after the scope: (lowest, highest) float its int8 can hold}}."""
    ranges = {}
    for d in it.get_tensor_details():
        name = d["name"]
        if d["dtype"] != np.int8 or "/moments/" not in name and "/batchnorm/" not in name:
            continue
        scope, _, rest = name.partition("/moments/") if "/moments/" in name else name.partition("/batchnorm/")
        kind = "moments/" if "/moments/" in name else "batchnorm/"
        (scale,), (zero_point,) = d["quantization_parameters"]["scales"], d["quantization_parameters"]["zero_points"]
        ranges.setdefault(scope, {})[kind + rest] = (scale * (-128 - zero_point), scale * (127 - zero_point))
    return {s: r for s, r in ranges.items() if s.startswith(SCOPE)}


PHOTO_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png")


def photos(size=256, names=PHOTO_NAMES):
    """Real photos shipped in scikit-image's wheel, centre-cropped and resized to size x size, RGB uint8."""
    import importlib.util

    import cv2

    spec = importlib.util.find_spec("skimage")
    folder = os.path.join(os.path.dirname(spec.origin), "data")
    images = []
    for name in names:
        bgr = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
        h, w = bgr.shape[:2]
        s = min(h, w)
        crop = bgr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        images.append(cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    return images
