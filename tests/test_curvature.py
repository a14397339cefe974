"""Block curvature (lcodec_core/unlearning/curvature.py) and the per-sample gradients it is built from,
against dense linear algebra and per-row autograd.

- FisherCurvature: (G^T G / N + (lam + mu) I)^-1 b, by Woodbury when N <= p and by the
  p x p eigendecomposition when N > p;
- ExplicitCurvature: (H + mu I)^-1 b, and LinAlgError when H + mu I is not positive definite;
- ConjugateGradientCurvature: agrees with the explicit solve on a small SPD matrix;
- curvature_effect: a step the curvature did not shape has angle 0 and norm ratio 1;
- BlockObjective.per_sample_gradients: row i is the autograd gradient of row i's loss, and
  their mean is grad f(v) - lam v.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lcodec_core.unlearning.block import BlockObjective
from lcodec_core.unlearning.curvature import (ConjugateGradientCurvature, ExplicitCurvature, FisherCurvature,
                                   curvature_effect)
from lcodec_core.unlearning.slices import enumerate_slices, slice_parameter_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def dense_fisher_solve(gradients: torch.Tensor, lam: float, mu: float, b: torch.Tensor) -> torch.Tensor:
    g = gradients.double()
    matrix = g.T @ g / len(g) + (lam + mu) * torch.eye(g.shape[1], dtype=torch.float64)
    return torch.linalg.solve(matrix, b.double())


def random_spd(p: int, seed: int, smallest: float = 0.1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=generator, dtype=torch.float64)
    return a @ a.T / p + smallest * torch.eye(p, dtype=torch.float64)


# ---------------------------------------------------------------- Fisher
@pytest.mark.parametrize("rows, p", [(3, 8), (8, 8), (20, 6)], ids=["woodbury", "square", "primal"])
@pytest.mark.parametrize("mu", [0.0, 0.3, 5.0])
def test_fisher_solve_equals_the_dense_solve(rows, p, mu):
    generator = torch.Generator().manual_seed(rows * 100 + p)
    gradients = torch.randn(rows, p, generator=generator)
    b = torch.randn(p, generator=generator)
    lam = 0.05
    curvature = FisherCurvature(gradients, lam)
    assert curvature.kind == "fisher" and curvature.size == p and curvature.rows == rows
    assert curvature._dual == (rows <= p)          # the branch this case is meant to exercise
    got = curvature.solve(b, mu)
    assert got.dtype == torch.float64 and got.shape == (p,)
    torch.testing.assert_close(got, dense_fisher_solve(gradients, lam, mu, b), rtol=1e-9, atol=1e-12)


def test_fisher_reports_its_spectrum_and_mean_gradient():
    generator = torch.Generator().manual_seed(1)
    gradients = torch.randn(5, 7, generator=generator)
    lam = 0.1
    curvature = FisherCurvature(gradients, lam)
    dense = gradients.double().T @ gradients.double() / 5 + lam * torch.eye(7, dtype=torch.float64)
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert curvature.largest_eigenvalue == pytest.approx(float(eigenvalues[-1]), rel=1e-10)
    assert curvature.smallest_eigenvalue == lam        # rank 5 < p = 7: exactly lam
    assert float(eigenvalues[0]) == pytest.approx(lam, rel=1e-9)
    torch.testing.assert_close(curvature.mean_gradient, gradients.double().mean(0))


def test_fisher_with_zero_gradients_is_the_plain_scaled_step():
    """No curvature (every per-sample gradient 0): the solve is b / (lam + mu)."""
    b = torch.tensor([1.0, -2.0, 0.5])
    for rows in (2, 5):                            # both branches
        curvature = FisherCurvature(torch.zeros(rows, 3), 0.25)
        torch.testing.assert_close(curvature.solve(b, 0.75), b.double() / 1.0)


# ---------------------------------------------------------------- explicit
@pytest.mark.parametrize("mu", [0.0, 0.01, 2.0])
def test_explicit_solve_equals_the_dense_solve(mu):
    hessian = random_spd(6, seed=2)
    b = torch.randn(6, generator=torch.Generator().manual_seed(3))
    curvature = ExplicitCurvature(hessian, weight_decay=0.1)
    expected = torch.linalg.solve(hessian + mu * torch.eye(6, dtype=torch.float64), b.double())
    torch.testing.assert_close(curvature.solve(b, mu), expected, rtol=1e-9, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert curvature.smallest_eigenvalue == pytest.approx(float(eigenvalues[0]), rel=1e-10)
    assert curvature.largest_eigenvalue == pytest.approx(float(eigenvalues[-1]), rel=1e-10)


def test_explicit_solve_refuses_an_indefinite_shift():
    """H = diag(-1, 2, 3): H + mu I is indefinite for mu <= 1, positive definite above."""
    hessian = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
    curvature = ExplicitCurvature(hessian, weight_decay=0.01)
    assert curvature.smallest_eigenvalue == -1.0
    b = torch.tensor([1.0, 1.0, 1.0])
    for mu in (0.0, 0.5, 1.0):
        with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
            curvature.solve(b, mu)
    torch.testing.assert_close(curvature.solve(b, 3.0),
                               torch.tensor([1 / 2, 1 / 5, 1 / 6], dtype=torch.float64))


# ---------------------------------------------------------------- conjugate gradient
@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_conjugate_gradient_agrees_with_the_explicit_solve(mu):
    p = 8
    hessian = random_spd(p, seed=4, smallest=0.5)
    b = torch.randn(p, generator=torch.Generator().manual_seed(5))
    matrix32 = hessian.float()
    cg = ConjugateGradientCurvature(lambda u: matrix32 @ u, p, weight_decay=0.5, iterations=50,
                                    tolerance=1e-7)
    explicit = ExplicitCurvature(hessian, weight_decay=0.5)
    got = cg.solve(b, mu)
    assert got.dtype == torch.float64 and not cg.negative_curvature
    torch.testing.assert_close(got, explicit.solve(b, mu), rtol=1e-4, atol=1e-5)


def test_conjugate_gradient_flags_negative_curvature():
    hessian = torch.diag(torch.tensor([-1.0, 2.0, 3.0]))
    cg = ConjugateGradientCurvature(lambda u: hessian @ u, 3, weight_decay=0.01, iterations=10,
                                    tolerance=1e-8)
    cg.solve(torch.tensor([1.0, 0.0, 0.0]), 0.0)
    assert cg.negative_curvature


# ---------------------------------------------------------------- curvature effect
def test_curvature_effect_without_curvature_is_angle_zero_ratio_one():
    b = torch.tensor([3.0, -1.0, 2.0, 0.5])
    lam, mu = 0.02, 0.3
    step = FisherCurvature(torch.zeros(6, 4), lam).solve(b, mu)     # curvature term G^T G / N = 0
    effect = curvature_effect(step, b, lam, mu)
    assert effect["angle_deg"] == pytest.approx(0.0, abs=1e-5)
    assert effect["norm_ratio"] == pytest.approx(1.0, rel=1e-12)


def test_curvature_effect_measures_a_turned_and_shrunk_step():
    """H = diag(1, 3) + lam I, b = (1, 1), mu = 0: d = (1/(1+lam), 1/(3+lam)) against b / lam."""
    lam = 1e-3
    b = torch.tensor([1.0, 1.0])
    step = ExplicitCurvature(torch.diag(torch.tensor([1 + lam, 3 + lam], dtype=torch.float64)),
                             lam).solve(b, 0.0)
    effect = curvature_effect(step, b, lam, 0.0)
    d = [1 / (1 + lam), 1 / (3 + lam)]
    expected_angle = math.degrees(math.acos((d[0] + d[1]) / (math.hypot(*d) * math.sqrt(2))))
    assert effect["angle_deg"] == pytest.approx(expected_angle, rel=1e-9)
    assert effect["norm_ratio"] == pytest.approx(math.hypot(*d) / (math.sqrt(2) / lam), rel=1e-9)


def test_curvature_effect_of_a_zero_step():
    effect = curvature_effect(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]), 0.1, 0.0)
    assert effect == {"angle_deg": 0.0, "norm_ratio": 0.0}


# ---------------------------------------------------------------- per-sample gradients
class TinyNet(nn.Module):
    """(B, 1, 4, 4) -> flatten (16) -> fc1 (5) -> tanh -> fc2 (3)."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(self.flatten(x))))


