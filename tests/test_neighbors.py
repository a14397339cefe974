"""Exact float64 nearest neighbours: every backend against an O(m^2) brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lcodec_core.dependence.candidate_pruning as candidate_pruning
import lcodec_core.dependence.column_search as column_search
import lcodec_core.dependence.neighbor_index as neighbor_index
from lcodec_core.dependence.candidate_pruning import best_extra_column
from lcodec_core.dependence.column_search import nearest_in_each_column, nearest_with_extra_column
from lcodec_core.dependence.neighbor_index import NeighborIndex, choose_backend, nearest_neighbor

SEARCHES = ["kdtree", "faiss", "torch"]


def brute_knn(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest others by float64 sum of squared coordinate differences."""
    points = points.reshape(points.shape[0], -1)
    diff = points[:, None, :] - points[None, :, :]
    sq = np.einsum("ijd,ijd->ij", diff, diff)
    np.fill_diagonal(sq, np.inf)
    order = np.argsort(sq, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sq, order, 1)


def continuous(m: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, d))


def duplicated(m: int, d: int, seed: int, relative_jitter: float = 1e-7) -> np.ndarray:
    """Few distinct values, each repeated, then separated by a jitter of given relative size."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 3, (m, d)).astype(np.float64) * 10.0 + 100.0
    return points + rng.standard_normal(points.shape) * relative_jitter * 100.0


@pytest.mark.parametrize("backend", SEARCHES)
@pytest.mark.parametrize(("m", "d"), [(2, 2), (7, 3), (300, 2), (500, 5), (400, 12)])
def test_backends_match_brute_force_on_continuous_data(backend, m, d):
    points = continuous(m, d, seed=m + d)
    k = min(3, m - 1)
    want_idx, want_sq = brute_knn(points, k)
    got_idx, got_sq = NeighborIndex(points, backend=backend).query(k)
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_allclose(got_sq, want_sq, rtol=1e-12, atol=0)


@pytest.mark.parametrize("m", [2, 5, 200])
def test_sort_backend_matches_brute_force_in_one_dimension(m):
    points = continuous(m, 1, seed=m)
    k = min(4, m - 1)
    want_idx, want_sq = brute_knn(points, k)
    for given in (points, points[:, 0]):
        got_idx, got_sq = NeighborIndex(given, backend="sort").query(k)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_allclose(got_sq, want_sq, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", SEARCHES)
def test_a_jitter_of_1e7_relative_is_resolved(backend):
    """Near-duplicates 1e-7 apart (relative): float32 cannot see them; the search must."""
    points = duplicated(1500, 3, seed=1)
    want_idx, _ = brute_knn(points, 1)
    got = nearest_neighbor(points, backend=backend)
    np.testing.assert_array_equal(got, want_idx[:, 0])


def test_plain_float32_search_fails_where_the_faiss_backend_is_exact():
    """The defect the float64 re-check exists for: a float32 flat index mis-orders jitter."""
    import faiss

    points = duplicated(1500, 3, seed=2)
    index = faiss.IndexFlatL2(3)
    index.add(points.astype(np.float32))
    _, found = index.search(points.astype(np.float32), 2)
    naive = np.where(found[:, 0] == np.arange(len(points)), found[:, 1], found[:, 0])
    truth = brute_knn(points, 1)[0][:, 0]
    assert (naive != truth).mean() > 0.2
    np.testing.assert_array_equal(nearest_neighbor(points, backend="faiss"), truth)


@pytest.mark.parametrize("backend", ["sort", *SEARCHES])
def test_self_is_dropped_by_index_among_exact_duplicates(backend):
    points = np.repeat(np.array([[0.0], [1.0], [5.0]]), 4, axis=0)
    found = nearest_neighbor(points, backend=backend)
    assert (found != np.arange(len(points))).all()
    np.testing.assert_array_equal(points[found], points)  # a duplicate, at distance 0


@pytest.mark.parametrize("backend", SEARCHES)
def test_query_of_some_rows_and_larger_k(backend):
    points = continuous(120, 4, seed=3)
    rows = np.array([5, 0, 119, 5])
    want_idx, want_sq = brute_knn(points, 119)
    got_idx, got_sq = NeighborIndex(points, backend=backend).query(119, rows)
    np.testing.assert_array_equal(got_idx, want_idx[rows])
    np.testing.assert_allclose(got_sq, want_sq[rows], rtol=1e-12)


def test_torch_tensor_input_gives_the_same_answer():
    points = continuous(200, 3, seed=4)
    expected = nearest_neighbor(points, backend="kdtree")
    for backend in ("auto", "torch", "kdtree"):
        np.testing.assert_array_equal(nearest_neighbor(torch.from_numpy(points), backend=backend), expected)


def test_auto_picks_by_dimension_and_size():
    assert choose_backend(10**6, 1) == "sort"
    assert choose_backend(10**5, 4) == "kdtree"
    assert choose_backend(1000, 30) == "torch"
    assert choose_backend(10**5, 30) == "faiss"
    assert NeighborIndex(continuous(50, 1, 0)).backend == "sort"
    assert NeighborIndex(continuous(50, 3, 0)).backend == "kdtree"


def test_bad_arguments_raise_value_errors_that_say_what_is_wrong():
    with pytest.raises(ValueError, match="backend must be one of"):
        NeighborIndex(continuous(5, 2, 0), backend="annoy")
    with pytest.raises(ValueError, match="'sort' needs 1-D"):
        NeighborIndex(continuous(5, 2, 0), backend="sort")
    with pytest.raises(ValueError, match="at least 2 rows"):
        NeighborIndex(continuous(1, 2, 0))
    with pytest.raises(ValueError, match="k must be in"):
        NeighborIndex(continuous(5, 2, 0)).query(5)


def test_nearest_in_each_column_is_the_one_dimensional_search():
    columns = np.concatenate([continuous(300, 6, seed=5), duplicated(300, 2, seed=6)], axis=1)
    found = nearest_in_each_column(columns)
    for j in range(columns.shape[1]):
        np.testing.assert_array_equal(found[:, j], nearest_neighbor(columns[:, j], backend="sort"))
        np.testing.assert_array_equal(found[:, j], brute_knn(columns[:, j], 1)[0][:, 0])


def _per_column_truth(base: np.ndarray, columns: np.ndarray) -> np.ndarray:
    return np.stack(
        [brute_knn(np.column_stack([base, columns[:, j]]), 1)[0][:, 0] for j in range(columns.shape[1])], axis=1
    )


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("first_scan", [2, 8, 64])
def test_extra_column_search_equals_one_exact_search_per_column(dim, first_scan):
    data = continuous(250, dim + 12, seed=dim * 10 + first_scan)
    base, columns = data[:, :dim], data[:, dim:]
    found = nearest_with_extra_column(NeighborIndex(base), columns, first_scan=first_scan)
    np.testing.assert_array_equal(found, _per_column_truth(base, columns))


def test_extra_column_search_with_every_pair_past_its_list(monkeypatch):
    """Short lists force the last resort (every point) for many pairs."""
    monkeypatch.setattr(column_search, "LIST_QUANTILE", 0.0)
    data = continuous(200, 10, seed=7)
    base, columns = data[:, :2], data[:, 2:]
    found = nearest_with_extra_column(NeighborIndex(base), columns, first_scan=2)
    np.testing.assert_array_equal(found, _per_column_truth(base, columns))


@pytest.mark.parametrize("backend", ["kdtree", "torch", "faiss"])
def test_extra_column_search_on_near_duplicates(backend):
    data = duplicated(300, 8, seed=8)
    base, columns = data[:, :2], data[:, 2:]
    found = nearest_with_extra_column(NeighborIndex(base, backend=backend), columns, first_scan=8)
    np.testing.assert_array_equal(found, _per_column_truth(base, columns))


def test_the_torch_code_path_of_the_column_searches_matches_numpy():
    """What runs on CUDA, run on CPU tensors: the same neighbours."""
    data = continuous(220, 14, seed=9)
    for dim in (1, 3):
        base, columns = data[:, :dim], data[:, dim:]
        want = nearest_with_extra_column(NeighborIndex(base), columns, first_scan=4)
        got = nearest_with_extra_column(NeighborIndex(torch.from_numpy(base)), torch.from_numpy(columns), first_scan=4)
        np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(nearest_in_each_column(torch.from_numpy(data)).numpy(), nearest_in_each_column(data))


@pytest.mark.parametrize("list_quantile", [0.9, 0.0])
def test_the_gpu_listing_path_of_unproven_pairs_matches_numpy(list_quantile, monkeypatch):
    """With a "torch" index (as on CUDA) unproven pairs are listed from full D_S rows."""
    monkeypatch.setattr(column_search, "LIST_QUANTILE", list_quantile)
    data = continuous(200, 10, seed=11)
    base, columns = data[:, :2], data[:, 2:]
    index = NeighborIndex(torch.from_numpy(base), backend="torch")
    got = nearest_with_extra_column(index, torch.from_numpy(columns), first_scan=2)
    np.testing.assert_array_equal(got.numpy(), _per_column_truth(base, columns))


def test_the_faiss_gpu_path_logic_with_a_cpu_stand_in(monkeypatch):
    """faiss-gpu caps k at 2048; rows it cannot prove go to the float64 product search."""
    import faiss

    monkeypatch.setattr(neighbor_index, "FAISS_GPU_MAX_K", 24)
    monkeypatch.setattr(NeighborIndex, "_wants_faiss_gpu", lambda self: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: None, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatL2", lambda resources, dim: faiss.IndexFlatL2(dim), raising=False)
    points = duplicated(600, 3, seed=10)  # groups of ~22 near-duplicates: many rows need > 24 candidates
    index = NeighborIndex(points, backend="faiss")
    assert index._faiss_gpu
    np.testing.assert_array_equal(index.query(1)[0][:, 0], brute_knn(points, 1)[0][:, 0])


@pytest.mark.parametrize("dim", [1, 2, 4])
@pytest.mark.parametrize("levels", [(0.5,), (0.125, 0.25, 0.5)])
def test_the_pruned_step_winner_equals_scoring_every_candidate(dim, levels, monkeypatch):
    """best_extra_column drops columns by upper bounds; the winner and its sum must not move.

    Columns 3..5 copy column 2 exactly (equal sums: the lowest position must win), column 2
    carries y, the rest are noise; one lead column only, so most columns are judged by bounds.
    """
    monkeypatch.setattr(candidate_pruning, "SCAN_LEVELS", levels)
    monkeypatch.setattr(candidate_pruning, "LEAD_COLUMNS", 1)
    rng = np.random.default_rng(dim)
    m = 400
    points = rng.standard_normal((m, dim + 60))
    points[:, dim + 3 : dim + 6] = points[:, dim + 2 : dim + 3]
    y = points[:, :dim].sum(1) + 2 * np.sin(2 * points[:, dim + 2]) + 0.1 * rng.standard_normal(m)
    rank = np.searchsorted(np.sort(y), y, side="right").astype(np.int64)
    index = NeighborIndex(points[:, :dim])
    candidates = np.arange(dim, points.shape[1])
    for first_scan in (4, 16, 64):
        found = nearest_with_extra_column(index, points[:, candidates], first_scan=first_scan)
        sums = np.minimum(rank[:, None], rank[found]).sum(0)
        lead = rng.permutation(candidates.size).astype(np.float64)  # a poor guess must not matter
        position, total, estimates = best_extra_column(index, points, candidates, rank, first_scan=first_scan, lead=lead)
        assert (position, total) == (int(np.argmax(sums)), int(sums.max())) == (2, int(sums[2]))
        assert estimates.shape == sums.shape and estimates[position] == total
