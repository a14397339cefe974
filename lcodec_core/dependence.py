"""L-CODEC and L-FOCI: conditional dependence and greedy Markov-blanket selection.

CODEC is the conditional dependence coefficient of Azadkia & Chatterjee (2021), "A
simple measure of conditional dependence", Ann. Statist.; FOCI is their greedy
feature-ordering by it. The "L" versions (Mehta et al., CVPR 2022, "Deep Unlearning
via Randomized Conditionally Independent Hessians") break ties among equidistant
neighbours at random by a tiny Gaussian jitter of the predictors, so discrete data are
scored as the estimator assumes. See docs/ALGORITHM.md, sections 1 (L-CODEC, the
conditional dependence coefficient) and 2 (L-FOCI, greedy Markov-blanket selection).

This module is the public entry point: ``codec``, ``foci`` and ``FociResult``.

Exactness. Y is ranked with ties kept (max-ranks, never jittered). The jitter has a
standard deviation of 1e-3 / sqrt(d) times the smallest non-zero gap between two values
of any one coordinate, so it reorders only exactly equal distances; the neighbour
search resolves it because it is exact in float64 (``lcodec_core.neighbors``). Every
sum is an integer sum, so results match an O(m^2) float64 reference to the last bit
on tie-free data. The rows are also put in random order before the search, so that
ties which survive the jitter (values so large that it vanishes in float64 rounding)
still fall to a random, not the lowest-index, neighbour.

Where it runs: numpy on the CPU; torch on the GPU when an input is a CUDA tensor (the
jitter then comes from a torch generator seeded from ``rng``, so CPU and GPU draw
different ties; on tie-free data they agree exactly).

Limitation, stated for the record: a shared Gaussian jitter makes the choice among
tied neighbours exactly uniform when the tied points coincide (duplicates, the usual
case for discrete data) or sit symmetrically; for unequal points at exactly equal
distance the choice is random but not exactly uniform.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lcodec_core.neighbors import (
    BACKENDS,
    BLOCK_ELEMENTS,
    NeighborIndex,
    _concat,
    _host,
    _like,
    nearest_in_each_column,
    nearest_with_extra_column,
)
from lcodec_core.ranks import max_ranks

__all__ = ["FociResult", "codec", "foci"]

logger = logging.getLogger(__name__)

JITTER_FRACTION = 1e-3  # jitter s.d. as a share of the smallest non-zero coordinate gap
FIRST_SCAN = {1: 128, 2: 32, 3: 24}  # S-neighbours scanned densely per point, by |S|, at m = 1000:
# the points nearer in S than the joint nearest neighbour number about m^(1/(|S|+1)); these
# balance the dense scan against finishing the unproven pairs (measured), and grow alike
FIRST_SCAN_OTHERWISE = 16  # the same for |S| >= 4
FIRST_SCAN_CUDA = {1: 512, 2: 256, 3: 128}  # the same on a GPU, at m = 10^4: the dense scan is
FIRST_SCAN_CUDA_OTHERWISE = 96  # cheap there and finishing unproven pairs is not, so scan further
_TORCH_ON_CPU = False  # tests set this to run the CUDA code path (torch tensors) on the CPU
SAFE_MAGNITUDE = 2.0**500  # beyond this (or below its inverse) rescale by a power of two

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


# ====================================================================== public API
def codec(y, z, x=None, *, rng=None, backend: str = "auto") -> float:
    """L-CODEC: the conditional dependence coefficient T(Y, Z | X), or T(Y, Z).

    Parameters
    ----------
    y : np.ndarray or torch.Tensor, shape (m,)
        Response; real, finite, not constant; m >= 3. Ties are kept (never jittered).
    z : np.ndarray or torch.Tensor, shape (m,) or (m, dz)
        The variables whose added predictive power is measured.
    x : np.ndarray or torch.Tensor, shape (m,) or (m, dx), optional
        Conditioning variables. None (or dx = 0) gives the unconditional T(Y, Z).
    rng : np.random.Generator or int or None
        Randomness for the tie-breaking jitter and row order. An int is a seed.
    backend : {"auto", "sort", "kdtree", "faiss", "torch"}, default "auto"
        Nearest-neighbour search (``lcodec_core.neighbors``). CUDA tensors among
        the inputs keep the search on the GPU.

    Returns
    -------
    float
        Near 0 when Y is independent of Z (given X), 1 when Y is a measurable function
        of Z (given X); can be slightly negative.

    Raises
    ------
    ValueError
        Naming the input and the reason: wrong shape or dtype, NaN or Inf, lengths
        that differ, m < 3, constant y, an unknown backend, or (conditional only) a
        zero denominator, when every point's nearest neighbour in x already has a
        y-rank at least its own and T is 0/0.

    Notes
    -----
    With R_i = #{j : y_j <= y_i}, L_i = #{j : y_j >= y_i}, N(i) the nearest neighbour
    of x_i and M(i) that of (x_i, z_i) (of z_i alone when x is None), both among the
    other points, in plain Euclidean distance on the values given::

        T(Y, Z | X) = sum_i [min(R_i, R_M(i)) - min(R_i, R_N(i))]
                      / sum_i [R_i - min(R_i, R_N(i))]
        T(Y, Z)     = sum_i [m min(R_i, R_M(i)) - L_i^2] / sum_i [L_i (m - L_i)]

    Before the search x and z (never y) get i.i.d. N(0, s^2) noise with
    s = 1e-3 g / sqrt(dx + dz), g the smallest non-zero gap between two values of one
    coordinate: every distinct pair of points is at least g apart, so the noise only
    orders equal distances, at random.
    """
    numerator, denominator = _codec_terms(y, z, x, generator=_as_generator(rng), backend=backend)
    if denominator == 0:
        raise ValueError(
            "T(y, z | x) is undefined (0/0): every point's nearest neighbour in x has a y-rank at "
            "least its own, i.e. x already determines y's ranks; nothing is left for z to explain"
        )
    return numerator / denominator


def _codec_terms(y, z, x, *, generator: np.random.Generator, backend: str) -> tuple[int, int]:
    """Validated inputs to (numerator, denominator) of ``codec``, as exact integers."""
    _check_backend(backend)
    response = _response(y)
    m = response.shape[0]
    device = _compute_device(y, z, x)
    given = _design("z", z, m, device)
    given_x = None if x is None else _design("x", x, m, device, allow_empty=True)
    if given_x is not None and given_x.shape[1] == 0:
        given_x = None
    rank, rank_rev = max_ranks(response)

    order = generator.permutation(m)
    parts = [given] if given_x is None else [given_x, given]
    space = _concat(parts, axis=1)[_index_like(order, given)]  # (m, dx + dz), rows shuffled
    space = _jitter(_rescale_if_extreme(space), generator, dims=space.shape[1])
    rank, rank_rev = rank[order], rank_rev[order]

    if given_x is None:
        joint = NeighborIndex(space, backend=backend).query(1)[0][:, 0]  # M(i) in z
        numerator = m * _exact_sum(np.minimum(rank, rank[joint])) - _exact_sum(rank_rev * rank_rev)
        return numerator, _exact_sum(rank_rev * (m - rank_rev))
    dx = given_x.shape[1]
    near_x = NeighborIndex(space[:, :dx], backend=backend).query(1)[0][:, 0]  # N(i) in x
    joint = NeighborIndex(space, backend=backend).query(1)[0][:, 0]  # M(i) in (x, z)
    base = _exact_sum(np.minimum(rank, rank[near_x]))
    return _exact_sum(np.minimum(rank, rank[joint])) - base, _exact_sum(rank) - base


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
        Neighbour search in the selected features' space (``lcodec_core.neighbors``).
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
    (``lcodec_core.neighbors.nearest_with_extra_column``).
    """
    generator = _as_generator(rng)
    _check_backend(backend)
    if backend == "sort":
        raise ValueError("backend 'sort' handles only one dimension; foci needs one of 'auto', 'kdtree', 'faiss', 'torch'")
    if max_features is not None and (isinstance(max_features, bool) or not isinstance(max_features, (int, np.integer)) or max_features < 1):
        raise ValueError(f"max_features must be None or an int >= 1, got {max_features!r}")
    data = _prepare_foci(y, features, standardize=standardize, generator=generator, max_features=max_features)
    return _select(data, max_features=max_features, backend=backend)


