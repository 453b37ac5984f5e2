"""Stratified Poisson bootstrap whose memory does not grow with the rows.

Replicate b gives row i a weight ``w[b, i] ~ Poisson(1)`` (the Poisson bootstrap of Hanley and
MacGibbon 2006; Chamandy et al. 2012), independent across rows, so the rows can be visited in
chunks and each replicate's per-cell sums accumulated as they go: what is kept is one (B, C, F)
array of sums (replicates x cells x features), never a replicates x rows matrix. Inside each cell
(rows of identical group membership) the weights are then rescaled to add up to the cell's size,
so every cell, and every group made of cells, keeps its size in every replicate, as the
stratified multinomial bootstrap it replaces did; a cell whose weights are all zero (only likely
for a cell of a few rows) keeps its rows unweighted.

Reproducible anywhere: rows are visited in a fixed order (by cell, then row index), in chunks of
``CHUNK_ROWS``; the weights of chunk k, replicates ``[j * REPLICATE_BLOCK, ...)``, come from a
Philox counter-based generator keyed by the seed with the counter at (block j, chunk k), so they
depend only on (seed, row, replicate), not on how the rows were read or batched. Sums are exact:
features are integers or fixed-point values (``FIXED_POINT``) whose products with the small
integer weights add up below 2**53 within a chunk, so the float64 matrix product is exact in any
order and the result does not depend on BLAS or its threads; chunks are added in int64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

CHUNK_ROWS = 2048  # rows per chunk: (B x 2048) float64 weights are 16 MB at B = 1,000
REPLICATE_BLOCK = 256  # replicates drawn per generator call (prefixes of a larger n_boot are identical)
PASS_REPLICATES = 4 * REPLICATE_BLOCK  # replicates whose weights are held at once: 16 MB, whatever n_boot
FIXED_POINT = 2.0 ** 32  # a real feature in [-1, 1] counts in units of 2**-32
CACHED_WEIGHTS = 16_000_000  # keep the weights (<= 128 MB) when they fit: later models of a run skip drawing them
# Poisson(1) by table lookup: a uniform 16-bit value indexes the inverse CDF, so P[w = k] is
# P[Poisson(1) = k] rounded to multiples of 2**-16 (variance 0.99997; weights above 8, together
# 1e-6 likely, are cut). Within-cell rescaling makes the mean immaterial.
_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(12)])
_WEIGHT_OF = np.searchsorted(np.round(_CDF * 2**16), np.arange(2**16), side="right").astype(np.float64)
MAX_WEIGHT = int(_WEIGHT_OF.max())
_EXACT_LIMIT = 2.0 ** 53

Builder = Callable[[np.ndarray], np.ndarray]  # row indices (m,) -> features (m, F): integers or reals in [-1, 1]


def poisson_weights(seed: int, chunk: int, n_boot: int, rows: int, *, first: int = 0) -> np.ndarray:
    """(n_boot, rows) float64 Poisson(1) weights of one chunk for replicates ``first, first + 1, ...``
    (``first`` a multiple of ``REPLICATE_BLOCK``; see the module docstring)."""
    key = np.random.SeedSequence(seed).generate_state(2, np.uint64)
    out = np.empty((n_boot, rows))
    for b0 in range(0, n_boot, REPLICATE_BLOCK):
        nb = min(REPLICATE_BLOCK, n_boot - b0)
        philox = np.random.Philox(key=key, counter=[0, 0, (first + b0) // REPLICATE_BLOCK, chunk])
        u = philox.random_raw(-(-nb * rows // 4)).view(np.uint16)[:nb * rows]  # 4 uniform 16-bit values per draw
        _WEIGHT_OF.take(u, out=out[b0:b0 + nb].reshape(-1))
    return out


class PoissonBootstrap:
    """Per-cell replicate sums of features of N rows split into cells (see the module docstring)."""

    def __init__(self, cell_of_row: np.ndarray, n_cells: int, *, n_boot: int, seed: int) -> None:
        self.n_boot, self.seed, self.n_cells = n_boot, seed, n_cells
        order = np.argsort(cell_of_row, kind="stable")  # a chunk then spans few cells
        self.order = order.astype(np.int32) if len(order) < 2**31 else order
        self.bounds = np.searchsorted(cell_of_row[order], np.arange(n_cells + 1))
        self.sizes = np.diff(self.bounds).astype(np.float64)
        self._kept: dict[tuple[int, int], np.ndarray] | None = {} if n_boot * len(cell_of_row) <= CACHED_WEIGHTS else None

    def _weights(self, chunk: int, first: int, rows: int) -> np.ndarray:
        if self._kept is not None and (chunk, first) in self._kept:
            return self._kept[chunk, first]
        w = poisson_weights(self.seed, chunk, min(PASS_REPLICATES, self.n_boot - first), rows, first=first)
        if self._kept is not None:
            self._kept[chunk, first] = w
        return w

    def sums(self, builders: Sequence[tuple[Builder, np.ndarray]], runner: "Runner | None" = None,
             advance: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
        """For each ``(build, fixed)``: (B, C, F) float64 replicate sums of ``build``'s features per
        cell, each cell rescaled to its size. ``fixed`` (F,) bool marks real-valued columns (in
        [-1, 1], summed in fixed point); the others must be small integers. All builders share
        one set of weights, so their replicates are paired.

        ``runner`` (an executor's, e.g. Ray tasks) computes the integer sums of runs of chunks
        elsewhere (``partial_sums``) and adds them up; the sums are exact, so the result is the
        same as in this process, whoever adds them in whichever order. ``advance(done, total)``
        hears how many of the rows were summed here (progress on a terminal)."""
        widths = [len(fixed) for _, fixed in builders]
        scale = np.concatenate([[1.0], *[np.where(f, FIXED_POINT, 1.0) for _, f in builders]])
        if runner is not None:
            acc, point = runner(self, lambda a, b: self.features(builders, scale, a, b), len(scale))
        else:
            acc = np.zeros((self.n_boot, self.n_cells, len(scale)), dtype=np.int64)
            point = np.zeros((self.n_cells, len(scale)), dtype=np.int64)
            n = len(self.order)
            for a in range(0, n, CHUNK_ROWS):
                x = self.features(builders, scale, a, min(n, a + CHUNK_ROWS))
                accumulate(x, a, self.bounds, self.n_boot, self._weights, acc, point)
                if advance is not None and ((a // CHUNK_ROWS) % 16 == 15 or a + CHUNK_ROWS >= n):
                    advance(min(n, a + CHUNK_ROWS), n)
        weight = acc[:, :, 0].astype(np.float64)  # (B, C): each replicate's weight in each cell
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(weight > 0, self.sizes / weight, 0.0)[:, :, None]
        total = np.where(weight[:, :, None] > 0, acc * factor, point[None].astype(np.float64)) / scale
        out, col = [], 1
        for width in widths:
            out.append(total[:, :, col:col + width])
            col += width
        return out

    def features(self, builders: Sequence[tuple[Builder, np.ndarray]], scale: np.ndarray, a: int, b: int) -> np.ndarray:
        """(b - a, F) features of rows ``a:b`` of the cell order, as the exact integers that are
        summed (a leading column of ones, then each builder's, reals in fixed point)."""
        rows = self.order[a:b]
        x = np.empty((b - a, len(scale)))
        x[:, 0] = 1.0
        col = 1
        for build, fixed in builders:
            x[:, col:col + len(fixed)] = build(rows)
            col += len(fixed)
        x = np.rint(x * scale)
        if np.abs(x).max(initial=0.0) * MAX_WEIGHT * CHUNK_ROWS >= _EXACT_LIMIT:
            raise ValueError("bootstrap features must be small integers or reals in [-1, 1]")
        return x


Runner = Callable[[PoissonBootstrap, Callable[[int, int], np.ndarray], int], tuple[np.ndarray, np.ndarray]]


def accumulate(x: np.ndarray, start: int, bounds: np.ndarray, n_boot: int, weights: Callable[[int, int, int], np.ndarray],
               acc: np.ndarray, point: np.ndarray) -> None:
    """Add the features ``x`` of rows ``start, start + 1, ...`` of the cell order (``start`` a
    multiple of ``CHUNK_ROWS``) into ``acc`` (B, C, F) and ``point`` (C, F), int64, in place.
    ``bounds`` (C + 1,) are the cells' first rows in that order; ``weights(chunk, first, rows)``
    gives the chunk's Poisson weights (``poisson_weights``)."""
    if start % CHUNK_ROWS:
        raise ValueError(f"rows must start at a chunk boundary (a multiple of {CHUNK_ROWS}), not {start}")
    for a in range(0, len(x), CHUNK_ROWS):
        b = min(len(x), a + CHUNK_ROWS)
        ga, gb = start + a, start + b
        c0, c1 = np.searchsorted(bounds, [ga, gb - 1], side="right") - 1
        segments = [(c, max(ga, bounds[c]) - ga, min(gb, bounds[c + 1]) - ga) for c in range(c0, c1 + 1)]
        segments = [(c, s0, s1) for c, s0, s1 in segments if s1 > s0]
        xa = x[a:b]
        for c, s0, s1 in segments:
            point[c] += xa[s0:s1].sum(axis=0).astype(np.int64)
        for r0 in range(0, n_boot, PASS_REPLICATES):
            w = weights(ga // CHUNK_ROWS, r0, b - a)
            for c, s0, s1 in segments:  # exact integers: no rounding to undo
                acc[r0:r0 + len(w), c] += (w[:, s0:s1] @ xa[s0:s1]).astype(np.int64)


def partial_sums(x: np.ndarray, start: int, bounds: np.ndarray, *, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(acc (B, C, F), point (C, F)) int64 sums of the rows ``start, start + 1, ...`` of the cell
    order whose features are ``x``: what a task returns; adding every task's gives the sums of
    ``PoissonBootstrap.sums``, exactly."""
    n_cells = len(bounds) - 1
    acc = np.zeros((n_boot, n_cells, x.shape[1]), dtype=np.int64)
    point = np.zeros((n_cells, x.shape[1]), dtype=np.int64)
    accumulate(x, start, bounds, n_boot,
               lambda chunk, first, rows: poisson_weights(seed, chunk, min(PASS_REPLICATES, n_boot - first), rows, first=first),
               acc, point)
    return acc, point
