"""AnimeGANv2's GAN step (`AnimeGAN` with a v2 generator, a layer-norm discriminator, the TV term and
per-term D weights) against the plain eager reference of tests/gan_reference.py with v2's weights and
TV term (docs/original.md, AnimeGANv2): every loss and every updated variable to 1e-5 (the same bound and the same
Adam rounding exemption as v1's test)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from anime_gan.nets.discriminator import Discriminator
from anime_gan.nets.generator_v2 import GeneratorV2
from anime_gan.training.gan import AnimeGAN, make_adam
from anime_gan.nets.vgg import load_vgg19
from gan_reference import RefAdam, RefSGD, assert_same, ref_gan_step, restore, state

SIDE, BATCH = 24, 2
LR_INIT, LR_G, LR_D = 2e-4, 2e-5, 4e-5  # v2's train.py
W = dict(g_adv=300.0, d_adv=300.0, con=1.5, sty=2.5, color=10.0, tv=1.0)
D_TERMS = (1.7, 1.7, 1.7, 1.0)  # real, gray, fake, smooth (the code's, Shinkai's comment)


def _build(kind):
    keras.utils.set_random_seed(1)
    G = GeneratorV2()
    G.build()
    D = Discriminator(ch=16, n_dis=3, sn=True, norm="layer")
    D.build()
    vgg = load_vgg19("random", seed=3)
    model = AnimeGAN(G, D, vgg, gan_type="lsgan", sty_weight=W["sty"], tv_weight=W["tv"],
                     d_term_weights=D_TERMS, seed=5)
    if kind == "adam":
        model.compile(make_adam(LR_INIT), make_adam(LR_G), make_adam(LR_D))
    else:
        model.compile(*(keras.optimizers.SGD(lr) for lr in (1e-4, 1e-4, 1e-5)))
    rng = np.random.default_rng(0)
    batch = tuple(tf.constant(rng.uniform(-1, 1, (BATCH, SIDE, SIDE, 3)).astype(np.float32)) for _ in range(4))
    batch = (batch[0], batch[1], tf.repeat(batch[2][..., :1], 3, -1), tf.repeat(batch[3][..., :1], 3, -1))
    return model, batch


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_v2_gan_step_equals_eager_reference(kind):
    model, batch = _build(kind)
    before = state(model)
    got = {k: v.numpy() for k, v in tf.function(model.gan_step)(*batch).items()}
    got_vars = state(model)
    restore(model, before)
    d_opt = RefAdam(LR_D) if kind == "adam" else RefSGD(1e-5)
    g_opt = RefAdam(LR_G) if kind == "adam" else RefSGD(1e-4)
    ref = ref_gan_step(model.generator, model.discriminator, model.vgg, batch, d_opt, g_opt, w=W, d_terms=D_TERMS)
    assert_same(model, got, ref, got_vars, state(model), [d_opt, g_opt], kind, max(LR_G, LR_D))
    assert float(got["tv"]) > 0
    n_g = len(model.generator.weights)
    for part in (slice(0, n_g), slice(n_g, None)):
        assert max(np.abs(a - b).max() for a, b in zip(got_vars[part], before[part])) > 5e-6
