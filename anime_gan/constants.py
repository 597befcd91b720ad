"""Facts of the original AnimeGAN, in one place (see ORIGINAL.md in the shared notes)."""

# Instance norm epsilons of the official generator: the plain conv blocks and the inverted residual
# blocks use slim's default 1e-5; the separable conv blocks were written with 1e-6.
IN_EPSILON = 1e-5
SEPCONV_IN_EPSILON = 1e-6

LEAKY_ALPHA = 0.2

# AnimeGANv2 (ORIGINAL_V2.md): contrib layer norm's epsilon, and the generator's size.
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
# The size rule of every image we stylize (`anime_gan.serving.size_error`): the smallest side G
# accepts after padding to a multiple of 4 (found by running G on 1..12 pixels: 8 is the first size
# whose quarter-resolution maps are wide enough for its reflect pads), and the default cap
# (--max_side) on the largest side.
MIN_SIDE = 8
DEFAULT_MAX_SIDE = 4096

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