# ====================================================================== L-FOCI internals
class _FociData(NamedTuple):
    """Inputs of the greedy loop after the one-off preparation (rows shuffled alike)."""

    rank: np.ndarray  # (m,) int64, R_i
    rank_rev: np.ndarray  # (m,) int64, L_i
    points: np.ndarray | torch.Tensor  # (m, D) float64, standardised and jittered


def _prepare_foci(y, features, *, standardize: bool, generator: np.random.Generator, max_features=None) -> _FociData:
    """Validate, rank Y, standardise, shuffle rows and jitter, once."""
    response = _response(y)
    m = response.shape[0]
    points = _design("features", features, m, _compute_device(features), matrix_only=True)
    constant = np.flatnonzero(_host(_column_max(points) == _column_max(-points) * -1))
    if constant.size:
        shown = ", ".join(str(c) for c in constant[:10]) + (", ..." if constant.size > 10 else "")
        raise ValueError(
            f"features has {constant.size} constant (zero-variance) column(s): [{shown}]; "
            "they carry no information about y; drop them before calling foci"
        )
    rank, rank_rev = max_ranks(response)
    if standardize:
        # Per-column power-of-two scaling first (exact), so the variance cannot overflow.
        exponent = -np.ceil(np.log2(_host(_column_max(abs(points)))))  # (D,) per-column power of two
        points = _times_power_of_two(points, exponent)
        points = points - points.mean(0)
        points = points / ((points * points).mean(0) ** 0.5)
    else:
        points = _rescale_if_extreme(points)
    order = generator.permutation(m)
    points = points[_index_like(order, points)]
    dims = points.shape[1] if max_features is None else min(points.shape[1], int(max_features))
    points = _jitter(points, generator, dims=dims)
    return _FociData(rank[order], rank_rev[order], points)


