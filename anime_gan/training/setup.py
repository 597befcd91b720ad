"""What a training run is built from: the distribution strategy, the model with its optimizers, the
generator a fine-tuning run starts from, the run's seeds, op determinism and dtype policy, and the step
functions the loop calls.

Distribution: every worker builds the same input pipeline (same seed) and reads the same global
batch; replica r of the global replica group takes rows [r*b, (r+1)*b) of it, b = batch_size /
replicas (`split_batch`). The input iterator therefore stays a plain, checkpointable one on every
worker.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from anime_gan.errors import ConfigError, ModelError, PathNotFoundError, first_line
from anime_gan.nets import generator_class
from anime_gan.nets.discriminator import Discriminator
from anime_gan.nets.vgg import load_vgg19
from anime_gan.training.config import TrainConfig
from anime_gan.training.gan import AnimeGAN, make_adam
from anime_gan.training.health import step_health
from anime_gan.weights import ARCH_LABEL, load_generator

__all__ = ["UNTRAINED_VGG_WARNING", "build_model", "configure", "copy_generator_weights", "is_chief",
           "load_init_generator", "make_strategy", "split_batch", "step_functions"]

UNTRAINED_VGG_WARNING = (
    "the perceptual VGG19 has RANDOM weights ({source}): content and style losses do not "
    "measure what the paper's do, and the results will not look like AnimeGAN. Put vgg19.npy or Keras' "
    "VGG19 ImageNet weights in place and pass --vgg_weights (see docs/networks.md, Perceptual network)."
)


def make_strategy(name: str):
    """The tf.distribute strategy of --strategy: default, mirrored (the GPUs, else the CPU devices)
    or multi_worker (reads TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files: the chief task, else worker 0 when there is none."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def build_model(cfg: TrainConfig, strategy):
    """G, D, VGG and the AnimeGAN model with its three optimizers, inside the strategy's scope."""
    with strategy.scope():
        # --arch=v2: AnimeGANv2's generator and its discriminator, which has layer norms where v1's has
        # instance norms (docs/original.md); the loss weights come from the flags either way.
        generator = generator_class(cfg.arch)()
        generator.build()
        discriminator = Discriminator(ch=cfg.ch, n_dis=cfg.n_dis, sn=cfg.sn,
                                      norm="layer" if cfg.arch == "v2" else "instance")
        discriminator.build()
        vgg = load_vgg19(cfg.vgg_weights, seed=cfg.seed)
        model = AnimeGAN(
            generator, discriminator, vgg, gan_type=cfg.gan_type, g_adv_weight=cfg.g_adv_weight,
            d_adv_weight=cfg.d_adv_weight, con_weight=cfg.con_weight, sty_weight=cfg.sty_weight,
            color_weight=cfg.color_weight, tv_weight=cfg.tv_weight,
            d_term_weights=(cfg.d_real_weight, cfg.d_gray_weight, cfg.d_fake_weight, cfg.d_smooth_weight),
            ld=cfg.ld, seed=cfg.seed,
        )
        optimizers = [make_adam(lr) for lr in (cfg.init_lr, cfg.g_lr, cfg.d_lr)]
        if cfg.mixed_precision == "mixed_float16":
            # float16's range needs loss scaling; bfloat16 has float32's range and does not.
            optimizers = [keras.optimizers.LossScaleOptimizer(o) for o in optimizers]
        model.compile(*optimizers)
    return model


def load_init_generator(model: str, arch: str):
    """The generator a fine-tuning run starts from (--init_from): any model `load_generator` reads,
    in float32. One sentence when it is missing or not a generator (PathNotFoundError, ModelError),
    of the other architecture than --arch, or computing the PyTorch port's forward (ConfigError): a
    run trains the official forward, and its checkpoints record no generator options (docs/training.md,
    "Fine-tune on your own style")."""
    try:
        generator = load_generator(model, policy="float32")
    except (PathNotFoundError, ModelError) as e:
        raise type(e)(f"--init_from={model}: {first_line(e)}.") from None
    if generator.arch != arch:
        recipe = " (configs/finetune_v2.cfg sets it with v2's loss weights)" if generator.arch == "v2" else ""
        raise ConfigError(f"--init_from={model} holds an {ARCH_LABEL[generator.arch]} generator but --arch={arch} "
                          f"trains {ARCH_LABEL[arch]}; pass --arch={generator.arch}{recipe}, or a model of --arch={arch}.")
    options = generator.options()
    if options:
        what = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
        raise ConfigError(f"--init_from={model} computes the PyTorch port's forward ({what}), which training does not "
                          f"build (it trains the official AnimeGANv2 forward); start from an official model instead, "
                          f"e.g. hayao-v2, paprika-v2, shinkai-v2 or an official TF1 checkpoint.")
    return generator


def copy_generator_weights(source, target) -> None:
    """Sets every weight of the built generator `target` to the one of `source`, an equal network."""
    pairs = list(zip(source.weights, target.weights, strict=True))
    for s, t in pairs:
        if tuple(s.shape) != tuple(t.shape):
            raise ValueError(f"generator weight {t.path} is {tuple(t.shape)}, the source's {s.path} {tuple(s.shape)}.")
    for s, t in pairs:
        t.assign(s.value)


def configure(cfg: TrainConfig):
    """Seeds, op determinism and the dtype policy for a run; returns the previous policy's name."""
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
        _disable_memory_optimizer()
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32" if cfg.mixed_precision == "none" else cfg.mixed_precision)
    return previous


def _disable_memory_optimizer() -> None:
    """Turns Grappler's memory optimizer off for every function of this process: its AddN rewrite sums
    in thread-completion order, so the GAN step's results depended on the machine's load. TF 2 has no
    public switch for it: it is set in the eager context's base ConfigProto (docs/development.md,
    "Determinism and Grappler's memory optimizer")."""
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    tf.config.list_physical_devices()  # device discovery reads the base config once: let it run first
    base = config_pb2.ConfigProto()
    if ctx._config is not None:
        base.CopyFrom(ctx._config)
    base.graph_options.rewrite_options.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    ctx._config = base
    ctx.function_call_options = None  # this thread's cached call options are rebuilt from ctx.config


def step_functions(model, strategy, jit_compile, guard=False):
    """The loop's three steps, each `AnimeGAN.train_step` in one mode: (init, GAN with the D update,
    GAN without it). Each is a tf.function that takes the per-replica batch (photo, anime,
    anime_gray, smooth_gray) and returns the losses averaged over replicas. `train_step` reads
    `model.phase` and `model.update_discriminator` when it is traced, so each mode is its own
    function, traced once.

    With guard=True each step also returns the `HEALTH` entries of `step_health`, measured after the
    update (the loop takes them out before it logs the losses)."""
    def wrap(phase, update_discriminator):
        optimizers = {"G": model.init_optimizer} if phase == "init" else {"G": model.g_optimizer}
        if phase == "gan" and update_discriminator:
            optimizers["D"] = model.d_optimizer

        def replica_step(*batch):
            model.phase, model.update_discriminator = phase, update_discriminator
            if not guard:
                return model.train_step(batch)
            # Read before and after the update: the function's automatic control dependencies run
            # the reads and the optimizers' writes of each variable in program order.
            iterations = {net: tf.identity(opt.iterations) for net, opt in optimizers.items()}
            losses = dict(model.train_step(batch))
            return {**losses, **step_health(model, optimizers, iterations)}

        inner = tf.function(replica_step, jit_compile=True) if jit_compile else replica_step

        @tf.function
        def run(*batch):
            per_replica = strategy.run(inner, args=batch)
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

        return run

    return wrap("init", True), wrap("gan", True), wrap("gan", False)


def split_batch(strategy, batch_size):
    """global batch (tuple of tensors) -> tuple of per-replica values: replica r takes rows
    [r*b, (r+1)*b) by its index in the global replica group."""
    if strategy.num_replicas_in_sync == 1:
        return lambda batch: tuple(batch)
    per = batch_size // strategy.num_replicas_in_sync

    def split(batch):
        def rows(tensor):
            def take(ctx):
                i = ctx.replica_id_in_sync_group
                return tensor[i * per:(i + 1) * per]

            return strategy.experimental_distribute_values_from_function(take)

        return tuple(rows(t) for t in batch)

    return split
