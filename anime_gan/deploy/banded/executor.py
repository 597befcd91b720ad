"""The banded run of a `Program` by a `Plan`: `tf.while_loop`s over horizontal bands, the norms'
statistics gathered per band and merged.

Each pass of the plan loops over horizontal bands of its target maps (full width) and computes a
band from the stored maps it depends on, taking from each the rows of context its convolutions need
and reflect-padding only at the image's true top and bottom, so every computed row equals the
whole-image row. A norm gets its statistics from a pass over its input map: per band,
`tf.nn.moments` (float32, as the layers take it over the whole map), merged across bands in float64
(`band_moments`, `merge_moments`), then the layers' own `tf.nn.batch_normalization` arithmetic.
Everything is TensorFlow ops in `tf.while_loop`s over a dynamic number of bands (buffers filled in
place with `InplaceUpdate`), so the same code runs eagerly and inside a SavedModel's graph.
"""

from __future__ import annotations

import tensorflow as tf

from anime_gan import constants as C
from anime_gan.deploy.banded.ops import const, plain_python, slice_rows
from anime_gan.deploy.banded.plan import DEFAULT_BAND_BYTES, MIN_BAND_ROWS
from anime_gan.deploy.banded.program import Norm


def band_moments(band, per_channel):
    """The statistics of one band [rows, W, C] as `merge_moments` takes them: (count, mean, sum of
    squared deviations), per channel or over all its values; `tf.nn.moments` as the whole-image norms
    call it (float32, two passes), cast to float64."""
    mean, variance = tf.nn.moments(band, [0, 1] if per_channel else [0, 1, 2])
    rows, width, channels = tf.unstack(tf.shape(band))
    count = tf.cast(rows * width if per_channel else rows * width * channels, tf.float64)
    return count, tf.cast(mean, tf.float64), tf.cast(variance, tf.float64) * count


def merge_moments(acc, part):
    """The statistics of two sets of rows joined: (count, mean, M2) of each (M2: sum of squared
    deviations from the mean, as `band_moments` gives) -> those of both, by Chan, Golub and
    LeVeque's pairwise update. Folded over the bands from zeros, it gives the whole map's mean and
    variance (M2 / count) without holding the map."""
    na, ma, m2a = acc
    nb, mb, m2b = part
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + tf.square(delta) * (na * nb / n)


