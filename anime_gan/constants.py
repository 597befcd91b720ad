"""Facts in one place: the original AnimeGAN/AnimeGANv2 numbers we match (docs/original.md lists their
sources), and the project's own names for files, runtimes and precisions."""

import re

# Instance norm epsilons of the official generator: the plain conv blocks and the inverted residual
# blocks use slim's default 1e-5; the separable conv blocks were written with 1e-6.
IN_EPSILON = 1e-5
SEPCONV_IN_EPSILON = 1e-6

LEAKY_ALPHA = 0.2

# AnimeGANv2: contrib layer norm's epsilon, and the generator's size.
LN_EPSILON = 1e-12
GENERATOR_V2_PARAMS = 2_143_552
GENERATOR_V2_VARIABLES = 77
N_INVERTED_RESIDUAL_V2 = 4
# The generator architectures: "v1" (AnimeGAN) and "v2" (AnimeGANv2).
ARCHITECTURES = ("v1", "v2")

# Generator facts.
GENERATOR_PARAMS = 3_956_096
GENERATOR_VARIABLES = 129
N_INVERTED_RESIDUAL = 8
# The generator halves the resolution twice: outputs are 4*floor(H/4) x 4*floor(W/4).
GENERATOR_STRIDE = 4
# The size rule of every image we stylize (`anime_gan.deploy.saved_model.size_error`): the smallest side G
# accepts after padding to a multiple of 4 (found by running G on 1..12 pixels: 8 is the first size
# whose quarter-resolution maps are wide enough for its reflect pads), and the default cap
# (--max_side) on the largest side.
MIN_SIDE = 8
DEFAULT_MAX_SIDE = 4096
# The side of the square crops the official generators were trained on (img_size 256).
OFFICIAL_TRAIN_SIZE = 256

# Names of the official graph's tensors.
TF1_INPUT = "generator_input:0"
TF1_OUTPUT = "generator/G_MODEL/Tanh:0"
TF1_SCOPE = "generator/G_MODEL/"

# Perceptual network: Caffe VGG19 preprocessing (BGR mean).
VGG_MEAN_BGR = (103.939, 116.779, 123.68)
VGG19_NPY_URL = "https://github.com/TachibanaYoshino/AnimeGAN/releases/download/vgg16%2F19.npy/vgg19.npy"

# Loss weights and schedule of the official code (paper values differ; see configs/*.cfg).
G_ADV_WEIGHT = 300.0
D_ADV_WEIGHT = 300.0
CON_WEIGHT = 1.5
STY_WEIGHT = 3.0
COLOR_WEIGHT = 10.0
SMOOTH_D_WEIGHT = 0.1  # weight of D(grayscale smooth) in the discriminator loss
GP_WEIGHT = 10.0  # `ld`
GAN_TYPES = ("lsgan", "gan", "hinge", "wgan-gp", "wgan-lp", "dragan")
GP_GAN_TYPES = ("wgan-gp", "wgan-lp", "dragan")  # the types whose D loss adds a gradient penalty

# TF1's Adam epsilon (Keras' default is 1e-7).
ADAM_EPSILON = 1e-8
ADAM_BETA1 = 0.5
ADAM_BETA2 = 0.999


# ---- the project's own names --------------------------------------------------------------------
WEIGHTS_FILENAME = "generator.weights.h5"
RUN_WEIGHTS = f"generator/{WEIGHTS_FILENAME}"  # a training run's final weights, inside its folder
SAVED_MODEL_DIR = "saved_model"  # what convert, pretrained and training write beside the weights
SAVED_MODEL_FILENAME = "saved_model.pb"

# Every form a model path may take (`anime_gan.load_generator`, `--model`, `--checkpoint_dir`, the page);
# a catalogue name (`python -m anime_gan.pretrained list`) is read as its installed folder.
MODEL_FORMS = (
    "a SavedModel folder",
    f"a folder holding {WEIGHTS_FILENAME}",
    f"a training run folder (its {RUN_WEIGHTS}, else its newest ckpt-N)",
    "a training checkpoint prefix such as run/ckpt-12",
    "a .weights.h5 file",
    "an official TF1 checkpoint prefix",
    "a .pt file of the PyTorch port",
    "a catalogue name such as hayao-v2",
)
ACCEPTED_FORMS = ", ".join(MODEL_FORMS[:-1]) + " or " + MODEL_FORMS[-1]

# Where inference runs (`stylize --runtime`) and in what arithmetic (`stylize --precision`, the API, the
# page; docs/inference.md): float16 is OpenVINO's f16 inference hint or LiteRT's float16 weights; int8
# is convolutions quantised statically (int8 weights per channel, uint8 activations) with the norms in
# float (`anime_gan.deploy.quantize`). TFLite adds int8_full (every tensor int8, `anime_gan.deploy.tflite`;
# its "int8" is dynamic-range quantisation, int8 weights and activations quantised on the fly).
RUNTIMES = ("auto", "tensorflow", "onnxruntime", "openvino", "litert")
PRECISIONS = ("float32", "float16", "int8")
DEFAULT_PRECISION = "float32"
RUNTIME_PRECISIONS = {"tensorflow": ("float32",), "onnxruntime": ("float32", "int8"),
                      "openvino": ("float32", "float16", "int8"), "litert": ("float32", "float16")}
TFLITE_PRECISIONS = PRECISIONS + ("int8_full",)

# Face mode (`stylize --faces`): the side of the aligned square crop a face model stylizes (the PyTorch
# port's face_paint models were trained on aligned 512 x 512 faces), and the smallest face (the longer
# side of its detected box, in photo pixels) given to the face model; smaller ones keep the background.
FACE_SIZE = 512
MIN_FACE_SIDE = 48

_CHECKPOINT_NUMBER = re.compile(r"-(\d+)(?:\.ckpt)?$")


def checkpoint_number(prefix) -> int:
    """N of a checkpoint prefix NAME-N (TF2 `ckpt-12`, TF1 `Hayao-60` or `Hayao-60.ckpt`); -1 if none."""
    match = _CHECKPOINT_NUMBER.search(str(prefix))
    return int(match.group(1)) if match else -1
