"""The memory bound: `MemoryBoundedGenerator` runs an image whole when it fits the budget, else
banded by the cheapest plan whose stored maps fit the budget for its size (`memory_bounded`).
"""

from __future__ import annotations

import functools
import weakref

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.deploy.banded.executor import BandedExecutor, MapSizes, for_each_image
from anime_gan.deploy.banded.ops import plain_python
from anime_gan.deploy.banded.plan import DEFAULT_BAND_BYTES, make_plan
from anime_gan.deploy.banded.program import program_of

# Working memory (peak RSS above the process's baseline) per input pixel of the whole-image
# generator, float32 with oneDNN (TF 2.21's default on x86): measured with
# tools/measure_inference_memory.py, plus margin (docs/development.md has the figures).
WHOLE_IMAGE_BYTES_PER_PIXEL = {"v1": 2900, "v2": 1800}
# Around the banded generator: the serving graph's own copies of the image (uint8 and float32, in
# and out) per input pixel, and the band loops' working memory (a few band maps, oneDNN's copies of
# them, allocator slack); measured the same way.
OVERHEAD_BYTES_PER_PIXEL = 40
BAND_WORKING_BYTES = 640 * 2**20
# Plans are made for this share of the budget (the model above predicts the working memory of
# banded runs closely); the rest is margin.
PLANNING_FRACTION = 0.95
# The default bound on the working memory of one request, whatever its size up to the cap.
DEFAULT_MEMORY_BUDGET = 6 * 2**30
# Besides the plan for the largest image, plans for images up to these fractions of its area (each
# is another traced graph; a smaller image affords more stored maps, so less recomputation).
DEFAULT_TIER_FRACTIONS = (0.75,)


# generator -> {arguments: what `_build_tiers` returns}: the banded graphs are traced once per process
# however many serving modules wrap the generator. The values hold the generator's variables, not
# the generator, so the entry goes with it.
_BUILT = weakref.WeakKeyDictionary()


def _build_tiers(generator, max_side, memory_budget, band_bytes, tier_fractions, whole_pixels, band_rows):
    """(program, whole_pixels, [(largest H*W, plan)] cheapest plan first, [banded tf.function])."""
    program = program_of(generator)
    if whole_pixels is None:
        whole_pixels = memory_budget // WHOLE_IMAGE_BYTES_PER_PIXEL[generator.arch]
    cap = max_side**2
    if cap <= whole_pixels:  # every image the model accepts runs whole: no banded graph to build
        return program, int(whole_pixels), [], []
    banded_budget = memory_budget * PLANNING_FRACTION - BAND_WORKING_BYTES
    tiers = []
    for fraction in sorted(set(tier_fractions) | {1.0}):
        pixels = int(cap * fraction)
        if pixels <= whole_pixels and fraction < 1:
            continue
        plan = make_plan(program, banded_budget / pixels - OVERHEAD_BYTES_PER_PIXEL)
        fits = int(banded_budget // (plan.peak_bytes_per_pixel + OVERHEAD_BYTES_PER_PIXEL))
        if tiers and plan.stored == tiers[-1][1].stored:
            tiers.pop()
        tiers.append((cap if fraction == 1 else max(pixels, min(fits, cap)), plan))
    # Each banded graph is its own function, left un-inlined: a process instantiates it only when an
    # image needs it (inlined, every first call would pay for all of them).
    functions = [_TracedOnce(BandedExecutor(program, plan, band_bytes, band_rows).run_one, program.input.channels,
                             noinline=True) for _, plan in tiers]
    return program, int(whole_pixels), tiers, functions


class _TracedOnce:
    """fn as a tf.function of float32 [N, H, W, channels], traced once however it is called later:
    from other graphs, and in `tf.saved_model.save`'s context, which would trace a tf.function again
    (and store its graph twice)."""

    def __init__(self, fn, channels, noinline=False):
        self.function = tf.function(fn, input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)],
                                    autograph=False, experimental_attributes={"_noinline": True} if noinline else None)
        self._concrete = None

    def __call__(self, x):
        if self._concrete is None:
            self._concrete = self.function.get_concrete_function()
        return self._concrete(x)


