"""The AnimeGANv2 Hayao reference among the maintainers' reference files (a full-integer TFLite conversion of the official
generator): its weights dequantised under their official names, and its interpreter.

Read only by tests; the file itself is never copied into the project (its README: non-commercial
weights). Weight mapping (docs/original.md): conv weights are named after the op that reads them, so
each conv op's input 1 loses its last name part to give the official scope; OHWI (depthwise 1HWC)
becomes HWIO (HWC1); real = scale * (q - zero_point) per output channel. The conv ops' own bias
inputs are int32 zeros borrowed from other layers; only the depthwise biases are real.

Also `tf1_reference_graph`: the v2 generator as TF1 code builds it, written from docs/original.md
(not from our layers), with seeded weights, for the official-layout checkpoint tests.
"""

from __future__ import annotations

import os

import numpy as np

from references import REFERENCES

REFERENCE_V2 = str(REFERENCES / "animeganv2_hayao_int8" / "animeganv2_hayao_256x256_integer_quant.tflite")
SCOPE = "generator/G_MODEL/"
SKIP_REASON = f"the AnimeGANv2 reference ({REFERENCE_V2}) is not here (a maintainers' reference file, kept beside the repository; see references/__init__.py)"


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


# ---- a TF1-style v2 graph written from docs/original.md ------------------------------------------
def tf1_reference_graph(seed):
    """The v2 generator as TF1 code builds it, from the facts (not from our layers): seeded variables
    of the official names and shapes, REFLECT pads, VALID convs, contrib layer norm, legacy resize.
    Returns (session, saver, input placeholder, output tensor)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    rng = np.random.default_rng(seed)
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, None, None, 3], name="generator_input")

        def var(name, shape, kind="weights"):
            if kind == "gamma":
                value = 1 + 0.1 * rng.standard_normal(shape)
            elif kind in ("beta", "bias"):
                value = 0.1 * rng.standard_normal(shape)
            else:
                value = rng.standard_normal(shape) * np.sqrt(2.6 / np.prod(shape[:-1]))
            return v1.get_variable(name, initializer=tf.constant(value.astype(np.float32)))

        def ln(h, scope):
            with v1.variable_scope(scope):
                c = h.shape[-1]
                gamma, beta = var("gamma", [c], "gamma"), var("beta", [c], "beta")
            mean, variance = tf.nn.moments(h, [1, 2, 3], keepdims=True)
            return tf.nn.batch_normalization(h, mean, variance, beta, gamma, 1e-12)

        counters = {}

        def cnl(h, filters, k=3, s=1):
            n = counters.get(v1.get_variable_scope().name, 0)
            counters[v1.get_variable_scope().name] = n + 1
            suffix = f"_{n}" if n else ""
            if s == 2:
                h = tf.pad(h, [[0, 0], [0, 1], [0, 1], [0, 0]], mode="REFLECT")
            elif k > 1:
                p = (k - 1) // 2
                h = tf.pad(h, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
            with v1.variable_scope("Conv" + suffix):
                w = var("weights", [k, k, h.shape[-1], filters])
            h = tf.nn.conv2d(h, w, [1, s, s, 1], "VALID")
            return tf.nn.leaky_relu(ln(h, "LayerNorm" + suffix), 0.2)

        def irb(h, name):
            cin = h.shape[-1]
            with v1.variable_scope(name):
                r = cnl(h, 2 * cin, k=1)
                r = tf.pad(r, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
                with v1.variable_scope(name):
                    w, b = var("w", [3, 3, 2 * cin, 1]), var("bias", [2 * cin], "bias")
                r = tf.nn.bias_add(tf.nn.depthwise_conv2d(r, w, [1, 1, 1, 1], "VALID"), b)
                r = tf.nn.leaky_relu(ln(r, "1"), 0.2)
                with v1.variable_scope("Conv_1"):
                    w = var("weights", [1, 1, 2 * cin, 256])
                r = ln(tf.nn.conv2d(r, w, [1, 1, 1, 1], "VALID"), "2")
            return h + r if cin == 256 else r

        def up(h, filters):
            shape = tf.shape(h)
            h = v1.image.resize_bilinear(h, [2 * shape[1], 2 * shape[2]], align_corners=False, half_pixel_centers=False)
            return cnl(h, filters)

        with v1.variable_scope("generator"), v1.variable_scope("G_MODEL"):
            with v1.variable_scope("A"):
                h = cnl(cnl(cnl(x, 32, k=7), 64, s=2), 64)
            with v1.variable_scope("B"):
                h = cnl(cnl(h, 128, s=2), 128)
            with v1.variable_scope("C"):
                h = cnl(h, 128)
                for i in range(1, 5):
                    h = irb(h, f"r{i}")
                h = cnl(h, 128)
            with v1.variable_scope("D"):
                h = cnl(up(h, 128), 128)
            with v1.variable_scope("E"):
                h = cnl(cnl(up(h, 64), 64), 32, k=7)
            with v1.variable_scope("out_layer"):
                with v1.variable_scope("Conv"):
                    w = var("weights", [1, 1, 32, 3])
                y = tf.tanh(tf.nn.conv2d(h, w, [1, 1, 1, 1], "VALID"))
        init = v1.global_variables_initializer()
        saver = v1.train.Saver()
    session = v1.Session(graph=graph)
    session.run(init)
    return session, saver, x, y


def official_generator():
    """Our float32 GeneratorV2 holding the official Hayao weights, dequantised from the reference."""
    from anime_gan.nets import GeneratorV2

    g = GeneratorV2()
    g.build()
    weights = official_weights(interpreter())
    for name, variable in g.tf1_variable_map().items():
        variable.assign(weights[name])
    return g
