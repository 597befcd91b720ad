"""Train AnimeGAN: `python -m anime_gan.train --flagfile=anime_gan/configs/hayao.cfg`.

Re-running the same command resumes from the newest checkpoint in --checkpoint_dir.
`make train` runs the offline demo (configs/demo.cfg), building the demo data first if missing.
"""

import sys

from absl import app, flags, logging

from anime_gan.cli import quiet_tensorflow_import

quiet_tensorflow_import()

from anime_gan import constants as C  # noqa: E402
from anime_gan import training  # noqa: E402

_D = training.TrainConfig()
FLAGS = flags.FLAGS

# The original's flags, same names (defaults: the official code's values).
flags.DEFINE_integer("epoch", _D.epoch, "Number of epochs (init epochs included).")
flags.DEFINE_integer("init_epoch", _D.init_epoch, "Epochs of the init phase (G alone on the content loss).")
flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size (split over the replicas).")
flags.DEFINE_float("init_lr", _D.init_lr, "Adam learning rate of the init phase.")
flags.DEFINE_float("g_lr", _D.g_lr, "Adam learning rate of the generator (GAN phase).")
flags.DEFINE_float("d_lr", _D.d_lr, "Adam learning rate of the discriminator.")
flags.DEFINE_float("g_adv_weight", _D.g_adv_weight, "Weight of G's adversarial loss.")
flags.DEFINE_float("d_adv_weight", _D.d_adv_weight, "Weight of D's adversarial loss.")
flags.DEFINE_float("con_weight", _D.con_weight, "Weight of the content loss (init and GAN phase).")
flags.DEFINE_float("sty_weight", _D.sty_weight, "Weight of the grayscale style (Gram) loss.")
flags.DEFINE_float("color_weight", _D.color_weight, "Weight of the colour (YUV) loss.")
flags.DEFINE_integer("training_rate", _D.training_rate,
                     "G updates per D update: D is updated on the first of every training_rate GAN steps.")
flags.DEFINE_string("gan_type", _D.gan_type, f"Adversarial loss: {' | '.join(C.GAN_TYPES)}.")
flags.DEFINE_float("ld", _D.ld, "Gradient penalty weight (wgan-gp, wgan-lp, dragan).")
flags.DEFINE_integer("img_size", _D.img_size, "Side of the square training crops, in pixels.")
flags.DEFINE_integer("ch", _D.ch, "Discriminator base width.")
flags.DEFINE_integer("n_dis", _D.n_dis, "Discriminator depth (number of stride-2 stages + 1).")
flags.DEFINE_bool("sn", _D.sn, "Spectral normalisation in the discriminator.")

# Ours.
flags.DEFINE_string("dataset_dir", _D.dataset_dir, "Dataset folder (train_photo/, <dataset>/style, "
                    "<dataset>/smooth, val/); `make data` builds one.")
flags.DEFINE_string("dataset", _D.dataset, "Style folder name inside --dataset_dir (Hayao, Shinkai, Paprika, Demo).")
flags.DEFINE_string("checkpoint_dir", "", "Checkpoints, generator weights and SavedModel "
                    "(default: checkpoints/<dataset>_<gan_type>).")
# absl.logging already defines --log_dir (for log files it only writes when asked to, which we never
# do); we take it over with our meaning rather than rename the original's flag.
FLAGS["log_dir"].help = "metrics.jsonl, TensorBoard events, loss plot (default: <checkpoint_dir>/logs)."
flags.DEFINE_string("sample_dir", "", "Sample grids of the val images (default: <checkpoint_dir>/samples).")
flags.DEFINE_string("vgg_weights", _D.vgg_weights, "Perceptual VGG19 weights: auto (ImageNet if available, else "
                    "random with a warning) | imagenet | random | path to vgg19.npy or a Keras .h5.")
flags.DEFINE_string("mixed_precision", _D.mixed_precision, f"{' | '.join(training.MIXED_PRECISION)} "
                    "(mixed_float16 uses loss scaling).")
flags.DEFINE_string("strategy", _D.strategy, f"{' | '.join(training.STRATEGIES)} (multi_worker reads TF_CONFIG).")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "Compile the train steps with XLA.")
flags.DEFINE_integer("seed", _D.seed, "Seed of weights, data order and crops, and the step's random draws.")
flags.DEFINE_bool("deterministic", _D.deterministic, "Deterministic ops (bit-identical reruns and resumes; slower).")
flags.DEFINE_integer("steps_per_epoch", _D.steps_per_epoch, "Override the steps per epoch (0: from the data).")
flags.DEFINE_integer("checkpoint_every_steps", _D.checkpoint_every_steps,
                     "Also checkpoint every N steps (0: only at the end of each epoch).")
flags.DEFINE_integer("max_to_keep", _D.max_to_keep, "Training checkpoints kept.")
flags.DEFINE_bool("epoch_weights", _D.epoch_weights, "Also save the generator's weights after every epoch "
                  "(<checkpoint_dir>/epochs/epoch_NNN/, 16 MB each).")
flags.DEFINE_bool("export_saved_model", _D.export_saved_model, "Write <checkpoint_dir>/saved_model at the end.")
flags.DEFINE_bool("progress", _D.progress, "Show a progress bar.")


def config_from_flags() -> training.TrainConfig:
    import dataclasses

    names = [f.name for f in dataclasses.fields(training.TrainConfig)]
    return training.TrainConfig(**{n: getattr(FLAGS, n) for n in names})


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}; flags are written --name=value.", file=sys.stderr)
        return 2
    # TensorFlow's INFO lines (checkpoint sharding, SavedModel renames) would drown the progress bar.
    logging.set_verbosity(logging.WARNING)
    try:
        result = training.train(config_from_flags())
    except training.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except training.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the data and VGG modules' own one-sentence errors
        from anime_gan.data import DataError
        from anime_gan.vgg import VGGWeightsError

        if isinstance(e, (DataError, VGGWeightsError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    print(result.text())
    return 0


if __name__ == "__main__":
    app.run(main)
