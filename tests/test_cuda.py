"""Checks that need a CUDA device: the GPU paths give the CPU's answers.

Every test here is skipped without CUDA. On a GPU machine, bench/device_check.sh installs
requirements-gpu.txt and runs this file first. The data are continuous (no tied
distances), where the CPU and GPU searches are both exact in float64 and so must agree
to the index: the jitter draws differ (numpy on the CPU, torch on CUDA), but it only
decides exact ties (docs/ALGORITHM.md, section 1 (L-CODEC, the conditional dependence
coefficient)).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lcodec_core.dependence import NeighborIndex, codec, faiss_gpu_available, foci

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: run bench/device_check.sh on a GPU machine"
)
needs_faiss_gpu = pytest.mark.skipif(
    not faiss_gpu_available(), reason="needs faiss with GPU indexes (faiss-gpu-cu12, requirements-gpu.txt)"
)


def planted(m: int, irrelevant: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y depends on columns 0..3 of U(0, 1) features; ``irrelevant`` noise columns follow."""
    features = np.random.default_rng(seed).uniform(0.0, 1.0, (m, 4 + irrelevant))
    y = features[:, 0] * features[:, 1] + np.sin(3 * features[:, 2]) + features[:, 3] ** 2
    return y + 0.05 * np.random.default_rng(seed + 1).standard_normal(m), features


def on_cuda(*arrays):
    return [torch.as_tensor(a, device="cuda") for a in arrays]


@pytest.mark.parametrize(("m", "irrelevant"), [(600, 60), (3000, 400)])
def test_cuda_foci_selects_what_the_cpu_selects(m, irrelevant):
    y, features = planted(m, irrelevant, seed=m)
    cpu = foci(y, features, max_features=6, rng=0)
    gpu = foci(*on_cuda(y, features), max_features=6, rng=0)
    assert gpu == cpu  # same columns, same scores (exact integer sums), same stop
    assert set(cpu.selected[:4]) == {0, 1, 2, 3}


def test_cuda_codec_equals_the_cpu_value():
    rng = np.random.default_rng(3)
    x, z = rng.standard_normal((5000, 3)), rng.standard_normal((5000, 1))
    y = np.sin(2 * z[:, 0]) + x[:, 0] * x[:, 1] + 0.3 * rng.standard_normal(5000)
    assert codec(*on_cuda(y, z, x), rng=0) == codec(y, z, x, rng=0)
    assert codec(*on_cuda(y, z), rng=0) == codec(y, z, rng=0)


@needs_faiss_gpu
@pytest.mark.parametrize(("m", "d", "k"), [(5000, 16, 1), (20_000, 32, 4)])
def test_faiss_gpu_neighbours_equal_the_cpu_search(m, d, k):
    points = np.random.default_rng(m + d).standard_normal((m, d))
    gpu_index = NeighborIndex(torch.as_tensor(points, device="cuda"), backend="faiss")
    assert gpu_index._faiss_gpu  # the GPU index, not a CPU fallback
    found, sq = gpu_index.query(k)
    want, want_sq = NeighborIndex(points, backend="torch").query(k)
    np.testing.assert_array_equal(found, want)
    np.testing.assert_allclose(sq, want_sq, rtol=1e-12, atol=0)  # summed in another order: rounding only


@needs_faiss_gpu
def test_faiss_gpu_resolves_near_duplicates_exactly():
    """Groups of points 1e-7 apart (relative): float32 alone cannot order them, the re-check must."""
    rng = np.random.default_rng(5)
    points = rng.integers(0, 3, (4000, 3)).astype(np.float64) * 10.0 + 100.0
    points += rng.standard_normal(points.shape) * 1e-5
    found = NeighborIndex(torch.as_tensor(points, device="cuda"), backend="faiss").query(1)[0]
    np.testing.assert_array_equal(found, NeighborIndex(points, backend="kdtree").query(1)[0])


def test_a_tiny_model_unlearns_on_cuda_as_on_the_cpu():
    """The same removal on CPU and on CUDA: the same slices selected, a finite CUDA model.

    float64 throughout, so that the probe's losses and activations agree to rounding and
    L-FOCI sees the same table on both devices (the probe's noise is drawn on the CPU).
    """
    from tiny import TinyNet, fit_adam, make_dataset  # noqa: PLC0415 - the tests' helper module

    from lcodec_core.unlearning.config import UnlearnConfig  # noqa: PLC0415
    from lcodec_core.unlearning.unlearn import unlearn  # noqa: PLC0415

    torch.manual_seed(0)
    data = make_dataset(30, dtype=torch.float64)
    model = fit_adam(TinyNet().double(), data, weight_decay=1e-2)
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    config = UnlearnConfig(method="lfoci", max_slices=4, num_perturbations=20, newton_steps=3)
    cpu = unlearn(model, forget, retain, config, weight_decay=1e-2)
    gpu = unlearn(copy.deepcopy(model).cuda(), forget, retain, config, weight_decay=1e-2)
    assert [(s.module, s.index) for s in gpu.selected_slices] == [(s.module, s.index) for s in cpu.selected_slices]
    assert gpu.selected_slices
    parameters = list(gpu.model.parameters())
    assert all(p.is_cuda for p in parameters)
    assert all(bool(torch.isfinite(p).all()) for p in parameters)
