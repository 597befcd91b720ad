"""Run in a subprocess by test_distributed.py: TensorFlow must see two logical CPU devices before it
initialises, which a pytest process that already imported TensorFlow cannot arrange.

Builds the same model twice (2-replica MirroredStrategy on logical CPUs, and the default 1-replica
strategy), gives both the same weights, runs one init step and one GAN step on the same global batch,
each from the same starting weights, and prints the largest differences of the losses and the
variables as JSON. With the arguments `xla DATASET_DIR STYLE` it instead asks `train` for XLA with the mirrored
strategy on these CPU devices and prints the error it gives as JSON.
"""
import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from anime_gan.training.config import ConfigError, TrainConfig  # noqa: E402
from anime_gan.training.loop import train  # noqa: E402
from anime_gan.training.setup import build_model, configure, make_strategy, split_batch, step_functions  # noqa: E402

SGD_LR = float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "xla" else 1e-6
cfg = TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=4, seed=1)
configure(cfg)
mirrored = make_strategy("mirrored")
default = tf.distribute.get_strategy()
assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
if sys.argv[1:2] == ["xla"]:  # xla DATASET_DIR STYLE
    try:
        train(TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=4, strategy="mirrored",
                          jit_compile=True, dataset_dir=sys.argv[2], dataset=sys.argv[3],
                          checkpoint_dir=sys.argv[2] + "/never-written"))
        print(json.dumps({"error": None}))
    except ConfigError as e:
        print(json.dumps({"error": str(e)}))
    sys.exit(0)


def setup(strategy):
    model = build_model(cfg, strategy)
    with strategy.scope():
        # Plain SGD: the update is the gradient itself, so the comparison sees the gradients'
        # equality directly (Adam's first step is ~lr*sign(g), which turns rounding noise on exactly
        # zero gradients into +-lr).
        model.compile(*(keras.optimizers.SGD(SGD_LR) for _ in range(3)))
    return model


two, one = setup(mirrored), setup(default)
rng = np.random.default_rng(0)
batch = tuple(tf.constant(rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)) for _ in range(4))
fns = {}
for name, model, strategy in (("two", two, mirrored), ("one", one, default)):
    init_fn, gan_fn, _ = step_functions(model, strategy, jit_compile=False)
    fns[name] = (init_fn, gan_fn, split_batch(strategy, cfg.batch_size)(batch))


def weights(model):
    return [v.numpy() for v in model.generator.weights + model.discriminator.weights]


# Each step starts both models from the same weights. The GAN step of this tiny model is chaotic:
# rounding-level differences in its starting weights (a 1e-7 relative perturbation) change its update
# by ~0.5%, so comparing two steps in a row would measure that, not the distribution.
trainable = [v.trainable for v in one.generator.weights + one.discriminator.weights]
out = {"loss_diff": {}, "losses": {}, "max_weight_diff": 0.0, "max_trainable_update": 0.0,
       "relative_update_diff": 0.0}
for phase in ("init", "gan"):
    for a, b in zip(two.generator.weights + two.discriminator.weights, one.generator.weights + one.discriminator.weights):
        b.assign(a.numpy())
    start = weights(one)
    results = {}
    for name in ("two", "one"):
        init_fn, gan_fn, per = fns[name]
        step = init_fn(*per) if phase == "init" else gan_fn(*per)
        results[name] = ({f"{phase}/{k}": float(v) for k, v in step.items()}, weights(two if name == "two" else one))
    (l2, w2), (l1, w1) = results["two"], results["one"]
    out["loss_diff"].update({k: abs(l2[k] - l1[k]) for k in l1})
    out["losses"].update(l1)
    out["max_weight_diff"] = max(out["max_weight_diff"], max(float(np.abs(a - b).max()) for a, b in zip(w2, w1)))
    out["max_trainable_update"] = max(out["max_trainable_update"], max(
        float(np.abs(b - s0).max()) for b, s0, t in zip(w1, start, trainable) if t))
    # |update(two) - update(one)| / |update(one)| over all trainable variables (L2).
    out["relative_update_diff"] = max(out["relative_update_diff"], float(
        np.linalg.norm(np.concatenate([(a - b).ravel() for a, b, t in zip(w2, w1, trainable) if t]))
        / np.linalg.norm(np.concatenate([(b - s0).ravel() for b, s0, t in zip(w1, start, trainable) if t]))))
print(json.dumps(out))