class BandedExecutor:
    """Runs a `Program` by a `Plan`: float32 [N, H, W, C] (H a multiple of 4) -> the program's output.

    band_bytes: the band height of each pass is chosen so that its largest band map is about this
    size; band_rows (tests): a fixed band height in rows of each pass's targets instead.
    """

    def __init__(self, program, plan, band_bytes=DEFAULT_BAND_BYTES, band_rows=None):
        self.program, self.plan = program, plan
        self.band_bytes, self.band_rows = int(band_bytes), band_rows
        self._per_channel = {n.inputs[0]: n.per_channel for n in program.nodes if isinstance(n, Norm)}
        self._norms = {}  # pre-norm map -> the norms of it
        for n in program.nodes:
            if isinstance(n, Norm):
                self._norms.setdefault(n.inputs[0], []).append(n)

    @plain_python
    def __call__(self, x):
        """A batch, one image at a time."""
        x = tf.convert_to_tensor(x, tf.float32)
        shape = tf.shape(x)
        out = self.program.output
        sizes = MapSizes(shape[1], shape[2])
        y = tf.raw_ops.Empty(shape=tf.stack([shape[0], sizes.height(out), sizes.width(out), out.channels]),
                             dtype=tf.float32)
        return for_each_image(x, y, lambda image: self.run_one(image[tf.newaxis])[0])

    @plain_python
    def run_one(self, x):
        """One image as a batch: float32 [1, H, W, C] -> [1, H', W', C'] (no loop over images, which
        would nest every pass's loop one level deeper in the graph)."""
        x = tf.convert_to_tensor(x, tf.float32)
        check = tf.debugging.assert_equal(
            tf.shape(x)[1] % C.GENERATOR_STRIDE, 0,
            message=f"banded inference needs a height that is a multiple of {C.GENERATOR_STRIDE}")
        with tf.control_dependencies([check]):
            return self.run_image(x[0])[tf.newaxis]

    @plain_python
    def run_image(self, image):
        """float32 [H, W, C] -> the output map [H', W', C'] of one image."""
        shape = tf.shape(image)
        sizes = MapSizes(shape[0], shape[1])
        buffers = {self.program.input: image}
        stats = {}
        rows = {}
        done = tf.constant(0)
        for p, release in zip(self.plan.passes, self.plan.release):
            # In a graph the buffers of every pass could be allocated at once (their shapes are known
            # from the start): each pass's allocations wait for the previous pass instead.
            with tf.control_dependencies([done]):
                done = self._run_pass(p, buffers, stats, sizes, self._rows(p, shape[1], rows))
            for s in release:  # frees the memory now in eager mode; the graph frees it by itself
                del buffers[s]
        return buffers[self.program.output]

    def _rows(self, p, width, cache):
        """Band height of pass p in rows of its targets (memoized per bytes-per-row in `cache`)."""
        if self.band_rows is not None:
            return tf.constant(int(self.band_rows))
        per_column = p.band_bytes_per_row()
        if per_column not in cache:
            rows = (self.band_bytes // int(per_column)) // tf.maximum(width, 1)
            cache[per_column] = tf.maximum(rows, MIN_BAND_ROWS)
        return cache[per_column]

    def _run_pass(self, p, buffers, stats, sizes, rows):
        for n in p.computed:  # sizes are built here, outside the loop body, where every pass can use them
            for i in n.inputs:
                sizes.height(i)
        height = sizes.height(p.targets[0])
        count = (height + rows - 1) // rows
        output = self.program.output
        # The output is one buffer filled in place; other stored maps are kept as chunks of one band
        # each, all of a size, which the CPU allocator (a BFC allocator keeping freed memory for reuse)
        # reuses; whole maps of many sizes were not reused.
        bufs = [tf.raw_ops.Empty(shape=tf.stack([sizes.height(t), sizes.width(t), t.channels]), dtype=tf.float32)
                if t is output else
                tf.TensorArray(tf.float32, size=count, element_shape=tf.TensorShape([None, None, t.channels]))
                for t in p.store]
        accs = [tuple(tf.zeros([t.channels] if self._per_channel[t] else [], tf.float64) if k else
                      tf.constant(0.0, tf.float64) for k in range(3)) for t in p.stats]

        @plain_python
        def body(i, bufs, accs):
            a = i * rows
            b = tf.minimum(a + rows, height)
            values = self._band(p, a, b, buffers, stats, sizes)
            bufs = [tf.raw_ops.InplaceUpdate(x=buf, i=tf.range(a, b), v=values[t]) if t is output else
                    buf.write(i, _pad_rows(values[t], a + rows - b))  # the last one padded
                    for buf, t in zip(bufs, p.store)]
            accs = [merge_moments(acc, band_moments(values[t], self._per_channel[t])) for acc, t in zip(accs, p.stats)]
            return i + 1, bufs, accs

        done, bufs, accs = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(0), bufs, accs),
                                         parallel_iterations=1)
        buffers.update((t, buf if t is output else _Chunks(buf, rows)) for t, buf in zip(p.store, bufs))
        for t, (n, mean, m2) in zip(p.stats, accs):
            for norm in self._norms[t]:
                stats[norm] = norm.scale_and_shift(tf.cast(mean, tf.float32), tf.cast(m2 / n, tf.float32))
        return done

    def _band(self, p, a, b, buffers, stats, sizes):
        """{target: its rows [a, b)} computed from the stored maps.

        Rows are tracked as (start, stop) pairs of scalar tensors; a pointwise node passes its pair
        on as the same objects, so that no op is built for it (tracing time is op count).
        """
        need = {t: (a, b) for t in p.targets}
        wants = {}  # (node, input position) -> (rows it needs of that input, the same clipped to the map)
        for n in reversed(p.computed):
            rows = need[n] if n.pointwise else n.input_rows(*need[n])
            for k, i in enumerate(n.inputs):
                clipped = rows if n.pointwise else (tf.maximum(rows[0], const(0)), tf.minimum(rows[1], sizes.height(i)))
                wants[n, k] = rows, clipped
                need[i] = clipped if i not in need else _union(need[i], clipped)
        values = {f: _read_rows(buffers[f], *need[f]) for f in p.frontier}
        last_use = {}
        for k, n in enumerate(p.computed):
            for i in n.inputs:
                last_use[i] = k
        for k, n in enumerate(p.computed):
            bands = []
            for j, i in enumerate(n.inputs):
                (lo, hi), (clo, chi) = wants[n, j]
                have = need[i]
                if clo is have[0] and chi is have[1]:
                    band = values[i]
                else:
                    band = slice_rows(values[i], clo - have[0], chi - have[0])
                bands.append((band, 0, 0) if n.pointwise else (band, clo - lo, hi - chi))
            values[n] = n.compute(bands, need[n][0], need[n][1], stats)
            for i in n.inputs:
                if last_use[i] == k and i not in p.targets:
                    del values[i]
        return values


