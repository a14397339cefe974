"""Exact nearest neighbours in float64 Euclidean distance, self excluded by index.

CODEC needs, for every point, its nearest other point (Azadkia & Chatterjee 2021).
Ties between equidistant points are broken upstream by a tiny Gaussian jitter (see
``lcodec_core.dependence``), which is only useful if the search resolves distances at
that scale: a jitter of 1e-7 relative to the data is invisible to float32 all-pairs
search (faiss then returns the lowest index for about half the points). Every backend
here is therefore exact with respect to float64 distances computed from coordinate
differences, ``sum_c (p_i[c] - p_j[c])**2``:

``"sort"``   d = 1 only. One stable sort; the k nearest lie within k places on either
             side. O(m log m).
``"kdtree"`` scipy's cKDTree, float64 throughout. Exact; fast for d up to about 10.
``"faiss"``  Flat L2 search in float32 on centred, power-of-two-scaled data (GPU index
             when ``faiss.StandardGpuResources`` exists and the points live on CUDA),
             followed by a float64 re-check: the candidates' distances are recomputed
             exactly, and a row is accepted only when a rigorous bound on float32
             rounding proves that no point outside its candidate list can be nearer.
             Rows that fail the bound are searched again with 8x more candidates, and
             finally exhaustively in float64.
``"torch"``  Blocked all-pairs float64 matrix products ``|a|^2 + |b|^2 - 2<a, b>`` on the
             points' device (fast on a GPU), then the same kind of re-check as faiss:
             candidates re-measured from coordinate differences (the expansion alone
             cancels catastrophically for near-duplicates), rows without a proof
             searched again with more candidates, finally exhaustively. Exact; used on
             CUDA.
``"auto"``   d = 1: sort. Else on CUDA: faiss-gpu if available, otherwise torch. Else
             (CPU): kdtree for d <= 10, torch for m <= 4096, faiss beyond.

The self-match is removed by index, never by position: with duplicate points the
query point need not come back first, so each backend asks for k + 1 neighbours and
drops the entry equal to the query's own index (or the last one if it is absent).
Among points at exactly equal float64 distance the order is unspecified; callers who
need random tie-breaking randomize the row order or jitter the data first.

The second half of the module serves L-FOCI, which needs the nearest neighbour of
every point in (S, a_j) for a thousand candidate columns a_j at once:
``nearest_in_each_column`` (|S| = 0) and ``nearest_with_extra_column`` (|S| >= 1),
both exact and equal to one search per column.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "NeighborIndex",
    "choose_backend",
    "faiss_gpu_available",
    "nearest_in_each_column",
    "nearest_neighbor",
    "nearest_with_extra_column",
]

BACKENDS = ("auto", "sort", "kdtree", "faiss", "torch")
KDTREE_MAX_DIM = 10  # cKDTree beats brute force up to about this dimension
BRUTE_MAX_POINTS = 4096  # below this, exact float64 all-pairs is cheap enough
BLOCK_ELEMENTS = 1 << 23  # elements per (rows, m) or (rows, m, d) block: 64 MiB in float64
GPU_BLOCK_ELEMENTS = 1 << 26  # the same for all-pairs blocks on a GPU: 512 MiB in float64
CANDIDATE_EXTRA = 16  # candidates fetched beyond k before the float64 re-check
FAISS_GPU_MAX_K = 2048  # faiss GPU indexes refuse larger k
FLOAT32_UNIT = 2.0**-24  # unit roundoff of float32
FLOAT64_UNIT = 2.0**-53  # unit roundoff of float64
SCAN_BLOCK_ELEMENTS = 1 << 17  # (m, columns) tile of the dense scan: cache-sized on a CPU
PARALLEL_QUERY_MIN = 1 << 13  # kd-tree queries (rows x k) worth spreading over threads
LIST_QUANTILE = 0.9  # unproven pairs: rows list this quantile of their needed S-neighbours
ROUNDING_SLACK = 1e-12  # relative slack between float64 distances summed in different orders


def faiss_gpu_available() -> bool:
    """True when an importable faiss exposes ``StandardGpuResources`` and CUDA is up."""
    if not torch.cuda.is_available():
        return False
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported on demand
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources")


def choose_backend(n_points: int, dim: int, on_cuda: bool = False) -> str:
    """The backend ``"auto"`` resolves to for ``n_points`` points in ``dim`` dimensions."""
    if dim == 1:
        return "sort"
    if on_cuda:
        return "faiss" if faiss_gpu_available() else "torch"
    if dim <= KDTREE_MAX_DIM:
        return "kdtree"
    if n_points <= BRUTE_MAX_POINTS:
        return "torch"
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return "torch"
    return "faiss"


class NeighborIndex:
    """Exact k-nearest-neighbour queries of a point set against itself.

    Parameters
    ----------
    points : np.ndarray or torch.Tensor, shape (m, d)
        Real, finite coordinates; converted to float64. A 1-D input is one column.
        A CUDA tensor keeps the ``"torch"`` (and faiss-gpu) search on its device.
    backend : {"auto", "sort", "kdtree", "faiss", "torch"}, default "auto"
        See the module docstring. ``"sort"`` needs d = 1.

    Notes
    -----
    Build once, query many times (any k, any subset of rows). Results are always host
    numpy arrays.
    """

    def __init__(self, points, *, backend: str = "auto"):
        if isinstance(points, torch.Tensor):
            self._device = points.device
            tensor = points.detach().to(torch.float64)
            if tensor.ndim == 1:
                tensor = tensor[:, None]
            self._tensor = tensor.contiguous()
            self._host = None
        else:
            self._device = torch.device("cpu")
            host = np.asarray(points, dtype=np.float64)
            if host.ndim == 1:
                host = host[:, None]
            self._host = np.ascontiguousarray(host)
            self._tensor = None
        shape = self._tensor.shape if self._tensor is not None else self._host.shape
        if len(shape) != 2:
            raise ValueError(f"points must have shape (m, d), got shape {tuple(shape)}")
        self.n_points, self.dim = int(shape[0]), int(shape[1])
        if self.n_points < 2:
            raise ValueError(f"points needs at least 2 rows to have a neighbour, got {self.n_points}")
        if self.dim < 1:
            raise ValueError("points needs at least one column, got 0")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = choose_backend(self.n_points, self.dim, self._device.type == "cuda")
        if backend == "sort" and self.dim != 1:
            raise ValueError(f"backend 'sort' needs 1-D points, got d={self.dim}; use 'kdtree', 'faiss' or 'torch'")
        self.backend = backend
        getattr(self, f"_build_{backend}")()

    # ---------------------------------------------------------------- public
    def query(self, k: int = 1, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest other points of each query row.

        Parameters
        ----------
        k : int
            Neighbours per row, 1 <= k <= m - 1.
        rows : array of int, shape (r,), optional
            Which points to query (default: all, r = m).

        Returns
        -------
        indices : np.ndarray, shape (r, k), int64
            Neighbour indices, nearest first; never the row itself.
        sq_distances : np.ndarray, shape (r, k), float64
            ``sum_c (p_row[c] - p_idx[c])**2`` computed in float64 from coordinate
            differences, ascending along each row. Every point not returned is at
            least as far as the last column (up to float64 rounding).
        """
        if not 1 <= k <= self.n_points - 1:
            raise ValueError(f"k must be in [1, m - 1] = [1, {self.n_points - 1}], got {k}")
        rows = np.arange(self.n_points) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float64)
        return getattr(self, f"_query_{self.backend}")(rows, k)

    def count_within(self, rows: np.ndarray, sq_radius: np.ndarray) -> np.ndarray | None:
        """How many other points lie within squared distance ``sq_radius[r]`` of each row.

        Cheap for ``"sort"`` and ``"kdtree"`` (None for the other backends); boundary
        points may be counted or not, so use it for sizing, not for proofs.
        """
        radius = np.sqrt(np.maximum(sq_radius, 0.0))
        if self.backend == "sort":
            here = self.host[rows, 0]
            below = np.searchsorted(self._sorted, here - radius, side="left")
            return np.searchsorted(self._sorted, here + radius, side="right") - below - 1
        if self.backend == "kdtree":
            found = self._tree.query_ball_point(self.host[rows], radius, return_length=True)
            return np.asarray(found, np.int64) - 1
        return None

    # ---------------------------------------------------------------- helpers
    @property
    def device_points(self) -> torch.Tensor:
        """The points as a float64 tensor on their device, shape (m, d)."""
        if self._tensor is None:
            self._tensor = torch.from_numpy(self._host)
        return self._tensor

    @property
    def host(self) -> np.ndarray:
        """The points as a C-contiguous float64 host array, shape (m, d)."""
        if self._host is None:
            self._host = np.ascontiguousarray(self._tensor.cpu().numpy())
        return self._host

    def _finish(self, rows: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 squared distances of candidate lists; keep the k nearest."""
        pts = self.host
        diff = pts[candidates] - pts[rows][:, None, :]  # (r, c, d)
        sq = np.einsum("rcd,rcd->rc", diff, diff)  # (r, c)
        order = np.argsort(sq, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(candidates, order, 1), np.take_along_axis(sq, order, 1)

    @staticmethod
    def _drop_self(rows: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Remove each row's own index from its (r, c) result; the last entry if absent."""
        drop = found == rows[:, None]
        absent = ~drop.any(axis=1)
        drop[absent, -1] = True
        # A row can list itself twice only if the backend returned duplicates; guard anyway.
        extra = drop.sum(axis=1) > 1
        if extra.any():
            first = np.argmax(drop, axis=1)
            drop[extra] = False
            drop[extra, first[extra]] = True
        return found[~drop].reshape(found.shape[0], found.shape[1] - 1)

    # ---------------------------------------------------------------- sort (d = 1)
    def _build_sort(self) -> None:
        values = self.host[:, 0]
        self._order = np.argsort(values, kind="stable")
        self._position = np.empty(self.n_points, np.int64)
        self._position[self._order] = np.arange(self.n_points)
        self._sorted = values[self._order]

    def _query_sort(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.n_points
        offsets = np.empty(2 * k, np.int64)  # -1, +1, -2, +2, ...: the earlier one wins ties
        offsets[0::2] = -np.arange(1, k + 1)
        offsets[1::2] = np.arange(1, k + 1)
        here = self._position[rows]  # (r,)
        where = here[:, None] + offsets  # (r, 2k)
        valid = (where >= 0) & (where < m)
        where = np.clip(where, 0, m - 1)
        gap = np.abs(self._sorted[where] - self._sorted[here][:, None])
        gap[~valid] = np.inf
        pick = np.argsort(gap, axis=1, kind="stable")[:, :k]
        found = self._order[np.take_along_axis(where, pick, 1)]
        diff = self.host[found, 0] - self.host[rows, 0][:, None]
        return found, diff * diff

    # ---------------------------------------------------------------- kd-tree
    def _build_kdtree(self) -> None:
        from scipy.spatial import cKDTree  # noqa: PLC0415

        self._tree = cKDTree(self.host, balanced_tree=False)

    def _query_kdtree(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Querying all points in the tree's own order keeps neighbouring queries in cache.
        every = rows.size == self.n_points and bool(np.all(rows == np.arange(self.n_points)))
        order = self._tree.indices.astype(np.int64) if every else rows
        workers = _cpu_workers() if order.size * (k + 1) >= PARALLEL_QUERY_MIN else 1  # threads cost ~1 ms to start
        _, found = self._tree.query(self.host[order], k=k + 1, workers=workers)
        found = self._drop_self(order, np.asarray(found, np.int64).reshape(order.size, k + 1))
        found, sq = self._finish(order, found, k)
        if not every:
            return found, sq
        out_found = np.empty_like(found)
        out_sq = np.empty_like(sq)
        out_found[order] = found
        out_sq[order] = sq
        return out_found, out_sq

    # ---------------------------------------------------------------- faiss
    def _build_faiss(self) -> None:
        try:
            import faiss  # noqa: PLC0415
        except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
            raise ValueError("backend 'faiss' needs the faiss package; use 'kdtree' or 'torch'") from err
        centred = self.host - self.host.mean(axis=0)
        biggest = float(np.abs(centred).max())
        # Power-of-two scaling is exact and keeps float32 away from overflow.
        self._faiss_scale = 1.0 if biggest == 0.0 else float(2.0 ** -np.ceil(np.log2(biggest)))
        scaled = centred * self._faiss_scale
        self._faiss_points = np.ascontiguousarray(scaled, dtype=np.float32)
        self._faiss_norm = np.sqrt(np.einsum("md,md->m", scaled, scaled))
        self._faiss_gpu = self._wants_faiss_gpu()
        if self._faiss_gpu:
            self._faiss_resources = faiss.StandardGpuResources()
            index = faiss.GpuIndexFlatL2(self._faiss_resources, self.dim)
        else:
            index = faiss.IndexFlatL2(self.dim)
        index.add(self._faiss_points)
        self._faiss_index = index

    def _wants_faiss_gpu(self) -> bool:
        return self._device.type == "cuda" and faiss_gpu_available()

    def _faiss_error_bound(self, rows: np.ndarray) -> np.ndarray:
        """Upper bound on |float32 squared distance - exact| in scaled units, per row.

        Rounding the coordinates to float32 moves a squared distance by at most
        2u(|a|+|b|)^2; evaluating |a|^2 + |b|^2 - 2<a,b> in float32 adds at most
        about (d + 2)u(|a|+|b|)^2. The bound doubles both for safety.
        """
        reach = self._faiss_norm[rows] + self._faiss_norm.max()
        return (4.0 * self.dim + 16.0) * FLOAT32_UNIT * reach * reach

    def _query_faiss(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.n_points
        found = np.empty((rows.size, k), np.int64)
        sq = np.empty((rows.size, k), np.float64)
        pending = np.arange(rows.size)
        fetch = min(m, k + 1 + CANDIDATE_EXTRA)
        cap = min(m, FAISS_GPU_MAX_K) if self._faiss_gpu else m
        while pending.size:
            if fetch > cap or (fetch == cap and cap < m):
                break  # the remaining rows go to the exhaustive float64 search
            q = rows[pending]
            approx, cand = self._faiss_index.search(self._faiss_points[q], fetch)
            cand = self._drop_self(q, cand.astype(np.int64))
            got, got_sq = self._finish(q, cand, k)
            if fetch >= m:
                ok = np.ones(q.size, bool)
            else:
                kth_scaled = got_sq[:, -1] * self._faiss_scale**2
                ok = approx[:, -1].astype(np.float64) - self._faiss_error_bound(q) > kth_scaled * (1 + 1e-12)
            found[pending[ok]] = got[ok]
            sq[pending[ok]] = got_sq[ok]
            pending = pending[~ok]
            fetch = min(m, fetch * 8)
        if pending.size:
            found[pending], sq[pending] = _verified_rows(_scaled_points(self.device_points), rows[pending], k)
        return found, sq

    # ---------------------------------------------------------------- torch
    def _build_torch(self) -> None:
        self._torch_points = _scaled_points(self.device_points)

    def _query_torch(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _verified_rows(self._torch_points, rows, k)


class _ScaledPoints(NamedTuple):
    """Points for the all-pairs search: as given, and centred and power-of-two scaled."""

    exact: torch.Tensor  # (m, d) float64, as given
    scaled: torch.Tensor  # (m, d) float64, centred, then times 2**-e so that |values| <= 1
    scale: float  # 2**-e
    norm_sq: torch.Tensor  # (m,) |scaled_i|^2
    reach: float  # max_i |scaled_i|


def _scaled_points(points: torch.Tensor) -> _ScaledPoints:
    centred = points - points.mean(0)
    biggest = float(centred.abs().max())
    scale = 1.0 if biggest == 0.0 else float(2.0 ** -math.ceil(math.log2(biggest)))
    scaled = centred * scale
    norm_sq = (scaled * scaled).sum(1)
    return _ScaledPoints(points, scaled, scale, norm_sq, float(norm_sq.max().sqrt()))


def _verified_rows(points: _ScaledPoints, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 k-NN of ``rows`` by all-pairs matrix products, verified.

    Candidates come from ``|a|^2 + |b|^2 - 2<a, b>`` on the centred, scaled points
    (one float64 matrix product per row block, fast on a GPU), with the row itself
    masked by index. Their distances are then recomputed from coordinate differences,
    and a row is accepted only if the expansion's rounding bound proves that no point
    outside its candidates can be nearer; otherwise it is searched again with 8x more
    candidates, up to all m - 1 (which is exhaustive and exact).
    """
    exact, scaled, scale, norm_sq, reach = points
    m, d = exact.shape
    device = exact.device
    budget = GPU_BLOCK_ELEMENTS if exact.is_cuda else BLOCK_ELEMENTS
    found = torch.empty((rows.size, k), dtype=torch.long, device=device)
    found_sq = torch.empty((rows.size, k), dtype=torch.float64, device=device)
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
    pending = torch.arange(rows.size, device=device)
    fetch = min(m - 1, k + CANDIDATE_EXTRA)
    while pending.numel():
        block = max(1, min(budget // m, budget // (fetch * d)))
        unresolved = []
        for start in range(0, pending.numel(), block):
            slot = pending[start : start + block]  # (b,) positions in ``rows``
            r = rows_t[slot]
            approx = torch.addmm(norm_sq[None, :], scaled[r], scaled.T, alpha=-2.0)
            approx += norm_sq[r][:, None]  # (b, m) |a|^2 + |b|^2 - 2<a, b>
            approx[torch.arange(r.numel(), device=device), r] = torch.inf
            if k == 1:  # no top-k needed: every point within twice the bound of the row's minimum
                reach_row = norm_sq[r].sqrt() + reach
                bound = (4.0 * d + 20.0) * FLOAT64_UNIT * reach_row * reach_row
                found[slot], found_sq[slot] = _nearest_within(exact, r, approx, bound)
                continue
            approx_sq, cand = torch.topk(approx, fetch, dim=1, largest=False, sorted=True)  # (b, fetch)
            diff = exact[cand] - exact[r][:, None, :]  # (b, fetch, d)
            cand_sq, order = torch.sort((diff * diff).sum(-1), dim=1, stable=True)
            cand = torch.gather(cand, 1, order)
            if fetch >= m - 1:
                ok = torch.ones(r.numel(), dtype=torch.bool, device=device)
            else:
                # |expansion - exact| <= (d + 2) u (|a| + |b|)^2, doubled, plus the scaling's rounding
                reach_row = norm_sq[r].sqrt() + reach
                bound = (4.0 * d + 20.0) * FLOAT64_UNIT * reach_row * reach_row
                ok = approx_sq[:, -1] - bound > cand_sq[:, k - 1] * scale * scale * (1 + ROUNDING_SLACK)
            found[slot[ok]] = cand[ok, :k]
            found_sq[slot[ok]] = cand_sq[ok, :k]
            unresolved.append(slot[~ok])
        pending = torch.cat(unresolved) if unresolved else pending[:0]
        fetch = min(m - 1, fetch * 8)
    return found.cpu().numpy(), found_sq.cpu().numpy()


def _nearest_within(exact: torch.Tensor, r: torch.Tensor, approx: torch.Tensor, bound: torch.Tensor):
    """Exact 1-NN of rows ``r`` given expansion distances ``approx`` (b, m) good to ``bound``.

    A point whose expansion exceeds the row's minimum by more than twice the bound is
    provably farther than the minimising point, so only the rest are re-measured.
    Returns (b, 1) indices and squared distances; exact ties go to the lowest index.
    """
    rows = r.numel()
    limit = approx.min(dim=1).values + 2.0 * bound * (1 + ROUNDING_SLACK)  # (b,)
    at_row, cand = torch.nonzero(approx <= limit[:, None], as_tuple=True)  # a few per row
    diff = exact[cand] - exact[r[at_row]]
    cand_sq = (diff * diff).sum(1)
    best_sq = torch.full((rows,), torch.inf, dtype=cand_sq.dtype, device=exact.device)
    best_sq.scatter_reduce_(0, at_row, cand_sq, reduce="amin")
    winner = cand_sq == best_sq[at_row]
    best = torch.full((rows,), exact.shape[0], dtype=torch.long, device=exact.device)
    best.scatter_reduce_(0, at_row[winner], cand[winner], reduce="amin")
    return best[:, None], best_sq[:, None]


def nearest_neighbor(points, *, backend: str = "auto") -> np.ndarray:
    """Index of each point's nearest other point (exact, float64, self excluded by index).

    Parameters
    ----------
    points : np.ndarray or torch.Tensor, shape (m, d) or (m,)
        Coordinates; m >= 2.
    backend : {"auto", "sort", "kdtree", "faiss", "torch"}, default "auto"

    Returns
    -------
    np.ndarray, shape (m,), int64
        ``N(i) = argmin_{j != i} |p_i - p_j|``; among exactly equal distances, any one.
    """
    found, _ = NeighborIndex(points, backend=backend).query(1)
    return found[:, 0]


# ============================================================== many candidate columns
def nearest_in_each_column(columns):
    """Exact 1-D nearest neighbour of every point within each column.

    Parameters
    ----------
    columns : np.ndarray or torch.Tensor, shape (m, c), float64
        On the CPU a numpy array, on CUDA a tensor (the result lives beside it).

    Returns
    -------
    np.ndarray or torch.Tensor, shape (m, c), int64
        ``M[i, j] = argmin_{k != i} |columns[i, j] - columns[k, j]|``: the point just
        before or just after i in the column's stable sort, the one before on a tie
        (as the ``"sort"`` backend).
    """
    m, count = columns.shape
    if m < 2:
        raise ValueError(f"columns needs at least 2 rows, got {m}")
    found = _empty_index(columns.shape, columns)
    block = max(1, BLOCK_ELEMENTS // m)
    for start in range(0, count, block):
        cols = columns[:, start : start + block]  # (m, b)
        if isinstance(cols, torch.Tensor):
            values, order = torch.sort(cols, dim=0, stable=True)
        else:
            order = np.argsort(cols, axis=0)  # quicksort: about twice as fast as a stable sort,
            values = np.take_along_axis(cols, order, 0)  # and the same order unless values tie
            tied = np.flatnonzero((values[1:] == values[:-1]).any(axis=0))
            if tied.size:
                order[:, tied] = np.argsort(cols[:, tied], axis=0, kind="stable")
                values[:, tied] = np.take_along_axis(cols[:, tied], order[:, tied], 0)
        gaps = values[1:] - values[:-1]  # (m - 1, b): gaps[p] = sorted[p + 1] - sorted[p] >= 0
        # position p takes p - 1 when gaps[p - 1] <= gaps[p]; the two ends have one choice
        step = _where(gaps[:-1] <= gaps[1:], -1, 1)  # (m - 2, b)
        position = _arange(m, cols)[1:-1, None] + step
        first = _full_index((1, cols.shape[1]), 1, cols)
        last = _full_index((1, cols.shape[1]), m - 2, cols)
        position = _concat([first, position, last])  # (m, b) sorted position of the neighbour
        if isinstance(cols, torch.Tensor):
            neighbour = torch.gather(order, 0, position)
            found[:, start : start + block].scatter_(0, order, neighbour)
        else:
            neighbour = np.take_along_axis(order, position, 0)
            target = found[:, start : start + block]
            np.put_along_axis(target, order, neighbour, 0)
    return found


def nearest_with_extra_column(index: NeighborIndex, columns, *, first_scan: int = 32):
    """Exact nearest neighbours in (S, a_j) for many extra columns a_j at once.

    For every column j and point i this finds
    ``M[i, j] = argmin_{k != i} D_S(i, k) + (a_j(i) - a_j(k))^2``, where D_S is the
    squared distance among ``index``'s points: the nearest neighbour of point i in the
    space of the indexed coordinates plus column j, as if each column had its own
    exact search, but sharing the work between columns.

    Parameters
    ----------
    index : NeighborIndex
        The points in S, shape (m, |S|).
    columns : np.ndarray (CPU) or torch.Tensor (CUDA), shape (m, c), float64
        The extra columns a_j.
    first_scan : int
        S-neighbours scanned densely for every (point, column) pair.

    Returns
    -------
    np.ndarray or torch.Tensor, shape (m, c), int64, beside ``columns``.

    Notes
    -----
    Since the joint distance is at least D_S(i, k), scanning k in order of D_S(i, .)
    can stop as soon as D_S(i, k) exceeds the best joint distance found. All columns
    are first scanned together over each point's ``first_scan`` nearest in S (dense,
    in cache-sized tiles; for |S| = 1 the nearest in S are a window of the sorted
    order, scanned as contiguous slices with each pair serving both its points). The
    few (point, column) pairs not yet proven exact are finished by ``_scan_pairs``.
    Exact ties in the joint distance go to the point scanned first.
    """
    m, count = columns.shape
    if index.n_points != m:
        raise ValueError(f"columns has {m} rows but the index holds {index.n_points} points")
    on_torch = isinstance(columns, torch.Tensor)  # CUDA (or the CPU in tests)
    base = index.device_points if on_torch else index.host  # (m, |S|) the S coordinates
    if index.dim == 1:
        window = min(m - 1, max(1, first_scan // 2))  # sorted positions scanned on each side
        order = np.argsort(index.host[:, 0], kind="stable")
        values = index.host[order, 0]
        ahead = np.full(m, np.inf)  # D_S to the first unscanned point on each side
        behind = np.full(m, np.inf)
        ahead[: m - window - 1] = (values[window + 1 :] - values[: m - window - 1]) ** 2
        behind[window + 1 :] = (values[window + 1 :] - values[: m - window - 1]) ** 2
        threshold = np.empty(m)
        threshold[order] = np.minimum(ahead, behind)
        order_d, values_d = _like(order, columns), _like(values, columns)

        def dense(cols):
            return _sorted_scan(cols, order_d, values_d, window)

    else:
        near, near_sq = index.query(min(m - 1, first_scan))
        threshold = near_sq[:, -1]
        near_d, near_sq_d = _like(near, columns), _like(near_sq, columns)

        def dense(cols):
            return _dense_scan(cols, near_d, near_sq_d)

    unproven_at = _like(threshold * (1 - ROUNDING_SLACK), columns)[:, None]  # (m, 1)
    workers = 1 if on_torch else _cpu_workers()
    outer = max(1, min(BLOCK_ELEMENTS // m, -(-count // workers)))  # columns per block
    tile = outer if on_torch else max(1, SCAN_BLOCK_ELEMENTS // m)  # cache-sized on a CPU

    def one_block(start: int):
        cols = columns[:, start : start + outer]  # (m, b)
        scans = [dense(cols[:, t : t + tile]) for t in range(0, cols.shape[1], tile)]
        best = _concat([b for b, _ in scans], axis=1)  # (m, b) best joint squared distance
        best_at = _concat([a for _, a in scans], axis=1)  # (m, b) its index
        rows, cols_at = (_host(v) for v in _nonzero(best >= unproven_at))
        if rows.size:
            _scan_pairs(index, base, cols, best, best_at, rows, cols_at, threshold)
        return best_at

    starts = range(0, count, outer)
    if workers == 1 or len(starts) == 1:
        return _concat([one_block(start) for start in starts], axis=1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy releases the GIL in these loops
        return _concat(list(pool.map(one_block, starts)), axis=1)


def _sorted_scan(cols, order, values, window: int):
    """``_dense_scan`` for |S| = 1: each point against ``window`` sorted places each side.

    Rows are put in the order of the single S coordinate, so the t-th neighbour on the
    right of every point is a contiguous slice, and each pair (p, p + t) is measured
    once for both of its points. Returns (best, best_at) in the original row order.
    """
    m, b = cols.shape
    if isinstance(cols, torch.Tensor):
        ranked = cols[order]  # (m, b) rows in S order
        best = torch.full_like(ranked, torch.inf)
        best_at = torch.zeros((m, b), dtype=torch.long, device=cols.device)
        positions = torch.arange(m, device=cols.device)[:, None]
        for t in range(1, window + 1):
            joint = ranked[t:] - ranked[:-t]
            joint = joint * joint + ((values[t:] - values[:-t]) ** 2)[:, None]  # (m - t, b)
            for mine, theirs in ((slice(None, m - t), positions[t:]), (slice(t, None), positions[: m - t])):
                better = joint < best[mine]
                best[mine] = torch.where(better, joint, best[mine])
                best_at[mine] = torch.where(better, theirs, best_at[mine])
        out_best = torch.empty_like(best)
        out_at = torch.empty_like(best_at)
        out_best[order] = best
        out_at[order] = order[best_at]
        return out_best, out_at
    ranked = cols[order]  # (m, b) rows in S order
    best = np.full((m, b), np.inf)
    best_at = np.zeros((m, b), np.int64)
    joint = np.empty((m, b))
    better = np.empty((m, b), bool)
    positions = np.arange(m)[:, None]
    for t in range(1, window + 1):
        j = joint[: m - t]
        np.subtract(ranked[t:], ranked[:-t], out=j)
        np.multiply(j, j, out=j)
        np.add(j, ((values[t:] - values[:-t]) ** 2)[:, None], out=j)  # (m - t, b) pair (p, p + t)
        for mine, theirs in ((slice(None, m - t), positions[t:]), (slice(t, None), positions[: m - t])):
            flag = better[: m - t]
            np.less(j, best[mine], out=flag)
            np.minimum(best[mine], j, out=best[mine])
            np.copyto(best_at[mine], theirs, where=flag)
    out_best = np.empty_like(best)
    out_at = np.empty_like(best_at)
    out_best[order] = best
    out_at[order] = order[best_at]
    return out_best, out_at


def _cpu_workers() -> int:
    """Threads worth using now: this process's cores, or one when others keep them busy.

    On a shared machine whose load average already fills the cores, extra threads only
    wait for each other (measured: 1.5-4x slower); on an idle one they halve the time.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average
        busy = 0.0
    return cores if busy < cores - 0.5 else 1


def _dense_scan(cols, near, near_sq):
    """Best joint squared distance and its index over the listed S-neighbours, (m, b)."""
    m, b = cols.shape
    if isinstance(cols, torch.Tensor):
        best = torch.full_like(cols, torch.inf)
        best_at = torch.zeros((m, b), dtype=torch.long, device=cols.device)
        joint = torch.empty_like(cols)
        better = torch.empty((m, b), dtype=torch.bool, device=cols.device)
        for t in range(near.shape[1]):
            torch.index_select(cols, 0, near[:, t], out=joint)
            joint.sub_(cols).square_().add_(near_sq[:, t : t + 1])  # D_S(i,k) + (a(i)-a(k))^2
            torch.lt(joint, best, out=better)
            torch.minimum(best, joint, out=best)
            best_at = torch.where(better, near[:, t : t + 1], best_at)
        return best, best_at
    best = np.full((m, b), np.inf)
    best_at = np.zeros((m, b), np.int64)
    joint = np.empty((m, b))
    better = np.empty((m, b), bool)
    for t in range(near.shape[1]):
        np.take(cols, near[:, t], axis=0, out=joint)
        np.subtract(joint, cols, out=joint)
        np.multiply(joint, joint, out=joint)
        np.add(joint, near_sq[:, t : t + 1], out=joint)  # D_S(i,k) + (a(i)-a(k))^2
        np.less(joint, best, out=better)
        np.minimum(best, joint, out=best)
        np.copyto(best_at, near[:, t : t + 1], where=better)
    return best, best_at


def _scan_pairs(index, base, cols, best, best_at, rows: np.ndarray, cols_at: np.ndarray, scanned: np.ndarray) -> None:
    """Finish the (row, column) pairs the dense scan could not prove, in place.

    A pair (i, j) with best joint squared distance b can only improve on a point k
    with D_S(i, k) < b, and the dense scan already saw every k with D_S(i, k) below
    ``scanned[i]``. Per chunk of rows, the nearest points in S (enough for
    LIST_QUANTILE of the rows) are listed in D_S order: by the index itself when it
    can count and list near points cheaply (kd-tree, sort), else from exact D_S(i, .)
    against all m points (torch, faiss; one matrix per chunk on the GPU). The pairs
    then walk their lists in windows of doubling length; after each window a pair
    stays only while the next listed D_S is still below its (shrinking) b. A pair
    that walks off the end of a short list is scanned against all m points. Every
    candidate is seen; few are seen twice.
    """
    m = cols.shape[0]
    flat = cols.T.reshape(-1)  # (b * m,): column c's values at c * m ... (c + 1) * m - 1
    order = np.lexsort((cols_at, rows))  # by row, then column
    rows, cols_at = rows[order], cols_at[order]
    bound = _host(best[_like(rows, cols), _like(cols_at, cols)]) * (1 + ROUNDING_SLACK)  # (P,) b, slack up
    distinct, first_pair = np.unique(rows, return_index=True)
    reach = np.maximum.reduceat(bound, first_pair)  # (u,) largest b per row
    per_chunk = max(1, BLOCK_ELEMENTS // m)
    for start in range(0, distinct.size, per_chunk):
        chunk = distinct[start : start + per_chunk]
        counts = index.count_within(chunk, reach[start : start + chunk.size])  # (u,) most any pair needs
        sq = None
        if counts is None:
            sq = _sq_to_all(base, chunk)  # (u, m) exact D_S, inf at self, beside ``base``
            counts = _host((sq < _like(reach[start : start + chunk.size, None], sq)).sum(1))
        width = int(min(m - 1, max(1, np.quantile(counts, LIST_QUANTILE))))
        if sq is None:
            listed, listed_sq = index.query(width, chunk)  # (u, width), nearest in S first
        else:
            listed, listed_sq = _nearest_sorted(sq, width)
        seen = (listed_sq < (scanned[chunk] * (1 - ROUNDING_SLACK))[:, None]).sum(axis=1)  # dense-scanned prefix

        lo_pair = np.searchsorted(rows, chunk[0], side="left")
        hi_pair = np.searchsorted(rows, chunk[-1], side="right")
        pair_rows, pair_cols = rows[lo_pair:hi_pair], cols_at[lo_pair:hi_pair]
        slot = np.searchsorted(chunk, pair_rows)  # (p,) each pair's row in the chunk
        active = np.argsort(pair_cols, kind="stable")  # column order keeps reads local
        lo = int(seen.min())
        hi = min(width, max(2 * lo, lo + 16))
        while active.size and lo < width:
            for g in range(0, active.size, max(1, BLOCK_ELEMENTS // (hi - lo))):
                pick = active[g : g + max(1, BLOCK_ELEMENTS // (hi - lo))]
                _improve(flat, best, best_at, pair_rows[pick], pair_cols[pick], listed[slot[pick], lo:hi], listed_sq[slot[pick], lo:hi], m)
            if hi < width:
                current = _host(best[_like(pair_rows[active], cols), _like(pair_cols[active], cols)])
                active = active[listed_sq[slot[active], hi] < current * (1 + ROUNDING_SLACK)]
            lo, hi = hi, min(width, 2 * hi)

        # Pairs whose b still reaches past a list that is shorter than their row needs.
        if width < m - 1:
            current = _host(best[_like(pair_rows, cols), _like(pair_cols, cols)])
            beyond = np.flatnonzero(listed_sq[slot, -1] < current * (1 + ROUNDING_SLACK))
            for g in range(0, beyond.size, per_chunk):
                pick = beyond[g : g + per_chunk]
                every_sq = _sq_to_all(base, pair_rows[pick]) if sq is None else sq[_like(slot[pick], sq)]  # (q, m)
                if isinstance(every_sq, torch.Tensor):
                    every = _arange(m, every_sq)[None, :].expand(pick.size, m)
                else:
                    every = np.broadcast_to(np.arange(m), (pick.size, m))
                _improve(flat, best, best_at, pair_rows[pick], pair_cols[pick], every, every_sq, m)


def _nearest_sorted(sq, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sq`` (u, m): the ``width`` smallest, ascending, as host arrays."""
    if isinstance(sq, torch.Tensor):
        values, found = torch.topk(sq, width, dim=1, largest=False, sorted=True)
        return _host(found), _host(values)
    if width < sq.shape[1] - 1:
        found = np.argpartition(sq, width - 1, axis=1)[:, :width]
    else:
        found = np.argsort(sq, axis=1)[:, :width]
    values = np.take_along_axis(sq, found, 1)
    order = np.argsort(values, axis=1, kind="stable")
    return np.take_along_axis(found, order, 1), np.take_along_axis(values, order, 1)


def _improve(flat, best, best_at, r, c, k, k_sq, m) -> None:
    """best/best_at[r, c] <- the nearest of points k (q, s) if nearer, k_sq = D_S(r, k)."""
    r_d, c_d = _like(r, flat), _like(c, flat)
    k = _like(k, flat)  # (q, s) on the device of ``flat`` (a view stays a view on the CPU)
    joint = flat[k + _like(c * m, flat)[:, None]] - flat[c_d * m + r_d][:, None]
    joint = joint * joint + _like(k_sq, flat)  # D_S + (a(i) - a(k))^2, (q, s)
    value, at = _min_rows(joint)
    current = best[r_d, c_d]
    better = value < current
    chosen = k[_arange(r.size, flat), at]
    best[r_d, c_d] = _where(better, value, current)
    best_at[r_d, c_d] = _where(better, chosen, best_at[r_d, c_d])


def _sq_to_all(base, rows: np.ndarray):
    """Exact squared distances from ``base[rows]`` to every point, (u, m), inf at self."""
    if isinstance(base, torch.Tensor):
        r = torch.as_tensor(rows, device=base.device)
        sq = torch.zeros((rows.size, base.shape[0]), dtype=base.dtype, device=base.device)
        for c in range(base.shape[1]):
            diff = base[r, c][:, None] - base[:, c][None, :]
            sq += diff * diff
        sq[torch.arange(rows.size, device=base.device), r] = torch.inf
        return sq
    sq = np.zeros((rows.size, base.shape[0]))
    for c in range(base.shape[1]):
        diff = base[rows, c][:, None] - base[:, c][None, :]
        sq += diff * diff
    sq[np.arange(rows.size), rows] = np.inf
    return sq


# ============================================================== numpy / torch glue
# Arrays stay numpy on the CPU (numpy's single-threaded kernels beat torch's threaded
# ones for these memory-bound loops on a few busy cores) and torch on CUDA.
def _host(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _like(array, reference):
    """A host array (or a tensor) moved to wherever ``reference`` lives."""
    if isinstance(array, torch.Tensor):
        return array.to(reference.device) if isinstance(reference, torch.Tensor) else array.cpu().numpy()
    if isinstance(reference, torch.Tensor):
        array = np.ascontiguousarray(array)
        return torch.as_tensor(array if array.flags.writeable else array.copy(), device=reference.device)
    return array


def _empty_index(shape, reference):
    if isinstance(reference, torch.Tensor):
        return torch.empty(shape, dtype=torch.long, device=reference.device)
    return np.empty(shape, np.int64)


def _full_index(shape, value: int, reference):
    if isinstance(reference, torch.Tensor):
        return torch.full(shape, value, dtype=torch.long, device=reference.device)
    return np.full(shape, value, np.int64)


def _arange(n: int, reference):
    return torch.arange(n, device=reference.device) if isinstance(reference, torch.Tensor) else np.arange(n)


def _concat(parts, axis: int = 0):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def _where(condition, a, b):
    if isinstance(condition, torch.Tensor):
        device = condition.device
        return torch.where(condition, torch.as_tensor(a, device=device), torch.as_tensor(b, device=device))
    return np.where(condition, a, b)


def _nonzero(mask):
    return torch.nonzero(mask, as_tuple=True) if isinstance(mask, torch.Tensor) else np.nonzero(mask)


def _min_rows(array):
    """(min, first argmin) along axis 1."""
    if isinstance(array, torch.Tensor):
        at = torch.argmin(array, dim=1)
        return array.gather(1, at[:, None])[:, 0], at
    at = np.argmin(array, axis=1)
    return array[np.arange(array.shape[0]), at], at
