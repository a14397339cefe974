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
``"torch"``  Blocked all-pairs ``torch.cdist`` in float64 with direct differences (no
             ``|a|^2 + |b|^2 - 2ab`` expansion, which cancels catastrophically for
             near-duplicates), on the points' device. Exact; used on CUDA.
``"auto"``   d = 1: sort. Else on CUDA: faiss-gpu if available, otherwise torch. Else
             (CPU): kdtree for d <= 10, torch for m <= 4096, faiss beyond.

The self-match is removed by index, never by position: with duplicate points the
query point need not come back first, so each backend asks for k + 1 neighbours and
drops the entry equal to the query's own index (or the last one if it is absent).
Among points at exactly equal float64 distance the order is unspecified; callers who
need random tie-breaking randomize the row order or jitter the data first.
"""

from __future__ import annotations

import numpy as np
import torch

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
BLOCK_ELEMENTS = 1 << 23  # elements per (rows, m) or (rows, m, d) block: 64 MiB in float64
FAISS_EXTRA = 16  # candidates fetched beyond k before the float64 re-check
FAISS_GPU_MAX_K = 2048  # faiss GPU indexes refuse larger k
FLOAT32_UNIT = 2.0**-24  # unit roundoff of float32


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
    Build once, query many times (the foci batching asks for growing k on subsets of
    rows). Results are always host numpy arrays.
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

    # ---------------------------------------------------------------- helpers
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
        _, found = self._tree.query(self.host[order], k=k + 1, workers=-1)
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
        self._faiss_gpu = self._device.type == "cuda" and faiss_gpu_available()
        if self._faiss_gpu:
            self._faiss_resources = faiss.StandardGpuResources()
            index = faiss.GpuIndexFlatL2(self._faiss_resources, self.dim)
        else:
            index = faiss.IndexFlatL2(self.dim)
        index.add(self._faiss_points)
        self._faiss_index = index

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
        fetch = min(m, k + 1 + FAISS_EXTRA)
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
            found[pending], sq[pending] = _exact_rows(torch.from_numpy(self.host), rows[pending], k)
        return found, sq

    # ---------------------------------------------------------------- torch
    def _build_torch(self) -> None:
        if self._tensor is None:
            self._tensor = torch.from_numpy(self._host)

    def _query_torch(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _exact_rows(self._tensor, rows, k)


def _exact_rows(points: torch.Tensor, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive float64 k-NN of ``points[rows]`` on the points' device, in row blocks.

    ``torch.cdist`` with ``donot_use_mm_for_euclid_dist`` sums squared coordinate
    differences directly; the k smallest of each block row are then re-measured as
    squared distances and sorted.
    """
    m, d = points.shape
    block = max(1, BLOCK_ELEMENTS // m)
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=points.device)
    out_found, out_sq = [], []
    for start in range(0, rows.size, block):
        r = rows_t[start : start + block]  # (b,)
        dist = torch.cdist(points[r], points, compute_mode="donot_use_mm_for_euclid_dist")  # (b, m)
        dist[torch.arange(r.numel(), device=points.device), r] = torch.inf
        _, found = torch.topk(dist, k, dim=1, largest=False, sorted=True)  # (b, k)
        diff = points[found] - points[r][:, None, :]  # (b, k, d)
        sq = (diff * diff).sum(-1)
        sq, order = torch.sort(sq, dim=1, stable=True)
        out_found.append(torch.gather(found, 1, order).cpu())
        out_sq.append(sq.cpu())
    return torch.cat(out_found).numpy(), torch.cat(out_sq).numpy()


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
