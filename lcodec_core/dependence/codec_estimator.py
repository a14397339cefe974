"""L-CODEC: the conditional dependence coefficient T(Y, Z | X), ties broken at random.

``codec`` computes the coefficient of Azadkia & Chatterjee (2021) from ranks of Y and
nearest neighbours in X and in (X, Z); ``jitter`` is the "L" (Mehta et al., CVPR 2022):
a tiny Gaussian noise on the predictors, so that equidistant neighbours are chosen at
random. See docs/ALGORITHM.md, section 1 (L-CODEC, the conditional dependence
coefficient). L-FOCI (``foci``) scores its candidates with the same two pieces.

Exactness. Y is ranked with ties kept (max-ranks, never jittered). The jitter has a
standard deviation of 1e-3 / sqrt(d) times the smallest non-zero gap between two values
of any one coordinate, so it reorders only exactly equal distances; the neighbour
search resolves it because it is exact in float64 (``neighbor_index``). Every
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

import math

import numpy as np
import torch

from lcodec_core.dependence.ranks import max_ranks

from .arrays import BLOCK_ELEMENTS, concat, exact_sum, host, index_like, sort_columns
from .inputs import as_generator, check_backend, compute_device, design_matrix, rescale_if_extreme, response_values
from .neighbor_index import NeighborIndex

__all__ = ["codec", "jitter"]

JITTER_FRACTION = 1e-3  # jitter s.d. as a share of the smallest non-zero coordinate gap


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
        Nearest-neighbour search (``neighbor_index``). CUDA tensors among
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
    numerator, denominator = _codec_terms(y, z, x, generator=as_generator(rng), backend=backend)
    if denominator == 0:
        raise ValueError(
            "T(y, z | x) is undefined (0/0): every point's nearest neighbour in x has a y-rank at "
            "least its own, i.e. x already determines y's ranks; nothing is left for z to explain"
        )
    return numerator / denominator


def _codec_terms(y, z, x, *, generator: np.random.Generator, backend: str) -> tuple[int, int]:
    """Validated inputs to (numerator, denominator) of ``codec``, as exact integers."""
    check_backend(backend)
    response = response_values(y)
    m = response.shape[0]
    device = compute_device(y, z, x)
    given = design_matrix("z", z, m, device)
    given_x = None if x is None else design_matrix("x", x, m, device, allow_empty=True)
    if given_x is not None and given_x.shape[1] == 0:
        given_x = None
    rank, rank_rev = max_ranks(response)

    order = generator.permutation(m)
    parts = [given] if given_x is None else [given_x, given]
    space = concat(parts, axis=1)[index_like(order, given)]  # (m, dx + dz), rows shuffled
    space = jitter(rescale_if_extreme(space), generator, dims=space.shape[1])
    rank, rank_rev = rank[order], rank_rev[order]

    if given_x is None:
        joint = NeighborIndex(space, backend=backend).query(1)[0][:, 0]  # M(i) in z
        numerator = m * exact_sum(np.minimum(rank, rank[joint])) - exact_sum(rank_rev * rank_rev)
        return numerator, exact_sum(rank_rev * (m - rank_rev))
    dx = given_x.shape[1]
    near_x = NeighborIndex(space[:, :dx], backend=backend).query(1)[0][:, 0]  # N(i) in x
    joint = NeighborIndex(space, backend=backend).query(1)[0][:, 0]  # M(i) in (x, z)
    base = exact_sum(np.minimum(rank, rank[near_x]))
    return exact_sum(np.minimum(rank, rank[joint])) - base, exact_sum(rank) - base


def _smallest_gap(points) -> float:
    """Smallest non-zero difference between two values of one column (inf if none)."""
    m, d = points.shape
    block = max(1, BLOCK_ELEMENTS // m)
    smallest = math.inf
    for start in range(0, d, block):
        values = sort_columns(points[:, start : start + block])
        gaps = values[1:] - values[:-1]
        gaps = gaps[gaps > 0]
        if gaps.shape[0]:
            smallest = min(smallest, float(host(gaps.min())))
    return smallest


def jitter(points, generator: np.random.Generator, *, dims: int):
    """points + N(0, s^2) i.i.d., s = JITTER_FRACTION * smallest gap / sqrt(dims).

    Distinct points are at least the smallest gap g apart; two coincident points end
    up about s * sqrt(2 * dims) << g apart, so only exact ties are reordered. With no
    gap at all (every column constant) any scale works; 1e-3 of the magnitude is used.
    """
    gap = _smallest_gap(points)
    if math.isinf(gap):
        gap = max(float(host(abs(points).max())), 1.0)
    sigma = JITTER_FRACTION * gap / math.sqrt(max(dims, 1))
    if isinstance(points, torch.Tensor):
        device_generator = torch.Generator(device=points.device)
        device_generator.manual_seed(int(generator.integers(2**63)))
        noise = torch.randn(points.shape, generator=device_generator, device=points.device, dtype=torch.float64)
    else:
        noise = generator.standard_normal(points.shape)
    return points + sigma * noise