class MemoryBoundedGenerator:
    """The generator with its working memory bounded: float32 [N, H, W, C] (H a multiple of 4) ->
    the generator's output, equal to it to float32 rounding (see `anime_gan.deploy.banded`).

    A batch whose N*H*W pixels fit the budget when run whole runs whole (the generator itself, the
    fastest); else each image runs alone, whole if it fits, else banded by the cheapest plan whose
    stored maps fit the budget for its size. The plans are made for images up to max_side x
    max_side; `describe()` lists them.

    `tiers`: [(largest H*W, plan)], cheapest plan first; `tier_functions`: per tier, the banded
    tf.function float32 [1, H, W, C] -> [1, H', W', C'] of one image (traced on first call).
    """

    def __init__(self, generator, max_side=C.DEFAULT_MAX_SIDE, memory_budget=DEFAULT_MEMORY_BUDGET,
                 band_bytes=DEFAULT_BAND_BYTES, tier_fractions=DEFAULT_TIER_FRACTIONS, whole_pixels=None,
                 band_rows=None):
        """memory_budget: bytes of working memory (peak RSS above the process's baseline) one request
        may use. whole_pixels (tests): run whole up to this many pixels instead of what fits the
        budget; band_rows (tests): fixed band heights (see `BandedExecutor`)."""
        self.generator = generator
        self.memory_budget = int(memory_budget)
        key = (int(max_side), self.memory_budget, int(band_bytes), tuple(tier_fractions), whole_pixels, band_rows)
        built = _BUILT.setdefault(generator, {})
        if key not in built:
            built[key] = _build_tiers(generator, *key)
        self.program, self.whole_pixels, self.tiers, self.tier_functions = built[key]
        # The generator as one function, so that its graph is stored once however often it is called.
        self._whole = _TracedOnce(generator, self.program.input.channels)

    def describe(self):
        lines = [f"memory budget {self.memory_budget / 2**30:.2f} GiB: whole-image up to {self.whole_pixels} pixels"]
        for (pixels, plan) in self.tiers:
            lines.append(f"banded up to {pixels} pixels: {plan.describe().splitlines()[0]}")
        return "\n".join(lines)

    def runs_whole(self, count, height, width):
        """Whether a batch of `count` images of height x width (Python ints, before the padding to
        multiples of 4) runs whole, as one batch: a caller may then run a plain graph of the
        generator instead, which never builds or instantiates the banded graphs."""
        stride = C.GENERATOR_STRIDE
        return count * (-(-height // stride) * stride) * (-(-width // stride) * stride) <= self.whole_pixels

    @plain_python
    def __call__(self, x):
        x = tf.convert_to_tensor(x, tf.float32)
        shape = tf.shape(x)
        pixels = shape[1] * shape[2]

        def one_by_one():
            out = self.program.output
            sizes = MapSizes(shape[1], shape[2])
            y = tf.raw_ops.Empty(shape=tf.stack([shape[0], sizes.height(out), sizes.width(out), out.channels]),
                                 dtype=tf.float32)
            return for_each_image(x, y, lambda image: self._single(image[tf.newaxis], pixels)[0])

        return tf.cond(shape[0] * pixels <= self.whole_pixels, lambda: self._whole(x), one_by_one)

    def _single(self, x, pixels):
        """One image [1, H, W, C]: whole if it fits, else the first banded tier that fits."""
        branch = lambda: self._whole(x)  # noqa: E731
        conditions = [pixels <= self.whole_pixels]
        branches = [branch]
        for (limit, _), banded in zip(self.tiers, self.tier_functions):
            conditions.append(pixels <= limit)
            branches.append(functools.partial(banded, x))
        # The last tier covers everything up to the cap (larger images are refused before this).
        result = branches[-1]
        for condition, branch in reversed(list(zip(conditions[:-1], branches[:-1]))):
            result = functools.partial(tf.cond, condition, branch, result)
        return result()


def memory_bounded(generator, max_side=C.DEFAULT_MAX_SIDE, memory_budget=DEFAULT_MEMORY_BUDGET):
    """What `anime_gan.deploy.saved_model.generate` should run: a `MemoryBoundedGenerator`, or the generator
    itself where banded inference does not apply (a v2 generator in the PyTorch port's
    align-corners resize mode, whose memory is then not bounded)."""
    try:
        program_of(generator)
    except NotImplementedError:
        return generator
    return MemoryBoundedGenerator(generator, max_side=max_side, memory_budget=memory_budget)
