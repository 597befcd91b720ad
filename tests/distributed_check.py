"""Run in a subprocess by test_distributed.py: TensorFlow must see two logical CPU devices before it
initialises, which a pytest process that already imported TensorFlow cannot arrange.

Builds the same model twice (2-replica MirroredStrategy on logical CPUs, and the default 1-replica
strategy), gives both the same weights, runs one init step and one GAN step on the same global batch,
and prints the largest differences of the losses and the variables as JSON.
"""
import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from anime_gan import training as T  # noqa: E402

SGD_LR = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-6
cfg = T.TrainConfig(vgg_weights="random", ch=8, img_size=16, batch_size=4, seed=1)
T._configure(cfg)
mirrored = T.make_strategy("mirrored")
default = tf.distribute.get_strategy()
assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync


def setup(strategy):
    model = T.build_model(cfg, strategy)
    with strategy.scope():
        # Plain SGD: the update is the gradient itself, so the comparison sees the gradients'
        # equality directly (Adam's first step is ~lr*sign(g), which turns rounding noise on exactly
        # zero gradients into +-lr).
        model.compile(*(keras.optimizers.SGD(SGD_LR) for _ in range(3)))
    return model


two, one = setup(mirrored), setup(default)
for a, b in zip(two.generator.weights + two.discriminator.weights, one.generator.weights + one.discriminator.weights):
    b.assign(a.numpy())
variables = one.generator.weights + one.discriminator.weights
start = [v.numpy().copy() for v in variables]
rng = np.random.default_rng(0)
batch = tuple(tf.constant(rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)) for _ in range(4))
results = {}
for name, model, strategy in (("two", two, mirrored), ("one", one, default)):
    init_fn, gan_fn, _ = T._step_functions(model, strategy, jit_compile=False)
    split = T._splitter(strategy, cfg.batch_size)
    per = split(batch)
    losses = {f"init/{k}": float(v) for k, v in init_fn(per[0]).items()}
    losses.update({f"gan/{k}": float(v) for k, v in gan_fn(*per).items()})
    weights = [v.numpy() for v in model.generator.weights + model.discriminator.weights]
    results[name] = (losses, weights)
(l2, w2), (l1, w1) = results["two"], results["one"]
print(json.dumps({
    "loss_diff": {k: abs(l2[k] - l1[k]) for k in l1},
    "losses": l1,
    "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(w2, w1)),
    "max_trainable_update": max(float(np.abs(a - b).max()) for a, b, v in zip(w1, start, variables) if v.trainable),
}))
