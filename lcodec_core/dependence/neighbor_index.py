"""The nearest-neighbour search index: exact neighbours in float64, self excluded by index.

This module is one class with four interchangeable backends and the exactness argument
they share (float32 or matrix-product candidates, then a float64 re-check with a proven
rounding bound); it runs past 400 lines because splitting the backends apart would
separate each one from the bound that makes it exact.

CODEC needs, for every point, its nearest other point (Azadkia & Chatterjee 2021).
Ties between equidistant points are broken upstream by a tiny Gaussian jitter (see
``codec.jitter``), which is only useful if the search resolves distances at that
scale: a jitter of 1e-7 relative to the data is invisible to float32 all-pairs
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

L-FOCI's search of many extra columns at once, built on this index, is
``column_search``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .arrays import BLOCK_ELEMENTS, cpu_workers

__all__ = [
    "BACKENDS",
    "NeighborIndex",
    "choose_backend",
    "faiss_gpu_available",
    "nearest_neighbor",
]

BACKENDS = ("auto", "sort", "kdtree", "faiss", "torch")
KDTREE_MAX_DIM = 10  # cKDTree beats brute force up to about this dimension
BRUTE_MAX_POINTS = 4096  # below this, exact float64 all-pairs is cheap enough
GPU_BLOCK_ELEMENTS = 1 << 26  # BLOCK_ELEMENTS for all-pairs blocks on a GPU: 512 MiB in float64
CANDIDATE_EXTRA = 16  # candidates fetched beyond k before the float64 re-check
FAISS_GPU_MAX_K = 2048  # faiss GPU indexes refuse larger k
FLOAT32_UNIT = 2.0**-24  # unit roundoff of float32
FLOAT64_UNIT = 2.0**-53  # unit roundoff of float64
PARALLEL_QUERY_MIN = 1 << 13  # kd-tree queries (rows x k) worth spreading over threads
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
        workers = cpu_workers() if order.size * (k + 1) >= PARALLEL_QUERY_MIN else 1  # threads cost ~1 ms to start
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
