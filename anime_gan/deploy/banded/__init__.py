"""Bounded-memory inference: the generator run in horizontal bands, with whole-image statistics.

Why. Run whole, the generator holds several full-size maps of 64 and 128 channels at once (plus
oneDNN's reordered copies of them): about 2.7 KB of memory per input pixel (v1; 1.7 KB for v2), so
3.5 GB at 1024x1024 and 12 GB at 2048x2048. Naive tiles would bound that but shift colours and show
seams, because every instance norm (layer norm in v2) normalises with the statistics of the whole
image.

How, one module per step:
- `program`: the generator read into a small program of nodes (`program_of`), in order.
- `plan`: which maps are held whole ("stored") and which are recomputed, under a budget of bytes
  per input pixel (`make_plan`), and the band sizes.
- `executor`: each pass of the plan as a `tf.while_loop` over horizontal bands (full width); every
  computed row equals the whole-image row, and a norm's statistics are merged over the bands
  (`band_moments`, `merge_moments`) before the layers' own arithmetic (`BandedExecutor`).
- `bounded`: whole when the image fits the budget, else banded by the cheapest plan that fits
  (`MemoryBoundedGenerator`, `memory_bounded`).
- `ops`: the TensorFlow helpers that keep the banded graphs small.

The result equals the whole-image generator to float32 rounding (the convolutions and sums run in
another order on a band): within the bounds another kernel configuration gives
(tests/deploy/test_banded.py), at most 1 grey level in uint8. Bands are one image at a time, so a batch
costs no more memory than one image. Heights must be multiples of 4
(`anime_gan.deploy.saved_model.generate` pads to them); widths may be anything.
"""

from anime_gan.deploy.banded.bounded import (
    BAND_WORKING_BYTES,
    DEFAULT_MEMORY_BUDGET,
    OVERHEAD_BYTES_PER_PIXEL,
    PLANNING_FRACTION,
    MemoryBoundedGenerator,
    memory_bounded,
)
from anime_gan.deploy.banded.executor import BandedExecutor, band_moments, for_each_image, merge_moments
from anime_gan.deploy.banded.plan import DEFAULT_BAND_BYTES, make_plan
from anime_gan.deploy.banded.program import program_of

__all__ = [
    "BAND_WORKING_BYTES", "DEFAULT_BAND_BYTES", "DEFAULT_MEMORY_BUDGET", "OVERHEAD_BYTES_PER_PIXEL",
    "PLANNING_FRACTION", "BandedExecutor", "MemoryBoundedGenerator", "band_moments", "for_each_image", "make_plan",
    "memory_bounded", "merge_moments", "program_of",
]
