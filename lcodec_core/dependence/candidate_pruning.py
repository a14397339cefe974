"""L-FOCI's step winner found exactly without scoring every candidate in full.

A step of L-FOCI needs only the best candidate, argmax_j sum_i min(R_i, R_M_j(i)) with
M_j(i) the nearest other point in (S, a_j), and that one sum exactly
(docs/ALGORITHM.md, section 2 (L-FOCI, greedy Markov-blanket selection)). With
thousands of candidates (a ResNet's slices) most are far from winning, and a short
scan already proves it:

- After scanning the first L of point i's S-neighbours for column j, the best joint
  distance found is the nearest neighbour's when it is below the S-distance of the
  first point not scanned (``column_search``'s proof). For a proven pair the term
  min(R_i, R_M(i)) is known; for the others it is at most R_i. Their sum is an
  upper bound on the column's sum.
- A lower bound on the winner's sum is the exact sum of any column: first of the few
  that led the previous step, then of every column finished so far.
- A column whose upper bound is below the lower bound cannot win (nor tie) and is
  dropped. The rest scan further (continuing where they stopped, so the work equals
  one longer scan) and are finished exactly by ``column_search._scan_pairs``, exactly
  as ``nearest_with_extra_column`` would finish them.

So the winner and its sum are those of scoring every candidate exactly (ties to the
lower index); only the dropped columns' sums are never computed. On data where many
columns score alike (the last step, when nothing adds information) few are dropped,
and the cost is that of the full scan plus the bounds (a few numpy passes over each
column per level).

CPU (numpy) only; on CUDA, ``foci_search`` scores every candidate in full.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .arrays import BLOCK_ELEMENTS, cpu_workers
from .column_search import (
    SCAN_BLOCK_ELEMENTS,
    _dense_scan,
    _scan_pairs,
    _sorted_scan,
    nearest_with_extra_column,
    window_threshold,
)
from .neighbor_index import ROUNDING_SLACK, NeighborIndex

__all__ = ["best_extra_column"]

SCAN_LEVELS = (0.5,)  # shares of the full first scan after which unpromising columns are dropped:
# at m = 1000 half the scan leaves a few hundred unproven points per column, already few enough
# to drop all but one or two of several thousand candidates (measured; a quarter drops none)
LEAD_COLUMNS = 4  # columns scored exactly first, by the previous step's order, for the lower bound
FINISH_ELEMENTS = 1 << 22  # surviving (m, columns) finished together: few S-neighbour listings per row


class _Plan:
    """The S-neighbour scan of one step: which points each level covers, and its proof bound."""

    def __init__(self, index: NeighborIndex, first_scan: int):
        m = index.n_points
        self.index = index
        if index.dim == 1:  # sorted places on each side, as nearest_with_extra_column
            full = min(m - 1, max(1, first_scan // 2))
            self.order = np.argsort(index.host[:, 0], kind="stable")
            self.values = index.host[self.order, 0]
        else:
            full = min(m - 1, first_scan)
            self.near, self.near_sq = index.query(full)  # (m, full) nearest in S first
        levels = {max(1, min(full, round(full * share))) for share in SCAN_LEVELS}
        self.levels = sorted(levels | {full})  # scan lengths, ascending, the last one full

    def scan(self, cols: np.ndarray, start: int, stop: int):
        """(best, best_at) of ``cols`` (m, b) over scan positions start..stop-1."""
        if self.index.dim == 1:
            return _sorted_scan(cols, self.order, self.values, stop, first=start + 1)
        return _dense_scan(cols, self.near[:, start:stop], self.near_sq[:, start:stop])

    def threshold(self, level: int) -> np.ndarray:
        """(m,) S-distance of the first point not scanned at ``level``."""
        if self.index.dim == 1:
            return window_threshold(self.order, self.values, level)
        if level >= self.index.n_points - 1:
            return np.full(self.index.n_points, np.inf)
        return self.near_sq[:, level - 1]


class _LowerBound:
    """The largest exact column sum seen so far, shared by the worker threads."""

    def __init__(self, value: int):
        self.value = value
        self._lock = threading.Lock()

    def raise_to(self, value: int) -> None:
        with self._lock:
            self.value = max(self.value, value)


def best_extra_column(index: NeighborIndex, points: np.ndarray, candidates: np.ndarray, rank: np.ndarray,
                      *, first_scan: int, lead: np.ndarray) -> tuple[int, int, np.ndarray]:
    """The candidate column with the largest sum_i min(R_i, R_M_j(i)), exactly.

    Parameters
    ----------
    index : NeighborIndex
        The points in the selected features S, shape (m, |S|).
    points : np.ndarray, shape (m, D), float64
        Every feature column (standardised and jittered).
    candidates : np.ndarray, shape (c,), int64
        Columns of ``points`` to choose from, ascending.
    rank : np.ndarray, shape (m,), int64
        R_i, the max-ranks of Y.
    first_scan : int
        S-neighbours scanned densely per point, as for ``nearest_with_extra_column``.
    lead : np.ndarray, shape (c,)
        A guess at each candidate's sum (higher first); the leading few are scored first.

    Returns
    -------
    (position, total, estimates)
        ``candidates[position]`` wins (the lowest position among equal sums) with sum
        ``total``; ``estimates`` (c,) int64 holds each candidate's exact sum, or, where
        it was dropped, the sum over the neighbours its short scan found (a guess, not a
        bound: a good ``lead`` for the next step).
    """
    m = points.shape[0]
    plan = _Plan(index, first_scan)
    rank_col = rank[:, None]
    estimates = np.zeros(candidates.size, np.int64)
    exact = np.zeros(candidates.size, bool)

    first = np.argsort(-np.asarray(lead, np.float64), kind="stable")[:LEAD_COLUMNS]
    found = nearest_with_extra_column(index, points[:, candidates[first]], first_scan=first_scan)
    estimates[first] = np.minimum(rank_col, rank[found]).sum(0)
    exact[first] = True
    lower = _LowerBound(int(estimates[first].max()))
    limits = {level: plan.threshold(level) * (1 - ROUNDING_SLACK) for level in plan.levels}
    full = plan.levels[-1]

    def scan_tile(alive: np.ndarray):
        """Scan one tile level by level, dropping what cannot win; the survivors' state."""
        cols = points[:, candidates[alive]]  # (m, t)
        best, best_at = plan.scan(cols, 0, plan.levels[0])
        for level, following in zip(plan.levels, [*plan.levels[1:], None]):
            proven = best < limits[level][:, None]
            found_rank = np.minimum(rank_col, rank[best_at])  # (m, t)
            bound = np.where(proven, found_rank, rank_col).sum(0)
            keep = bound >= lower.value  # a column below an exact sum can neither win nor tie
            # dropped: the sum over the neighbours found so far, a guess for the next step's lead
            estimates[alive[~keep]] = found_rank[:, ~keep].sum(0)
            if not keep.all():
                alive, cols, best, best_at = alive[keep], cols[:, keep], best[:, keep], best_at[:, keep]
            if following is None or not alive.size:
                break
            more, more_at = plan.scan(cols, level, following)
            nearer = more < best  # strictly: the earlier scanned wins ties, as in one scan
            best, best_at = np.where(nearer, more, best), np.where(nearer, more_at, best_at)
        return alive, cols, best, best_at

    def finish(pending: list) -> None:
        """Score the surviving columns exactly, as nearest_with_extra_column finishes its own."""
        alive = np.concatenate([p[0] for p in pending])
        cols, best, best_at = (np.concatenate([p[i] for p in pending], axis=1) for i in (1, 2, 3))
        rows, cols_at = np.nonzero(best >= limits[full][:, None])
        if rows.size:  # one listing of each row's S-neighbours serves every pending column
            _scan_pairs(index, index.host, cols, best, best_at, rows, cols_at, plan.threshold(full))
        sums = np.minimum(rank_col, rank[best_at]).sum(0)
        estimates[alive], exact[alive] = sums, True
        lower.raise_to(int(sums.max()))

    def one_block(positions: np.ndarray) -> None:
        tile = max(1, SCAN_BLOCK_ELEMENTS // m)  # cache-sized
        pending, waiting = [], 0
        for number, start in enumerate(range(0, positions.size, tile)):
            survivors = scan_tile(positions[start : start + tile])
            if survivors[0].size:
                pending.append(survivors)
                waiting += survivors[0].size
            # the first tile is finished at once, so that the lower bound rises early
            if pending and (number == 0 or waiting * m >= FINISH_ELEMENTS):
                finish(pending)
                pending, waiting = [], 0
        if pending:
            finish(pending)

    rest = np.setdiff1d(np.arange(candidates.size), first)
    workers = cpu_workers()
    per_block = max(1, min(BLOCK_ELEMENTS // m, -(-rest.size // workers)))
    blocks = [rest[start : start + per_block] for start in range(0, rest.size, per_block)]
    if workers == 1 or len(blocks) <= 1:
        for block in blocks:
            one_block(block)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy releases the GIL in the scans
            list(pool.map(one_block, blocks))

    scored = np.flatnonzero(exact)
    winner = int(scored[np.argmax(estimates[scored])])  # scored is ascending: ties to the lower position
    return winner, int(estimates[winner]), estimates
