"""L-CODEC and L-FOCI against brute-force references and planted answers.

The references are written out in O(m^2) float64 from the formulas in
docs/ALGORITHM.md, section 1 (L-CODEC, the conditional dependence coefficient), with no
jitter and no shared work, so agreement checks
the ranks, the neighbour search, the integer sums and the batching at once.
"""

from __future__ import annotations

import math


import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lcodec_core.dependence.inputs as dependence_inputs
from lcodec_core.dependence import STOP_REASONS, FociResult, codec, foci
from lcodec_core.dependence.neighbor_index import nearest_neighbor
from lcodec_core.dependence.ranks import max_ranks

from lcodec_core.dependence import codec_estimator as codec_module  # noqa: E402
from lcodec_core.dependence import foci_search as foci_module  # noqa: E402


# ---------------------------------------------------------------- references
def reference_ranks(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    return (y[None, :] <= y[:, None]).sum(1), (y[None, :] >= y[:, None]).sum(1)


def squared_distances(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64).reshape(len(points), -1)
    diff = points[:, None, :] - points[None, :, :]
    sq = (diff * diff).sum(-1)
    np.fill_diagonal(sq, np.inf)
    return sq


def reference_codec(y, z, x=None) -> float:
    """T(Y, Z | X) or T(Y, Z), lowest-index neighbour (only right without ties)."""
    m = len(y)
    rank, rank_rev = reference_ranks(y)
    z = np.asarray(z, np.float64).reshape(m, -1)
    if x is None:
        joint = squared_distances(z).argmin(1)
        return (m * np.minimum(rank, rank[joint]) - rank_rev**2).sum() / (rank_rev * (m - rank_rev)).sum()
    x = np.asarray(x, np.float64).reshape(m, -1)
    near = squared_distances(x).argmin(1)
    joint = squared_distances(np.hstack([x, z])).argmin(1)
    base = np.minimum(rank, rank[near])
    return (np.minimum(rank, rank[joint]) - base).sum() / (rank - base).sum()


def expected_min_rank(rank: np.ndarray, points: np.ndarray) -> np.ndarray:
    """E[min(R_i, R_M(i))] with M(i) uniform among the tied nearest neighbours of i."""
    sq = squared_distances(points)
    tied = sq == sq.min(1, keepdims=True)
    return np.array([np.minimum(rank[i], rank[tied[i]]).mean() for i in range(len(rank))])


# ---------------------------------------------------------------- ranks
def test_max_ranks_count_ties_and_equal_the_quadratic_definition():
    y = np.array([3, 1, 3, 2, 3, 1])
    rank, rank_rev = max_ranks(y)
    np.testing.assert_array_equal(rank, [6, 2, 6, 3, 6, 2])
    np.testing.assert_array_equal(rank_rev, [3, 6, 3, 4, 3, 6])
    y = np.random.default_rng(0).integers(0, 7, 500).astype(np.float64)
    for got, want in zip(max_ranks(y), reference_ranks(y)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- codec, tie-free data
SHAPES = [(3, 0, 1), (8, 1, 1), (60, 0, 3), (120, 2, 1), (300, 1, 2), (400, 4, 1), (250, 12, 3)]


@pytest.mark.parametrize(("m", "dx", "dz"), SHAPES)
def test_codec_equals_the_brute_force_reference_on_tie_free_data(m, dx, dz):
    rng = np.random.default_rng(m * 7 + dx)
    z = rng.standard_normal((m, dz))
    x = rng.standard_normal((m, dx)) if dx else None
    y = z[:, 0] ** 2 + (x[:, 0] if dx else 0) + 0.5 * rng.standard_normal(m)
    got = codec(y, z, x, rng=1)
    assert abs(got - reference_codec(y, z, x)) <= 1e-12


@pytest.mark.parametrize("backend", ["kdtree", "faiss", "torch"])
def test_every_backend_gives_the_reference_value(backend):
    rng = np.random.default_rng(5)
    x, z = rng.standard_normal((300, 3)), rng.standard_normal((300, 2))
    y = np.sin(2 * z[:, 0]) + x[:, 1] + 0.3 * rng.standard_normal(300)
    assert abs(codec(y, z, x, backend=backend, rng=2) - reference_codec(y, z, x)) <= 1e-12
    assert abs(codec(y, z, backend=backend, rng=2) - reference_codec(y, z)) <= 1e-12
    assert abs(codec(y, z[:, 0], backend="sort", rng=2) - reference_codec(y, z[:, 0])) <= 1e-12


def test_one_dimensional_inputs_torch_tensors_and_no_mutation():
    rng = np.random.default_rng(6)
    x, z = rng.standard_normal(200), rng.standard_normal(200)
    y = z + x + 0.2 * rng.standard_normal(200)
    copies = [a.copy() for a in (y, z, x)]
    want = reference_codec(y, z, x)
    assert abs(codec(y, z, x, rng=0) - want) <= 1e-12
    as_tensors = [torch.from_numpy(a) for a in (y, z, x)]
    assert abs(codec(*as_tensors, rng=0) - want) <= 1e-12
    assert abs(codec(y.tolist(), z[:, None], x[:, None], rng=0) - want) <= 1e-12
    for before, after in zip(copies, (y, z, x)):
        np.testing.assert_array_equal(before, after)


def test_same_seed_same_value_on_tied_data():
    rng = np.random.default_rng(7)
    z = rng.integers(0, 3, (200, 2))
    y = rng.integers(0, 3, 200)
    assert codec(y, z, rng=11) == codec(y, z, rng=np.random.default_rng(11))


def test_jitter_stays_below_the_smallest_gap():
    points = np.array([[0.0, 10.0], [0.5, 10.0], [0.5, 10.25], [2.0, 13.0]])
    jittered = codec_module.jitter(points, np.random.default_rng(0), dims=2)
    noise = np.abs(jittered - points)
    assert 0 < noise.max() < 0.25 * 1e-2  # s = 1e-3 * 0.25 / sqrt(2), a few s at most


# ---------------------------------------------------------------- codec, tied data
def test_binary_y_equal_to_z_gives_one():
    y = np.random.default_rng(8).integers(0, 2, 1000)
    assert codec(y, y.astype(np.float64), rng=0) == 1.0
    x = 0.01 * np.random.default_rng(9).standard_normal(1000)  # x cannot separate the classes
    assert codec(y, y, x, rng=0) == 1.0


def test_tied_data_unconditional_mean_matches_uniform_tie_breaking():
    """Mean over jitter draws within 4 standard errors of the exact expectation."""
    rng = np.random.default_rng(10)
    m = 300
    z = rng.integers(0, 3, (m, 2)).astype(np.float64)  # 9 cells, every point has duplicates
    y = rng.integers(0, 4, m) + (z[:, 0] == 1)
    rank, rank_rev = reference_ranks(y)
    exact = (m * expected_min_rank(rank, z) - rank_rev**2).sum() / (rank_rev * (m - rank_rev)).sum()
    draws = np.array([codec(y, z, rng=seed) for seed in range(200)])
    standard_error = draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(draws.mean() - exact) <= 4 * standard_error
    lowest_index = reference_codec(y, z)  # what a library's lowest-index tie rule gives
    assert abs(lowest_index - exact) > 10 * standard_error


def test_tied_data_conditional_sums_match_uniform_tie_breaking():
    """Numerator and denominator are linear in the neighbour choices: their means are exact."""
    rng = np.random.default_rng(12)
    m = 270
    x = rng.integers(0, 3, (m, 1)).astype(np.float64)
    z = rng.integers(0, 3, (m, 1)).astype(np.float64)
    y = rng.integers(0, 5, m) + x[:, 0] + (z[:, 0] == 2)
    rank, _ = reference_ranks(y)
    near = expected_min_rank(rank, x)
    joint = expected_min_rank(rank, np.hstack([x, z]))
    exact = {"numerator": (joint - near).sum(), "denominator": (rank - near).sum()}
    draws = np.array(
        [codec_module._codec_terms(y, z, x, generator=np.random.default_rng(s), backend="auto") for s in range(200)],
        dtype=np.float64,
    )
    for column, name in enumerate(("numerator", "denominator")):
        standard_error = draws[:, column].std(ddof=1) / np.sqrt(len(draws))
        assert abs(draws[:, column].mean() - exact[name]) <= 4 * standard_error, name


# ---------------------------------------------------------------- codec, properties
@pytest.mark.parametrize("seed", range(3))
def test_independence_gives_about_zero(seed):
    rng = np.random.default_rng(100 + seed)
    m = 2000
    y, z, x = rng.standard_normal(m), rng.standard_normal((m, 2)), rng.standard_normal((m, 1))
    assert abs(codec(y, z, rng=seed)) <= 4 / np.sqrt(m)
    assert abs(codec(y + x[:, 0], z, x, rng=seed)) <= 4 / np.sqrt(m)


def test_y_a_function_of_z_gives_nearly_one():
    rng = np.random.default_rng(13)
    m = 1000
    z = rng.uniform(-2, 2, m)
    assert codec(np.sin(3 * z) + z**2, z, rng=0) > 0.9
    x = rng.uniform(-2, 2, (m, 1))
    assert codec(np.cos(2 * x[:, 0]) * z + z, z, x, rng=0) > 0.9


# ---------------------------------------------------------------- input validation
def test_codec_input_errors_name_the_input_and_the_reason():
    rng = np.random.default_rng(14)
    y, z = rng.standard_normal(10), rng.standard_normal(10)
    cases = [
        ((np.ones(10), z), r"y is constant"),
        ((y[:2], z[:2]), r"y has 2 rows; CODEC needs at least 3"),
        ((np.where(np.arange(10) == 3, np.nan, y), z), r"y contains NaN or infinite values \(first at row 3\)"),
        ((y, np.where(np.arange(10) == 4, np.inf, z)), r"z contains NaN or infinite values \(first in row 4\)"),
        ((y, z[:9]), r"z has 9 rows but y has 10"),
        ((y[:, None], z), r"y must have shape \(m,\)"),
        ((y, z[:, None, None]), r"z must have shape \(m,\) or \(m, d\)"),
        ((y, np.empty((10, 0))), r"z has no columns"),
        ((y, np.array(["a"] * 10)), r"z must hold real numbers"),
        ((y.astype(complex), z), r"y must hold real numbers"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            codec(*args)
    with pytest.raises(ValueError, match=r"x has 3 rows but y has 10"):
        codec(y, z, z[:3])
    with pytest.raises(ValueError, match=r"x contains NaN"):
        codec(y, z, np.full(10, np.nan))
    with pytest.raises(ValueError, match=r"backend must be one of"):
        codec(y, z, backend="annoy")
    with pytest.raises(ValueError, match=r"rng must be"):
        codec(y, z, rng="seed")
    with pytest.raises(ValueError, match=r"undefined \(0/0\)"):
        codec(np.repeat([0, 1], 50), z=np.arange(100.0), x=np.repeat([0.0, 10.0], 50))


def test_foci_input_errors_name_the_input_and_the_reason():
    rng = np.random.default_rng(15)
    y, features = rng.standard_normal(20), rng.standard_normal((20, 6))
    features[:, [2, 5]] = 3.0
    with pytest.raises(ValueError, match=r"features has 2 constant \(zero-variance\) column\(s\): \[2, 5\]"):
        foci(y, features)
    cases = [
        ((np.zeros(20), features), r"y is constant"),
        ((y, features[:, 0]), r"features must have shape \(m, D\)"),
        ((y, features[:19]), r"features has 19 rows but y has 20"),
        ((y, np.full((20, 2), np.inf)), r"features contains NaN or infinite values"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            foci(*args)
    good = rng.standard_normal((20, 3))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"max_features must be None or an int >= 1"):
            foci(y, good, max_features=bad)
    with pytest.raises(ValueError, match=r"'sort' handles only one dimension"):
        foci(y, good, backend="sort")


# ---------------------------------------------------------------- foci
def planted(m: int, irrelevant: int, seed: int, uniform: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Y = X1 X2 + sin(X1 X3): the Markov blanket is columns {0, 1, 2}."""
    rng = np.random.default_rng(seed)
    shape = (m, 3 + irrelevant)
    features = rng.uniform(0.0, 1.0, shape) if uniform else rng.standard_normal(shape)
    y = features[:, 0] * features[:, 1] + np.sin(features[:, 0] * features[:, 2])
    return y, features


def test_foci_recovers_a_planted_markov_blanket_in_at_least_9_of_10_seeds():
    """Exactly {0, 1, 2}, with features i.i.d. U(0, 1).

    With N(0, 1) features Y hardly depends on any single X_j (E[Y | X1] = 0), so
    T(Y, X1) is about 0.07 +- 0.025 at m = 2000, as large as the best of 50 independent
    columns: the exact estimator (equal to the brute-force reference) then starts with a
    wrong column in about a quarter of the seeds. U(0, 1) features keep a marginal signal.
    """
    found = 0
    for seed in range(10):
        y, features = planted(2000, 50, seed, uniform=True)
        result = foci(y, features, rng=seed)
        found += set(result.selected) == {0, 1, 2}
    assert found >= 9


def test_foci_result_record():
    y, features = planted(600, 10, seed=3)
    result = foci(y, features, rng=0)
    assert isinstance(result, FociResult)
    assert result.stopped_because in STOP_REASONS
    assert len(result.selected) == len(result.scores) == len(set(result.selected))
    assert all(score > 0 for score in result.scores)
    assert all(isinstance(j, int) for j in result.selected)
    with pytest.raises(AttributeError):
        result.selected = []  # frozen


def test_foci_selects_nothing_when_the_first_score_is_not_positive():
    """Each column pairs rank r with rank m + 1 - r, so every nearest neighbour has a far rank."""
    m = 40
    y = np.arange(1.0, m + 1)
    pairs = np.arange(m // 2)
    features = np.empty((m, 2))
    features[pairs, 0], features[m - 1 - pairs, 0] = 10.0 * pairs, 10.0 * pairs + 1
    features[pairs, 1], features[m - 1 - pairs, 1] = -5.0 * pairs, -5.0 * pairs + 0.5
    result = foci(y, features, rng=0)
    assert result.selected == [] and result.scores == []
    assert result.stopped_because == "first_score_nonpositive"


def test_foci_respects_max_features():
    y, features = planted(800, 20, seed=4)
    result = foci(y, features, max_features=2, rng=0)
    assert len(result.selected) == 2
    assert result.stopped_because == "max_features_reached"


def test_foci_stops_when_the_selection_determines_y():
    features = np.random.default_rng(16).standard_normal((300, 5))
    y = (features[:, 1] > 0).astype(np.int64)  # clusters apart in column 1 once selected
    features[:, 1] += np.where(y == 1, 20.0, -20.0)
    result = foci(y, features, rng=0)
    assert result.selected == [1] and result.scores == [1.0]
    assert result.stopped_because == "y_determined_by_selection"


def simple_loop(data, max_features=None) -> FociResult:
    """FOCI with one exact, independent neighbour search per candidate (the definition)."""
    rank, rank_rev, points = data
    m, n_features = points.shape

    def total(found):
        return int(np.minimum(rank, rank[found]).sum())

    sums = [total(nearest_neighbor(points[:, j], backend="sort")) for j in range(n_features)]
    best = int(np.argmax(sums))
    numerator = m * sums[best] - int((rank_rev * rank_rev).sum())
    if numerator <= 0:
        return FociResult([], [], "first_score_nonpositive")
    selected, scores = [best], [numerator / int((rank_rev * (m - rank_rev)).sum())]
    limit = max_features or n_features
    while len(selected) < limit:
        base = total(nearest_neighbor(points[:, selected], backend="kdtree"))
        denominator = int(rank.sum()) - base
        if denominator == 0:
            return FociResult(selected, scores, "y_determined_by_selection")
        candidates = [j for j in range(n_features) if j not in selected]
        sums = [total(nearest_neighbor(points[:, selected + [j]], backend="kdtree")) for j in candidates]
        best = int(np.argmax(sums))
        if sums[best] - base <= 0:
            return FociResult(selected, scores, "score_nonpositive")
        selected.append(candidates[best])
        scores.append((sums[best] - base) / denominator)
    return FociResult(selected, scores, "max_features_reached" if max_features else "all_features_selected")


@pytest.mark.parametrize(
    ("m", "irrelevant", "seed", "discrete", "max_features"),
    [(300, 30, 0, False, 6), (250, 25, 1, True, 5), (200, 8, 2, False, None), (400, 40, 3, True, 4)],
)
def test_batched_foci_equals_the_simple_loop(m, irrelevant, seed, discrete, max_features, monkeypatch):
    y, features = planted(m, irrelevant, seed, uniform=True)
    y = y + 0.1 * np.random.default_rng(seed).standard_normal(m)
    if discrete:  # ties: the jitter decides, identically in both
        features = np.round(features * 8) / 8
    if seed % 2:  # short first scans: the unproven-pair path does most of the work
        monkeypatch.setattr(foci_module, "FIRST_SCAN", {})
        monkeypatch.setattr(foci_module, "FIRST_SCAN_OTHERWISE", 2)
    got = foci(y, features, max_features=max_features, rng=seed)
    data = foci_module._prepare_foci(
        y, features, standardize=True, generator=np.random.default_rng(seed), max_features=max_features
    )
    want = simple_loop(data, max_features)
    assert got == want
    assert len(got.selected) >= 2


@pytest.mark.parametrize("backend", ["kdtree", "faiss", "torch"])
def test_foci_is_the_same_with_every_backend(backend):
    y, features = planted(300, 15, seed=5)
    assert foci(y, features, rng=1, backend=backend) == foci(y, features, rng=1)


def test_foci_accepts_torch_tensors_and_unstandardized_features():
    y, features = planted(300, 10, seed=6)
    assert foci(torch.from_numpy(y), torch.from_numpy(features), rng=2) == foci(y, features, rng=2)
    result = foci(y, features * np.arange(1, 14), standardize=False, rng=2)
    assert set(result.selected[:3]) == {0, 1, 2}


def test_the_torch_code_path_gives_the_same_results(monkeypatch):
    """The CUDA path (torch tensors throughout), run on the CPU, on tie-free data."""
    y, features = planted(300, 20, seed=7, uniform=True)
    rng = np.random.default_rng(8)
    x, z = rng.standard_normal((300, 2)), rng.standard_normal((300, 1))
    target = z[:, 0] + x[:, 0] + rng.standard_normal(300)
    want = (foci(y, features, rng=3), codec(target, z, x, rng=3), codec(target, z, rng=3))
    monkeypatch.setattr(dependence_inputs, "_TORCH_ON_CPU", True)
    monkeypatch.setattr(foci_module, "FIRST_SCAN", {})
    monkeypatch.setattr(foci_module, "FIRST_SCAN_OTHERWISE", 4)
    assert (foci(y, features, rng=3), codec(target, z, x, rng=3), codec(target, z, rng=3)) == want


# ---------------------------------------------------------------- hypothesis
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
moderate = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def codec_inputs(draw, elements=finite):
    m = draw(st.integers(3, 25))
    y = draw(hnp.arrays(np.float64, m, elements=elements))
    assume(not (y == y[0]).all())
    z = draw(hnp.arrays(np.float64, (m, draw(st.integers(1, 3))), elements=elements))
    x = draw(st.none() | hnp.arrays(np.float64, (m, draw(st.integers(1, 2))), elements=elements))
    return y, z, x


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec_inputs(), st.integers(0, 2**32 - 1))
def test_codec_never_crashes_on_finite_non_constant_input(inputs, seed):
    y, z, x = inputs
    try:
        value = codec(y, z, x, rng=seed)
    except ValueError as err:  # only the conditional 0/0, which is a property of the data
        assert x is not None and "undefined (0/0)" in str(err)
        return
    assert np.isfinite(value)
    if x is None:
        assert value <= 1.0 + 1e-12  # sum_i R_i = sum_i L_i, so the numerator <= the denominator


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.integers(3, 25).flatmap(lambda m: st.tuples(
    hnp.arrays(np.float64, m, elements=moderate),
    hnp.arrays(np.float64, (m, 2), elements=moderate, unique=True),
)))
def test_codec_unconditional_is_exact_without_tied_neighbours(inputs):
    y, z = inputs
    assume(not (y == y[0]).all())
    gaps = np.diff(np.sort(z, axis=0), axis=0)
    smallest_gap = gaps[gaps > 0].min()
    nearest_two = np.sqrt(np.sort(squared_distances(z), axis=1)[:, :2])
    assume((nearest_two[:, 1] - nearest_two[:, 0] > 0.1 * smallest_gap).all())  # no (near-)tied neighbours
    assert abs(codec(y, z, rng=0) - reference_codec(y, z)) <= 1e-12


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=finite | st.just(np.nan)),
        st.lists(st.text(max_size=2), max_size=4),
    ),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=finite | st.just(np.inf)),
)
def test_bad_inputs_raise_value_errors_only(y, z):
    """Whatever comes in, ``codec`` either raises ValueError with a message or returns a finite
    float, and it returns only for finite numeric input with at least 3 rows."""
    try:
        value = codec(y, z, rng=0)
    except ValueError as error:
        assert str(error)
        return
    assert isinstance(value, float) and math.isfinite(value)
    y_values, z_values = np.asarray(y, dtype=np.float64), np.asarray(z, dtype=np.float64)
    assert np.isfinite(y_values).all() and np.isfinite(z_values).all()
    assert y_values.size >= 3 and len(y_values) == len(z_values)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(4, 40), st.integers(1, 6), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_foci_on_random_small_problems_is_well_formed(m, n_features, seed, levels):
    rng = np.random.default_rng(seed)
    features = rng.integers(0, levels + 1, (m, n_features)).astype(np.float64) + rng.standard_normal((m, n_features)) * (levels == 4)
    y = rng.integers(0, 3, m).astype(np.float64)
    assume(not (y == y[0]).all() and (features != features[0]).any(axis=0).all())
    result = foci(y, features, max_features=3, rng=seed)
    assert len(result.selected) <= 3 and len(set(result.selected)) == len(result.selected)
    assert all(score > 0 for score in result.scores)
    assert result.stopped_because in STOP_REASONS
