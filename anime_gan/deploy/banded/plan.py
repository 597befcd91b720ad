"""The plan of a banded run: which maps are held whole ("stored", one float32 buffer each) and which
are recomputed when needed, grouped into passes over bands; and the band sizes.

The plan is the cheapest one (fewest multiply-adds, recomputation included) whose stored maps fit a
budget of bytes per input pixel (`make_plan`).
"""

from __future__ import annotations

import dataclasses

from anime_gan.deploy.banded.program import FLOAT_BYTES, Add

# A pass's band height is chosen so that its largest computed band map stays near this size; the
# working memory of a pass is a few such maps (and oneDNN's copies of them).
DEFAULT_BAND_BYTES = 48 * 2**20
# Bands are never thinner than this many rows of their target map: thinner bands recompute a
# larger share of halo rows.
MIN_BAND_ROWS = 8


@dataclasses.dataclass
class Pass:
    """One loop over bands: computes `computed` (in order) from the stored maps `frontier`, writes the
    targets in `store` into buffers and gathers the statistics of those in `stats`."""

    targets: list
    store: list
    stats: list
    computed: list
    frontier: list

    @property
    def scale(self):
        return self.targets[0].scale

    def band_bytes_per_row(self):
        """Bytes per input column per row of the targets, of the largest map computed per band."""
        return max(float(n.channels * FLOAT_BYTES * n.scale**2 / self.scale) for n in self.computed)


@dataclasses.dataclass
class Plan:
    passes: list
    stored: frozenset
    release: list  # per pass, the stored maps no later pass reads (freed after it)
    peak_bytes_per_pixel: float  # stored maps live at once, per input pixel (input map included)
    macs_per_pixel: float  # multiply-adds per input pixel, recomputation included
    whole_macs_per_pixel: float

    @property
    def recompute_factor(self):
        return self.macs_per_pixel / self.whole_macs_per_pixel

    def describe(self):
        lines = [f"{len(self.passes)} passes, stored maps peak {self.peak_bytes_per_pixel:.0f} B per input pixel, "
                 f"{self.recompute_factor:.2f}x the whole-image multiply-adds"]
        for p in self.passes:
            what = [t.name + (" [store]" if t in p.store else "") + (" [stats]" if t in p.stats else "")
                    for t in p.targets]
            lines.append(f"  {', '.join(what)}  <- {', '.join(f.name for f in p.frontier)} ({len(p.computed)} nodes)")
        return "\n".join(lines)


def _ancestors(program):
    anc = {}
    for n in program.nodes:
        s = set()
        for i in n.inputs:
            s.add(i)
            s |= anc[i]
        anc[n] = s
    return anc


def _evaluate(program, stored, ancestors, pre_norm, macs_of, bytes_of, build=False):
    """(peak bytes per pixel, macs per pixel) of the plan that stores `stored`, and with build its
    (passes, release); macs_of / bytes_of: {node: multiply-adds / bytes per input pixel}."""
    stored = set(stored) | {program.input, program.output}
    targets = [n for n in program.nodes[1:] if n in stored or n in pre_norm]
    groups = []
    for t in targets:
        # A target joins the previous pass when it has the same resolution and needs nothing that
        # pass produces (neither its buffers nor its statistics).
        if groups and groups[-1][0].scale == t.scale and ancestors[t].isdisjoint(groups[-1]):
            groups[-1].append(t)
        else:
            groups.append([t])
    passes, macs = [], 0.0
    written, last_read = {program.input: -1}, {}
    for j, group in enumerate(groups):
        computed, frontier, stack = set(), set(), list(group)
        while stack:
            n = stack.pop()
            if n in computed or n in frontier:
                continue
            if n in stored and n not in group:
                frontier.add(n)
                continue
            computed.add(n)
            stack.extend(n.inputs)
        if build:
            order = lambda nodes: sorted(nodes, key=lambda n: n.index)  # noqa: E731
            passes.append(Pass(group, [t for t in group if t in stored], [t for t in group if t in pre_norm],
                               order(computed), order(frontier)))
        macs += sum(macs_of[n] for n in computed)
        for f in frontier:
            last_read[f] = j
        for t in group:
            if t in stored:
                written[t] = j
    # A stored map is held from the pass that writes it to the last pass that reads it.
    change = [0.0] * (len(groups) + 2)
    for s, j in written.items():
        change[j + 1] += bytes_of[s]
        change[max(j, last_read.get(s, j)) + 2] -= bytes_of[s]
    peak, live = 0.0, 0.0
    for c in change:
        live += c
        peak = max(peak, live)
    if not build:
        return peak, macs
    release = [[] for _ in passes]
    for s, j in written.items():
        if s not in (program.input, program.output):
            release[max(j, last_read.get(s, j))].append(s)
    return peak, macs, passes, release


def make_plan(program, budget_bytes_per_pixel=None):
    """The plan with the fewest multiply-adds whose stored maps fit the budget (greedy).

    Starts from storing every norm's input map and every sum (one pass per map, no recomputation);
    while the peak of the maps held at once exceeds the budget, drops the stored map that saves the
    most bytes for the least recomputation; then adds, drops or swaps single maps while that lowers
    the cost and still fits. None: no budget (store everything). ValueError if even the leanest plan
    does not fit.
    """
    ancestors = _ancestors(program)
    pre_norm = program.pre_norm_nodes()
    candidates = {n for n in program.nodes if n in pre_norm or isinstance(n, Add)} - {program.output}
    cache = {}
    macs_of = {n: float(n.macs * n.scale**2) for n in program.nodes}
    bytes_of = {n: float(n.bytes_per_pixel) for n in program.nodes}

    def cost(stored):
        key = frozenset(stored)
        if key not in cache:
            cache[key] = _evaluate(program, key, ancestors, pre_norm, macs_of, bytes_of)
        return cache[key]

    stored = set(candidates)
    peak, macs = cost(stored)
    budget = float("inf") if budget_bytes_per_pixel is None else float(budget_bytes_per_pixel)
    while peak > budget:
        best = None
        for s in sorted(stored, key=lambda n: n.index):  # a set: sorted, so that the plan is reproducible
            p2, m2 = cost(stored - {s})
            if p2 < peak:
                key = (0, (m2 - macs) / (peak - p2), m2)
            elif p2 == peak:
                key = (1, m2, 0)
            else:
                continue
            if best is None or key < best[0]:
                best = (key, s)
        if best is None:
            raise ValueError(f"no banded plan keeps the stored maps under {budget:.0f} bytes per pixel "
                             f"(the leanest found needs {peak:.0f})")
        stored.discard(best[1])
        peak, macs = cost(stored)
    # Local search: add, drop or swap one stored map while that lowers the cost within the budget.
    by_index = lambda nodes: sorted(nodes, key=lambda n: n.index)  # noqa: E731
    improved = True
    while improved:
        improved = False
        moves = [stored | {s} for s in by_index(candidates - stored)]
        moves += [stored - {s} for s in by_index(stored)]
        moves += [(stored - {s}) | {t} for s in by_index(stored) for t in by_index(candidates - stored)]
        for move in moves:
            p2, m2 = cost(move)
            if p2 <= budget and m2 < macs - 1e-9:
                stored, peak, macs = set(move), p2, m2
                improved = True
                break
    peak, macs, passes, release = _evaluate(program, stored, ancestors, pre_norm, macs_of, bytes_of, build=True)
    return Plan(passes, frozenset(stored | {program.input, program.output}), release, peak, macs,
                program.whole_macs_per_pixel())