class _Chunks:
    """A stored map as a TensorArray of chunks of `rows` rows each (the last one padded)."""

    def __init__(self, array, rows):
        self.array, self.chunk = array, rows

    def read(self, lo, hi):
        """Rows [lo, hi) as one tensor (a copy of just those chunks)."""
        first = lo // self.chunk
        stacked = self.array.gather(tf.range(first, (hi - const(1)) // self.chunk + const(1)))
        _, _, width, channels = tf.unstack(tf.shape(stacked))
        rows = tf.reshape(stacked, tf.stack([const(-1), width, channels]))
        start = lo - first * self.chunk
        return slice_rows(rows, start, start + (hi - lo))


def _read_rows(stored, lo, hi):
    return stored.read(lo, hi) if isinstance(stored, _Chunks) else slice_rows(stored, lo, hi)


class MapSizes:
    """Heights and widths of the maps of one image as scalar tensors, built on first use only (a
    pointwise node shares its input's)."""

    def __init__(self, height, width):
        self._memo = {"height": {}, "width": {}}
        self._base = {"height": height, "width": width}

    def _get(self, which, n):
        memo = self._memo[which]
        if n not in memo:
            if not n.inputs:
                memo[n] = self._base[which]
            elif n.pointwise:
                memo[n] = self._get(which, n.inputs[0])
            else:
                memo[n] = getattr(n, which)(self._get(which, n.inputs[0]))
        return memo[n]

    def height(self, n):
        return self._get("height", n)

    def width(self, n):
        return self._get("width", n)


def _pad_rows(x, count):
    """x with `count` rows of zeros below."""
    zero = const(0)
    return tf.pad(x, tf.reshape(tf.stack([zero, count, zero, zero, zero, zero]), const((3, 2))))


def _union(x, y):
    if x[0] is y[0] and x[1] is y[1]:
        return x
    return tf.minimum(x[0], y[0]), tf.maximum(x[1], y[1])


@plain_python
def for_each_image(x, y, run_image):
    """y[i] = run_image(x[i]) for each image, one at a time, written into the preallocated y."""

    @plain_python
    def body(i, y):
        return i + 1, tf.raw_ops.InplaceUpdate(x=y, i=i[tf.newaxis], v=run_image(x[i])[tf.newaxis])

    _, y = tf.while_loop(lambda i, y: i < tf.shape(x)[0], body, (tf.constant(0), y), parallel_iterations=1)
    return y

