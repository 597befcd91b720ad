"""The training configuration and its checks: `TrainConfig` (one field per flag of
`python -m anime_gan.train`) and `validate_config`.

Defaults are the official code's values; the loss weights come from `anime_gan.constants`, the one
place those facts live, and the command's flags take their defaults from here.
"""

from __future__ import annotations

import dataclasses
import math
import os

from anime_gan import constants as C
from anime_gan.errors import ConfigError

__all__ = ["MIXED_PRECISION", "STRATEGIES", "ConfigError", "TrainConfig", "validate_config"]

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")


@dataclasses.dataclass
class TrainConfig:
    # Data and output places.
    dataset_dir: str = "dataset"
    dataset: str = "Hayao"
    checkpoint_dir: str = ""  # default: checkpoints/<dataset>_<gan_type>
    log_dir: str = ""  # default: <checkpoint_dir>/logs
    sample_dir: str = ""  # default: <checkpoint_dir>/samples
    vgg_weights: str = "auto"
    # The architecture: v1 (AnimeGAN) or v2 (AnimeGANv2: its generator, a layer-norm D and the
    # weights below; configs/*_v2.cfg hold the official v2 recipe).
    arch: str = "v1"
    # Fine-tuning: G starts from this model (any path or catalogue name load_generator reads); D and
    # the optimizers start fresh. A checkpoint in checkpoint_dir wins (resume). The command sets
    # init_epoch to 0 with it unless --init_epoch is given; here init_epoch is taken as it is.
    init_from: str = ""
    # The original's hyper-parameters (official code defaults).
    epoch: int = 101
    init_epoch: int = 5
    batch_size: int = 6
    init_lr: float = 1e-4
    g_lr: float = 8e-5
    d_lr: float = 1.6e-4
    g_adv_weight: float = C.G_ADV_WEIGHT
    d_adv_weight: float = C.D_ADV_WEIGHT
    con_weight: float = C.CON_WEIGHT
    sty_weight: float = C.STY_WEIGHT
    color_weight: float = C.COLOR_WEIGHT
    tv_weight: float = 0.0  # AnimeGANv2's total-variation loss on G(p) (1.0 in its code)
    # D's adversarial terms: D(anime) real, D(grayscale anime), D(G(p)), D(smoothed anime) fake.
    d_real_weight: float = 1.0
    d_gray_weight: float = 1.0
    d_fake_weight: float = 1.0
    d_smooth_weight: float = C.SMOOTH_D_WEIGHT
    training_rate: int = 1
    gan_type: str = "lsgan"
    ld: float = C.GP_WEIGHT
    img_size: int = 256
    ch: int = 64
    n_dis: int = 3
    sn: bool = True
    # Ours.
    mixed_precision: str = "none"
    strategy: str = "default"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = False
    steps_per_epoch: int = 0  # 0: from the data
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_to_keep: int = 3
    epoch_weights: bool = True  # generator weights after every epoch, in <checkpoint_dir>/epochs/
    export_saved_model: bool = True
    progress: bool = True
    restart: bool = False  # train from step 0 over the checkpoints in checkpoint_dir

    def resolved(self) -> "TrainConfig":
        """A copy with the default folders filled in."""
        cfg = dataclasses.replace(self)
        if not cfg.checkpoint_dir:
            cfg.checkpoint_dir = os.path.join("checkpoints", f"{cfg.dataset}_{cfg.gan_type}")
        if not cfg.log_dir:
            cfg.log_dir = os.path.join(cfg.checkpoint_dir, "logs")
        if not cfg.sample_dir:
            cfg.sample_dir = os.path.join(cfg.checkpoint_dir, "samples")
        return cfg


