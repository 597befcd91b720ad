"""Train AnimeGAN: `python -m anime_gan.train --flagfile=anime_gan/configs/hayao.cfg`.

Re-running the same command resumes from the newest checkpoint in --checkpoint_dir. --init_from=MODEL
fine-tunes: G starts from an official model (configs/finetune_v2.cfg, docs/training.md).
`make train` runs the offline demo (configs/demo.cfg), building the demo data first if missing.
"""

import dataclasses

from absl import flags

from anime_gan import cli
from anime_gan import constants as C
from anime_gan.training.config import MIXED_PRECISION, STRATEGIES, TrainConfig, validate_config

FLAGS = flags.FLAGS

# One flag per TrainConfig field, same name, default from TrainConfig (the original's flags keep
# the original's names; defaults are the official code's values).
HELP = {
    "epoch": "Number of epochs (init epochs included).",
    "init_epoch": "Epochs of the init phase (G alone on the content loss); with --init_from, 0 unless given.",
    "batch_size": "Global batch size (split over the replicas).",
    "init_lr": "Adam learning rate of the init phase.",
    "g_lr": "Adam learning rate of the generator (GAN phase).",
    "d_lr": "Adam learning rate of the discriminator.",
    "g_adv_weight": "Weight of G's adversarial loss.",
    "d_adv_weight": "Weight of D's adversarial loss.",
    "con_weight": "Weight of the content loss (init and GAN phase).",
    "sty_weight": "Weight of the grayscale style (Gram) loss.",
    "color_weight": "Weight of the colour (YUV) loss.",
    "tv_weight": "Weight of AnimeGANv2's total-variation loss on G(p) (0 in v1; 1 in the v2 code).",
    "d_real_weight": "Weight of D's term on colour anime (should read real).",
    "d_gray_weight": "Weight of D's term on grayscale anime (should read fake).",
    "d_fake_weight": "Weight of D's term on G(p) (should read fake).",
    "d_smooth_weight": "Weight of D's term on grayscale edge-smoothed anime (should read fake).",
    "arch": f"Generator architecture: {' | '.join(C.ARCHITECTURES)} (v2 = AnimeGANv2, with a layer-norm "
            "discriminator; configs/*_v2.cfg hold its official recipe).",
    "init_from": "Fine-tune: G starts from this model (a model folder, .weights.h5, official TF1 checkpoint or "
                 "catalogue name such as hayao-v2; of --arch, not the PyTorch port's forward); D and the optimizers "
                 "start fresh. A checkpoint in --checkpoint_dir wins over it (resume).",
    "training_rate": "G updates per D update: D is updated on the first of every training_rate GAN steps.",
    "gan_type": f"Adversarial loss: {' | '.join(C.GAN_TYPES)}.",
    "ld": "Gradient penalty weight (wgan-gp, wgan-lp, dragan).",
    "img_size": "Side of the square training crops, in pixels.",
    "ch": "Discriminator base width.",
    "n_dis": "Discriminator depth (number of stride-2 stages + 1).",
    "sn": "Spectral normalisation in the discriminator.",
    # Ours.
    "dataset_dir": "Dataset folder (train_photo/, <dataset>/style, <dataset>/smooth, val/); `make data` builds one.",
    "dataset": "Style folder name inside --dataset_dir (Hayao, Shinkai, Paprika, Demo).",
    "checkpoint_dir": "Checkpoints, generator weights and SavedModel (default: checkpoints/<dataset>_<gan_type>).",
    "log_dir": "metrics.jsonl, TensorBoard events, loss plot (default: <checkpoint_dir>/logs).",
    "sample_dir": "Sample grids of the val images (default: <checkpoint_dir>/samples).",
    "vgg_weights": "Perceptual VGG19 weights: auto (ImageNet if available, else random with a warning) | imagenet | "
                   "random | path to vgg19.npy or a Keras .h5.",
    "mixed_precision": f"{' | '.join(MIXED_PRECISION)} (mixed_float16 uses loss scaling).",
    "strategy": f"{' | '.join(STRATEGIES)} (multi_worker reads TF_CONFIG).",
    "jit_compile": "Compile the train steps with XLA.",
    "seed": "Seed of weights, data order and crops, and the step's random draws.",
    "deterministic": "Deterministic ops: bit-identical reruns and resumes, also with other processes on the CPU.",
    "steps_per_epoch": "Override the steps per epoch (0: from the data).",
    "checkpoint_every_steps": "Also checkpoint every N steps (0: only at the end of each epoch).",
    "max_to_keep": "Training checkpoints kept.",
    "epoch_weights": "Also save the generator's weights after every epoch (<checkpoint_dir>/epochs/epoch_NNN/, 16 MB each).",
    "export_saved_model": "Write <checkpoint_dir>/saved_model at the end.",
    "progress": "Show a progress bar.",
    "restart": "Train from step 0 even though --checkpoint_dir holds checkpoints (they are removed); without it a run "
               "resumes from its newest good checkpoint, or is refused when none can be restored.",
}


def define_flags() -> None:
    """One flag per TrainConfig field; defined only when run as a command, so importing this module never
    adds global flags."""
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}
    for field in dataclasses.fields(TrainConfig):
        if field.name == "log_dir":
            # absl.logging already defines --log_dir (for log files it only writes when asked to, which
            # we never do); we take it over with our meaning rather than rename the original's flag.
            FLAGS["log_dir"].help = HELP["log_dir"]
            continue
        define[type(field.default)](field.name, field.default, HELP[field.name])


def config_from_flags() -> TrainConfig:
    """The TrainConfig the parsed flags describe. With --init_from the init phase is skipped
    (init_epoch 0) unless --init_epoch was given, on the command line or in a flagfile: a trained G
    needs no warm-up on the content loss."""
    cfg = TrainConfig(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(TrainConfig)})
    if cfg.init_from and not FLAGS["init_epoch"].present:
        cfg.init_epoch = 0
    return cfg


def main(argv):
    # The library loads TensorFlow: imported here, after `cli.run` has quieted its import.
    from anime_gan.training.data import ensure_demo_data
    from anime_gan.training.loop import train

    cli.reject_arguments(argv)
    cfg = config_from_flags()
    validate_config(cfg.resolved(), require_data=False)  # bad flags fail before the demo set is built
    ensure_demo_data(cfg.dataset_dir, cfg.dataset)
    print(train(cfg).text())
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