@pytest.fixture(scope="module")
def block_problem():
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(9, 1, 4, 4, generator=generator, dtype=torch.float64)
    targets = torch.arange(9) % 3
    slices = [s for s in enumerate_slices(model) if (s.module, s.index) in {("fc1", 1), ("fc1", 4), ("fc2", 2)}]
    rows = slice_parameter_rows(model, slices)
    objective = BlockObjective(model, rows, images, targets, weight_decay=0.05, batch_size=4)
    return model, rows, images, targets, objective


def autograd_row_gradient(model, rows, v, image, target):
    """grad_v CE(model_{w(v)}(x), y) for one row, by plain autograd on a copy of the model."""
    names = sorted(rows)
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    leaf = v.detach().clone().requires_grad_(True)
    offset = 0
    for name in names:
        shape = (len(rows[name]),) + tuple(params[name].shape[1:])
        size = math.prod(shape)
        params[name] = params[name].index_put((torch.tensor(rows[name]),),
                                              leaf[offset:offset + size].reshape(shape))
        offset += size
    logits = torch.func.functional_call(model, params, (image.unsqueeze(0),))
    return torch.autograd.grad(F.cross_entropy(logits, target.view(1)), leaf)[0]


def test_per_sample_gradients_equal_per_row_autograd(block_problem):
    model, rows, images, targets, objective = block_problem
    v = objective.v0 + 0.1 * torch.randn(objective.size, generator=torch.Generator().manual_seed(1),
                                         dtype=torch.float64)
    gradients = objective.per_sample_gradients(v, chunk=4)          # 9 rows in chunks of 4
    assert gradients.shape == (9, objective.size) == (9, 2 * 17 + 6)
    for i in range(9):
        torch.testing.assert_close(gradients[i], autograd_row_gradient(model, rows, v, images[i], targets[i]),
                                   rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradients.mean(0), objective.gradient(v) - objective.weight_decay * v,
                               rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_of_other_images(block_problem):
    """Given boundary tensors and targets (the forget photos' path), the rows are theirs."""
    model, rows, _, _, objective = block_problem
    generator = torch.Generator().manual_seed(2)
    other = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    other_targets = torch.tensor([2, 0])
    gradients = objective.per_sample_gradients(objective.v0, objective.boundary_of(other), other_targets)
    for i in range(2):
        torch.testing.assert_close(gradients[i], autograd_row_gradient(model, rows, objective.v0, other[i],
                                                                       other_targets[i]),
                                   rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(objective.logits(objective.v0, objective.boundary_of(other)), model(other))


def test_per_sample_gradients_of_the_curvature_subsample(block_problem):
    model, rows, images, targets, _ = block_problem
    objective = BlockObjective(model, rows, images, targets, weight_decay=0.05, curvature_size=4, seed=3)
    gradients = objective.per_sample_gradients(objective.v0)
    assert gradients.shape == (4, objective.size)
    for row, i in enumerate(objective.curvature_rows.tolist()):
        torch.testing.assert_close(gradients[row], autograd_row_gradient(model, rows, objective.v0, images[i],
                                                                         targets[i]),
                                   rtol=1e-10, atol=1e-12)