def validate_config(cfg: TrainConfig, require_data: bool = True) -> None:
    """Raises ConfigError (one sentence) for any value out of range or contradictory.

    Pure Python, touching neither TensorFlow nor the disk beyond existence checks, so it runs before
    any work starts. `require_data=False` leaves out the check that the style folder exists (the
    command checks the flags before it builds the demo set).
    """
    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    need(cfg.epoch >= 1, f"--epoch must be at least 1 (got {cfg.epoch}).")
    need(0 <= cfg.init_epoch <= cfg.epoch,
         f"--init_epoch must be between 0 and --epoch={cfg.epoch} (got {cfg.init_epoch}).")
    need(cfg.batch_size >= 1, f"--batch_size must be at least 1 (got {cfg.batch_size}).")
    for name in ("init_lr", "g_lr", "d_lr"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value > 0, f"--{name} must be a positive number (got {value}).")
    need(cfg.arch in C.ARCHITECTURES, f"--arch must be one of {', '.join(C.ARCHITECTURES)} (got {cfg.arch!r}).")
    for name in ("g_adv_weight", "d_adv_weight", "con_weight", "sty_weight", "color_weight", "ld", "tv_weight",
                 "d_real_weight", "d_gray_weight", "d_fake_weight", "d_smooth_weight"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value >= 0, f"--{name} must be a number >= 0 (got {value}).")
    need(cfg.training_rate >= 1, f"--training_rate (G updates per D update) must be at least 1 "
                                 f"(got {cfg.training_rate}).")
    from anime_gan.training.losses import check_gan_type

    check_gan_type(cfg.gan_type)
    need(cfg.ch >= 2, f"--ch (discriminator width) must be at least 2 (got {cfg.ch}).")
    need(cfg.n_dis >= 1, f"--n_dis must be at least 1 (got {cfg.n_dis}).")
    min_side = max(8, 2 ** (cfg.n_dis - 1))
    need(cfg.img_size >= min_side and cfg.img_size % 4 == 0,
         f"--img_size must be a multiple of 4 and at least {min_side} (the VGG's and --n_dis={cfg.n_dis}'s "
         f"minimum; got {cfg.img_size}).")
    need(cfg.mixed_precision in MIXED_PRECISION,
         f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got {cfg.mixed_precision!r}).")
    need(cfg.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)} (got {cfg.strategy!r}).")
    need(cfg.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, 0 meaning from the data "
                                   f"(got {cfg.steps_per_epoch}).")
    need(cfg.checkpoint_every_steps >= 0, f"--checkpoint_every_steps must be >= 0, 0 meaning only at "
                                          f"epoch ends (got {cfg.checkpoint_every_steps}).")
    need(cfg.max_to_keep >= 1, f"--max_to_keep must be at least 1 (got {cfg.max_to_keep}).")
    need(bool(cfg.dataset) and os.sep not in cfg.dataset,
         f"--dataset must be a style folder name such as Hayao (got {cfg.dataset!r}).")
    need(not (cfg.strategy == "multi_worker" and not os.environ.get("TF_CONFIG")),
         "--strategy=multi_worker needs the TF_CONFIG environment variable describing the cluster.")
    from anime_gan.nets.vgg import WEIGHT_CHOICES

    if cfg.vgg_weights.lower() not in WEIGHT_CHOICES:
        need(os.path.isfile(cfg.vgg_weights),
             f"--vgg_weights file {cfg.vgg_weights} does not exist; pass auto, imagenet, random or an "
             f"existing vgg19.npy / .h5 file.")
    if require_data:
        from data_prep import report, stylesets

        report.not_a_folder(cfg.dataset_dir, "--dataset_dir")  # a file or a broken link: one sentence
        style_dir = os.path.join(cfg.dataset_dir, cfg.dataset, "style")
        v2 = [s for s in stylesets.STYLES if stylesets.folder_name(s) == cfg.dataset]
        fetch = (f"--source={stylesets.SOURCE} --style={v2[0]}\" for the AnimeGANv2 style set" if v2
                 else "--source=official\" for the official set")
        need(os.path.isdir(style_dir),
             f"Dataset folder {style_dir} does not exist; run `make data` (ARGS=\"{fetch}) or point "
             f"--dataset_dir/--dataset at your data.")
