"""L-FOCI: greedy selection of the features Y depends on, scored by L-CODEC.

FOCI is the greedy feature ordering of Azadkia & Chatterjee (2021) by the conditional
dependence coefficient: step 1 takes j1 = argmax_j T(Y, A_j), step k the
j = argmax_{j not in S} T(Y, A_j | A_S), while the score stays positive. The "L"
version breaks ties by the jitter of ``codec``. See docs/ALGORITHM.md, section 2 (L-FOCI,
greedy Markov-blanket selection). Each step scores every candidate at once through
``column_search``; the result equals scoring each with its own exact search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lcodec_core.dependence.ranks import max_ranks

from .arrays import BLOCK_ELEMENTS, column_max, exact_sum, host, index_like, like, minimum
from .codec_estimator import jitter
from .candidate_pruning import best_extra_column
from .column_search import nearest_in_each_column, nearest_with_extra_column
from .inputs import (
    as_generator,
    check_backend,
    compute_device,
    design_matrix,
    rescale_if_extreme,
    response_values,
    times_power_of_two,
)
from .neighbor_index import NeighborIndex

__all__ = ["STOP_REASONS", "FociResult", "foci"]

logger = logging.getLogger(__name__)

FIRST_SCAN = {1: 128, 2: 32, 3: 24}  # S-neighbours scanned densely per point, by |S|, at m = 1000:
# the points nearer in S than the joint nearest neighbour number about m^(1/(|S|+1)); these
# balance the dense scan against finishing the unproven pairs (measured), and grow alike
FIRST_SCAN_OTHERWISE = 16  # the same for |S| >= 4
FIRST_SCAN_CUDA = {1: 512, 2: 256, 3: 128}  # the same on a GPU, at m = 10^4: the dense scan is
FIRST_SCAN_CUDA_OTHERWISE = 96  # cheap there and finishing unproven pairs is not, so scan further

STOP_REASONS = {
    "first_score_nonpositive": "the best single feature scored T(Y, A_j) <= 0; nothing selected",
    "score_nonpositive": "the best remaining feature scored T(Y, A_j | A_S) <= 0",
    "max_features_reached": "max_features features were selected",
    "all_features_selected": "every feature was selected",
    "y_determined_by_selection": (
        "the selected features already predict Y's ranks perfectly (the denominator "
        "sum_i [R_i - min(R_i, R_N(i))] is 0), so T(Y, A_j | A_S) is undefined"
    ),
}


@dataclass(frozen=True)
class FociResult:
    """What L-FOCI selected.

    Attributes
    ----------
    selected : list[int]
        Column indices of ``features`` in the order they were selected.
    scores : list[float]
        The winning score of each step: ``T(Y, A_j1)`` first, then
        ``T(Y, A_jk | A_{j1..j(k-1)})``. Same length as ``selected``.
    stopped_because : str
        One of the keys of ``lcodec_core.dependence.STOP_REASONS``:
        ``"first_score_nonpositive"``, ``"score_nonpositive"``,
        ``"max_features_reached"``, ``"all_features_selected"`` or
        ``"y_determined_by_selection"``.
    """

    selected: list[int]
    scores: list[float]
    stopped_because: str


def foci(
    y,
    features,
    *,
    max_features: int | None = None,
    standardize: bool = True,
    rng=None,
    backend: str = "auto",
) -> FociResult:
    """L-FOCI: greedy selection of the features Y depends on (a Markov blanket).

    Parameters
    ----------
    y : np.ndarray or torch.Tensor, shape (m,)
        Response; real, finite, not constant; m >= 3.
    features : np.ndarray or torch.Tensor, shape (m, D)
        One column per candidate; real, finite, no constant column. A CUDA tensor
        runs the whole selection on its GPU.
    max_features : int or None
        Stop after this many (>= 1). None: no cap.
    standardize : bool, default True
        Centre and scale each column to unit variance once, before anything else.
    rng : np.random.Generator or int or None
        Randomness for the tie-breaking jitter and row order. An int is a seed.
    backend : {"auto", "kdtree", "faiss", "torch"}, default "auto"
        Neighbour search in the selected features' space (``neighbor_index``).
        The first step always uses an exact per-column sort.

    Returns
    -------
    FociResult
        ``selected`` (column indices in order), ``scores`` (each step's score) and
        ``stopped_because``.

    Raises
    ------
    ValueError
        Naming the input and the reason: wrong shape or dtype, NaN or Inf, lengths
        that differ, m < 3, constant y, constant feature columns (listed; drop them
        first), a bad ``max_features`` or backend.

    Notes
    -----
    Step 1: j1 = argmax_j T(Y, A_j); if T(Y, A_j1) <= 0 nothing is selected. Step k:
    j = argmax_{j not in S} T(Y, A_j | A_S), kept if > 0. Ties go to the lower index.

    Work shared so that the result equals scoring each candidate with its own exact
    search (tested): Y is ranked once; columns are standardised and jittered once; per
    step the S-space neighbours of every point are found once and give N(i) and the
    denominator. Each candidate's joint neighbour M_j(i) is the k minimising
    D_S(i, k) + (a_j(i) - a_j(k))^2; since that is at least D_S(i, k), scanning the
    points in order of D_S(i, .) can stop once D_S(i, k) exceeds the best joint
    distance so far. All candidates are scanned together over the first few S-space
    neighbours, and the few (point, candidate) pairs not yet proven exact are
    continued with longer lists, up to all m - 1 points
    (``column_search.nearest_with_extra_column``). On the CPU a step scores in full only
    the candidates that can still win: a half-length scan bounds each candidate's sum
    from above, and one below the exact sum of another cannot win or tie
    (``candidate_pruning.best_extra_column``); the winner and its score are unchanged.
    """
    generator = as_generator(rng)
    check_backend(backend)
    if backend == "sort":
        raise ValueError("backend 'sort' handles only one dimension; foci needs one of 'auto', 'kdtree', 'faiss', 'torch'")
    if max_features is not None and (isinstance(max_features, bool) or not isinstance(max_features, (int, np.integer)) or max_features < 1):
        raise ValueError(f"max_features must be None or an int >= 1, got {max_features!r}")
    data = _prepare_foci(y, features, standardize=standardize, generator=generator, max_features=max_features)
    return _select(data, max_features=max_features, backend=backend)


class _FociData(NamedTuple):
    """Inputs of the greedy loop after the one-off preparation (rows shuffled alike)."""

    rank: np.ndarray  # (m,) int64, R_i
    rank_rev: np.ndarray  # (m,) int64, L_i
    points: np.ndarray | torch.Tensor  # (m, D) float64, standardised and jittered


def _prepare_foci(y, features, *, standardize: bool, generator: np.random.Generator, max_features=None) -> _FociData:
    """Validate, rank Y, standardise, shuffle rows and jitter, once."""
    response = response_values(y)
    m = response.shape[0]
    points = design_matrix("features", features, m, compute_device(features), matrix_only=True)
    constant = np.flatnonzero(host(column_max(points) == column_max(-points) * -1))
    if constant.size:
        shown = ", ".join(str(c) for c in constant[:10]) + (", ..." if constant.size > 10 else "")
        raise ValueError(
            f"features has {constant.size} constant (zero-variance) column(s): [{shown}]; "
            "they carry no information about y; drop them before calling foci"
        )
    rank, rank_rev = max_ranks(response)
    if standardize:
        # Per-column power-of-two scaling first (exact), so the variance cannot overflow.
        exponent = -np.ceil(np.log2(host(column_max(abs(points)))))  # (D,) per-column power of two
        points = times_power_of_two(points, exponent)
        points = points - points.mean(0)
        points = points / ((points * points).mean(0) ** 0.5)
    else:
        points = rescale_if_extreme(points)
    order = generator.permutation(m)
    points = points[index_like(order, points)]
    dims = points.shape[1] if max_features is None else min(points.shape[1], int(max_features))
    points = jitter(points, generator, dims=dims)
    return _FociData(rank[order], rank_rev[order], points)


def _select(data: _FociData, *, max_features: int | None, backend: str) -> FociResult:
    """The greedy loop of L-FOCI on prepared data (see ``foci``)."""
    rank, rank_rev, points = data
    m, n_features = points.shape
    rank_dev = like(rank, points)  # ranks where the points live

    sums = _single_feature_sums(points, rank_dev)  # (D,) int64
    first = int(np.argmax(sums))
    first_numerator = m * int(sums[first]) - exact_sum(rank_rev * rank_rev)
    first_score = first_numerator / exact_sum(rank_rev * (m - rank_rev))
    logger.debug("foci step 1: feature %d, T = %.6g", first, first_score)
    if first_numerator <= 0:
        return FociResult([], [], "first_score_nonpositive")
    selected, scores = [first], [first_score]
    lead = sums.astype(np.float64)  # (D,) each column's last sum or bound on it: who to score first

    while True:
        if max_features is not None and len(selected) >= max_features:
            return FociResult(selected, scores, "max_features_reached")
        if len(selected) == n_features:
            return FociResult(selected, scores, "all_features_selected")
        index = NeighborIndex(points[:, selected], backend=backend)
        near = index.query(1)[0][:, 0]  # N(i) in the selected features
        base = exact_sum(np.minimum(rank, rank[near]))
        denominator = exact_sum(rank) - base
        if denominator == 0:
            return FociResult(selected, scores, "y_determined_by_selection")
        candidates = np.setdiff1d(np.arange(n_features), selected)
        first_scan = _first_scan(m, len(selected), isinstance(points, torch.Tensor) and points.is_cuda)
        if isinstance(points, torch.Tensor):  # CUDA: every candidate scored in full
            sums = _joint_sums(points, rank_dev, candidates, index, first_scan)
            best, total = int(np.argmax(sums)), int(sums.max())
        else:  # CPU: only the candidates that can still win are scored in full
            best, total, lead[candidates] = best_extra_column(
                index, points, candidates, rank, first_scan=first_scan, lead=lead[candidates]
            )
        numerator = total - base
        score = numerator / denominator
        logger.debug("foci step %d: feature %d, T = %.6g", len(selected) + 1, candidates[best], score)
        if numerator <= 0:
            return FociResult(selected, scores, "score_nonpositive")
        selected.append(int(candidates[best]))
        scores.append(score)


def _first_scan(m: int, selected: int, on_cuda: bool) -> int:
    """S-neighbours to scan densely: the value tuned at m = 1000 (CUDA: 10^4), grown as m^(1/(|S|+1))."""
    if on_cuda:
        base, tuned_at = FIRST_SCAN_CUDA.get(selected, FIRST_SCAN_CUDA_OTHERWISE), 10_000
    else:
        base, tuned_at = FIRST_SCAN.get(selected, FIRST_SCAN_OTHERWISE), 1000
    return max(1, min(m - 1, round(base * max(1.0, m / tuned_at) ** (1 / (selected + 1)))))


def _single_feature_sums(points, rank) -> np.ndarray:
    """sum_i min(R_i, R_M_j(i)) for every column j, M_j the 1-D nearest neighbour."""
    block = max(1, BLOCK_ELEMENTS // points.shape[0])
    out = []
    for start in range(0, points.shape[1], block):
        nearest = nearest_in_each_column(points[:, start : start + block])  # (m, b)
        out.append(host(minimum(rank[:, None], rank[nearest]).sum(0)))
    return np.concatenate(out).astype(np.int64)


def _joint_sums(points, rank, candidates: np.ndarray, index: NeighborIndex, first_scan: int) -> np.ndarray:
    """sum_i min(R_i, R_M_j(i)) for each candidate j, M_j the neighbour in (A_S, a_j)."""
    block = max(1, BLOCK_ELEMENTS // points.shape[0])
    out = []
    for start in range(0, candidates.size, block):
        cols = points[:, index_like(candidates[start : start + block], points)]  # (m, b)
        nearest = nearest_with_extra_column(index, cols, first_scan=first_scan)  # (m, b)
        out.append(host(minimum(rank[:, None], rank[nearest]).sum(0)))
    return np.concatenate(out).astype(np.int64)