def _select(data: _FociData, *, max_features: int | None, backend: str) -> FociResult:
    """The greedy loop of L-FOCI on prepared data (see ``foci``)."""
    rank, rank_rev, points = data
    m, n_features = points.shape
    rank_dev = _like(rank, points)  # ranks where the points live

    sums = _single_feature_sums(points, rank_dev)  # (D,) int64
    first = int(np.argmax(sums))
    first_numerator = m * int(sums[first]) - _exact_sum(rank_rev * rank_rev)
    first_score = first_numerator / _exact_sum(rank_rev * (m - rank_rev))
    logger.debug("foci step 1: feature %d, T = %.6g", first, first_score)
    if first_numerator <= 0:
        return FociResult([], [], "first_score_nonpositive")
    selected, scores = [first], [first_score]

    while True:
        if max_features is not None and len(selected) >= max_features:
            return FociResult(selected, scores, "max_features_reached")
        if len(selected) == n_features:
            return FociResult(selected, scores, "all_features_selected")
        index = NeighborIndex(points[:, selected], backend=backend)
        near = index.query(1)[0][:, 0]  # N(i) in the selected features
        base = _exact_sum(np.minimum(rank, rank[near]))
        denominator = _exact_sum(rank) - base
        if denominator == 0:
            return FociResult(selected, scores, "y_determined_by_selection")
        candidates = np.setdiff1d(np.arange(n_features), selected)
        first_scan = _first_scan(m, len(selected), isinstance(points, torch.Tensor) and points.is_cuda)
        sums = _joint_sums(points, rank_dev, candidates, index, first_scan)
        best = int(np.argmax(sums))
        numerator = int(sums[best]) - base
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
        out.append(_host(_minimum(rank[:, None], rank[nearest]).sum(0)))
    return np.concatenate(out).astype(np.int64)


def _joint_sums(points, rank, candidates: np.ndarray, index: NeighborIndex, first_scan: int) -> np.ndarray:
    """sum_i min(R_i, R_M_j(i)) for each candidate j, M_j the neighbour in (A_S, a_j)."""
    block = max(1, BLOCK_ELEMENTS // points.shape[0])
    out = []
    for start in range(0, candidates.size, block):
        cols = points[:, _index_like(candidates[start : start + block], points)]  # (m, b)
        nearest = nearest_with_extra_column(index, cols, first_scan=first_scan)  # (m, b)
        out.append(_host(_minimum(rank[:, None], rank[nearest]).sum(0)))
    return np.concatenate(out).astype(np.int64)


# ====================================================================== input checks
def _as_generator(rng) -> np.random.Generator:
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _response(y) -> np.ndarray:
    """y as a host array of its own real dtype, shape (m,), checked."""
    values = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"y must hold real numbers, got dtype {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"y must have shape (m,), got shape {values.shape}")
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    m = values.shape[0]
    if m < 3:
        raise ValueError(f"y has {m} rows; CODEC needs at least 3")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"y contains NaN or infinite values (first at row {bad})")
    if (values == values[0]).all():
        raise ValueError(f"y is constant (every value equals {values[0]!r}); dependence on it is undefined (0/0)")
    return values


def _compute_device(*inputs) -> torch.device | None:
    """Where the work runs: the CUDA device of a CUDA tensor input, else None (numpy)."""
    for value in inputs:
        if isinstance(value, torch.Tensor) and value.is_cuda:
            return value.device
    return torch.device("cpu") if _TORCH_ON_CPU else None


def _design(name: str, value, m: int, device, *, allow_empty: bool = False, matrix_only: bool = False):
    """A predictor block as float64, shape (m, d): numpy (device None) or torch on ``device``."""
    if matrix_only and len(np.shape(value)) != 2:
        raise ValueError(f"{name} must have shape (m, D), got shape {tuple(np.shape(value))}")
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
        array = value.detach().to(torch.float64)
        array = array.cpu().numpy() if device is None else array.to(device)
    else:
        raw = np.asarray(value)
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold real numbers, got dtype {raw.dtype}")
        array = raw.astype(np.float64)
        if device is not None:
            array = torch.from_numpy(array).to(device)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (m,) or (m, d), got shape {tuple(array.shape)}")
    if array.shape[0] != m:
        raise ValueError(f"{name} has {array.shape[0]} rows but y has {m}; they must match row for row")
    if array.shape[1] == 0 and not allow_empty:
        raise ValueError(f"{name} has no columns; it needs at least one")
    finite = _host(_isfinite(array).all(1))
    if not finite.all():
        raise ValueError(f"{name} contains NaN or infinite values (first in row {int(np.flatnonzero(~finite)[0])})")
    return array


# ====================================================================== jitter
def _rescale_if_extreme(points):
    """Multiply by a power of two (exact) when magnitudes risk overflow or underflow."""
    biggest = float(_host(abs(points).max()))
    if biggest == 0.0 or 1.0 / SAFE_MAGNITUDE <= biggest <= SAFE_MAGNITUDE:
        return points
    return _times_power_of_two(points, -math.ceil(math.log2(biggest)))


def _times_power_of_two(points, exponent):
    """points * 2**exponent, exactly (in two halves, so that no factor overflows)."""
    exponent = np.asarray(exponent, dtype=np.float64)
    half = np.floor(exponent / 2)
    for part in (half, exponent - half):
        points = points * _like(np.exp2(part), points)
    return points


def _smallest_gap(points) -> float:
    """Smallest non-zero difference between two values of one column (inf if none)."""
    m, d = points.shape
    block = max(1, BLOCK_ELEMENTS // m)
    smallest = math.inf
    for start in range(0, d, block):
        values = _sort_columns(points[:, start : start + block])
        gaps = values[1:] - values[:-1]
        gaps = gaps[gaps > 0]
        if gaps.shape[0]:
            smallest = min(smallest, float(_host(gaps.min())))
    return smallest


def _jitter(points, generator: np.random.Generator, *, dims: int):
    """points + N(0, s^2) i.i.d., s = JITTER_FRACTION * smallest gap / sqrt(dims).

    Distinct points are at least the smallest gap g apart; two coincident points end
    up about s * sqrt(2 * dims) << g apart, so only exact ties are reordered. With no
    gap at all (every column constant) any scale works; 1e-3 of the magnitude is used.
    """
    gap = _smallest_gap(points)
    if math.isinf(gap):
        gap = max(float(_host(abs(points).max())), 1.0)
    sigma = JITTER_FRACTION * gap / math.sqrt(max(dims, 1))
    if isinstance(points, torch.Tensor):
        device_generator = torch.Generator(device=points.device)
        device_generator.manual_seed(int(generator.integers(2**63)))
        noise = torch.randn(points.shape, generator=device_generator, device=points.device, dtype=torch.float64)
    else:
        noise = generator.standard_normal(points.shape)
    return points + sigma * noise


# ====================================================================== numpy / torch glue
# Arrays live in numpy on the CPU (numpy is faster than torch's threaded kernels for
# these memory-bound loops on a few cores) and in torch on CUDA.
def _index_like(indices: np.ndarray, reference):
    return _like(np.asarray(indices, dtype=np.int64), reference)


def _exact_sum(values) -> int:
    """Sum of an integer array as a Python int, in chunks that cannot overflow int64."""
    values = _host(values).astype(np.int64, copy=False).ravel()
    return sum(int(values[i : i + (1 << 16)].sum()) for i in range(0, values.size, 1 << 16))


def _column_max(array):
    return array.max(0).values if isinstance(array, torch.Tensor) else array.max(0)


def _isfinite(array):
    return torch.isfinite(array) if isinstance(array, torch.Tensor) else np.isfinite(array)


def _sort_columns(array):
    return torch.sort(array, dim=0).values if isinstance(array, torch.Tensor) else np.sort(array, axis=0)


def _minimum(a, b):
    return torch.minimum(a, b) if isinstance(a, torch.Tensor) else np.minimum(a, b)
