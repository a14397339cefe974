"""The fx prefix/suffix split, the block objective and the Newton solvers, against answers
computed independently (hand-written forwards, torch.autograd.functional, scipy).

docs/ALGORITHM.md, section 4 (The retained objective on the block and the removal step): on
the block P the retained objective is
    f(v) = (1/N) sum_i CE(model_{w(v)}(x_i), y_i) + (lam/2)|v|^2,
w(v) = the trained weights with the block rows set to v. A Newton step solves
(H + mu I) d = b with b = -grad f(v) ("retain_gradient") or b = g_U ("forget_gradient").
Everything runs in float64 so the comparisons can be tight.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn
from torch.autograd.functional import hessian as autograd_hessian
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.nn import functional as F

from lcodec_core.unlearning.block import BlockObjective
from lcodec_core.unlearning.newton import block_newton, conjugate_gradient, solve_explicit
from lcodec_core.unlearning.slices import SliceRef, slice_parameter_rows
from lcodec_core.unlearning.suffix import split_model
from lcodec_models.zoo import MLP, LogisticRegression, SmallCNN

DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest



# ---------------------------------------------------------------- tiny models and data
class TinyMLP(nn.Module):
    """(B, 1, 2, 2) -> flatten (4) -> fc1 (5) -> tanh -> fc2 (3). Smooth, so H is defined."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4, 5)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flatten(x))))


class Untraceable(TinyMLP):
    """TinyMLP with data-dependent Python control flow: torch.fx cannot trace it."""

    def forward(self, x):
        h = self.act(self.fc1(self.flatten(x)))
        if float(h.detach().sum()) > 1e9:         # never true, but a Proxy cannot be converted to float
            h = h * 0
        return self.fc2(h)


def tiny_mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The TinyMLP written out by hand: (N, 1, 2, 2) -> (N, 3)."""
    h = torch.tanh(x.reshape(len(x), -1) @ params["fc1.weight"].T + params["fc1.bias"])
    return h @ params["fc2.weight"].T + params["fc2.bias"]


def pack(params: dict[str, torch.Tensor], rows: dict[str, list[int]]) -> torch.Tensor:
    """The block of ``params`` as a vector: parameters by sorted name, rows in order."""
    return torch.cat([params[name][rows[name]].reshape(-1) for name in sorted(rows)])


def with_block(params: dict[str, torch.Tensor], rows: dict[str, list[int]],
               v: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of ``params`` with the block rows replaced by ``v`` (differentiable in v)."""
    out, offset = dict(params), 0
    for name in sorted(rows):
        shape = (len(rows[name]),) + tuple(params[name].shape[1:])
        size = math.prod(shape)
        value = params[name].clone()
        value[rows[name]] = v[offset:offset + size].reshape(shape)
        out[name], offset = value, offset + size
    assert offset == len(v)
    return out


def reference_objective(forward, params, rows, x, y, lam):
    """f(v) written out plainly: full forward with the block replaced, mean CE + lam/2 |v|^2."""
    def f(v):
        logits = forward(with_block(params, rows, v), x)
        return F.cross_entropy(logits, y) + 0.5 * lam * v.pow(2).sum()
    return f


def make_data(n: int, seed: int, classes: int = 3, shift: float = 1.5):
    """(n, 1, 2, 2) float64 images whose mean depends on the class, and (n,) long targets."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, 1, 2, 2, generator=generator, dtype=DTYPE) * shift
    x = centres[y] + torch.randn(n, 1, 2, 2, generator=generator, dtype=DTYPE)
    return x, y


def detached(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------- suffix: exact split
def _check_split(model: nn.Module, x: torch.Tensor, modules: set[str]) -> None:
    split = split_model(model, modules)
    assert split.traced
    with torch.no_grad():
        out = split.suffix(*split.prefix(x))
        expected = model(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    block_params = {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in modules}
    assert block_params <= {n for n, _ in split.suffix.named_parameters()}
    assert not block_params & {n for n, _ in split.prefix.named_parameters()}


@pytest.mark.parametrize("modules", [{"conv1"}, {"conv2"}, {"conv3"}, {"fc"}, {"conv2", "fc"}])
def test_split_small_cnn_is_exact(modules):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5).eval()
    _check_split(model, torch.randn(3, 1, 64, 64), modules)


@pytest.mark.parametrize("modules", [{"fc1"}, {"fc2"}, {"fc1", "fc2"}])
def test_split_mlp_is_exact(modules):
    torch.manual_seed(0)
    model = MLP(num_classes=4, in_features=16, hidden=8).eval()
    _check_split(model, torch.randn(6, 1, 4, 4), modules)


def test_split_suffix_after_the_cut_skips_earlier_layers():
    model = SmallCNN(num_classes=5).eval()
    split = split_model(model, {"fc"})
    assert {n for n, _ in split.suffix.named_parameters()} == {"fc.weight", "fc.bias"}
    (boundary,) = split.prefix(torch.randn(2, 1, 64, 64))
    assert boundary.shape[0] == 2


def test_split_untraceable_model_falls_back_and_stays_exact():
    torch.manual_seed(0)
    model = Untraceable().double().eval()
    split = split_model(model, {"fc2"})
    assert split.traced is False
    x = torch.randn(4, 1, 2, 2, dtype=DTYPE)
    with torch.no_grad():
        assert torch.equal(split.suffix(*split.prefix(x)), model(x))


# ---------------------------------------------------------------- block objective
BLOCK = [SliceRef("fc1", 0, "linear"), SliceRef("fc1", 3, "linear"), SliceRef("fc2", 1, "linear")]


@pytest.fixture
def mlp_problem():
    torch.manual_seed(1)
    model = TinyMLP().double().eval()
    x, y = make_data(20, seed=2)
    rows = slice_parameter_rows(model, BLOCK)
    return model, rows, x, y


def test_block_layout_is_sorted_names_then_rows(mlp_problem):
    model, rows, x, y = mlp_problem
    objective = BlockObjective(model, rows, x, y, weight_decay=0.1)
    assert rows == {"fc1.weight": [0, 3], "fc1.bias": [0, 3], "fc2.weight": [1], "fc2.bias": [1]}
    assert objective.size == 2 * 4 + 2 + 5 + 1
    assert torch.equal(objective.v0, pack(detached(model), rows))


@pytest.mark.parametrize("model_cls", [TinyMLP, Untraceable])
def test_block_derivatives_match_autograd_reference(mlp_problem, model_cls):
    _, rows, x, y = mlp_problem
    torch.manual_seed(1)
    model = model_cls().double().eval()
    params, lam = detached(model), 0.1
    objective = BlockObjective(model, rows, x, y, weight_decay=lam, batch_size=7)  # 3 batches
    assert objective.split.traced is (model_cls is TinyMLP)
    f = reference_objective(tiny_mlp_forward, params, rows, x, y, lam)
    v = objective.v0 + 0.3 * torch.randn(objective.size, generator=torch.Generator().manual_seed(3),
                                         dtype=DTYPE)
    u = torch.randn(objective.size, generator=torch.Generator().manual_seed(4), dtype=DTYPE)

    grad_ref = autograd_jacobian(f, v)
    hess_ref = autograd_hessian(f, v)
    assert objective.loss(v) == pytest.approx(float(f(v)), rel=1e-12)
    torch.testing.assert_close(objective.gradient(v), grad_ref, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(objective.hvp(v, u), hess_ref @ u, rtol=1e-5, atol=1e-10)
    hessian = objective.hessian(v, chunk=4)                      # several chunks of basis vectors
    assert hessian.dtype == torch.float64 and hessian.shape == (objective.size,) * 2
    torch.testing.assert_close(hessian, hess_ref, rtol=1e-5, atol=1e-10)
    assert torch.equal(hessian, hessian.T)
    # nothing was written back into the model
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())


def test_hvp_without_kept_graphs_is_the_same_product(mlp_problem):
    """Over the graph budget, every product rebuilds one batch's graph at a time (bounded
    memory) and gives the same H u as the kept graphs."""
    model, rows, x, y = mlp_problem
    objective = BlockObjective(model, rows, x, y, weight_decay=0.1, batch_size=7)
    u = torch.randn(objective.size, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    kept, rebuilt = objective.hvp_operator(objective.v0), objective.hvp_operator(objective.v0, graph_budget=0)
    assert kept.keeps_graphs and not rebuilt.keeps_graphs
    torch.testing.assert_close(rebuilt(u), kept(u), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rebuilt(2 * u), 2 * kept(u), rtol=1e-12, atol=1e-14)


def test_curvature_subsample_uses_a_subset(mlp_problem):
    model, rows, x, y = mlp_problem
    lam = 0.1
    full = BlockObjective(model, rows, x, y, weight_decay=lam)
    sub = BlockObjective(model, rows, x, y, weight_decay=lam, curvature_size=6, seed=5)
    picked = sub.curvature_rows
    assert len(picked) == 6 and len(set(picked.tolist())) == 6
    assert 0 <= int(picked.min()) and int(picked.max()) < len(y)
    assert torch.equal(full.curvature_rows, torch.arange(len(y)))
    # same seed, same rows; another seed, (here) other rows
    assert torch.equal(BlockObjective(model, rows, x, y, lam, curvature_size=6, seed=5).curvature_rows,
                       picked)
    assert not torch.equal(BlockObjective(model, rows, x, y, lam, curvature_size=6,
                                          seed=6).curvature_rows, picked)

    v = full.v0
    f_sub = reference_objective(tiny_mlp_forward, detached(model), rows, x[picked], y[picked], lam)
    torch.testing.assert_close(sub.hessian(v), autograd_hessian(f_sub, v), rtol=1e-5, atol=1e-10)
    u = torch.ones_like(v)
    torch.testing.assert_close(sub.hvp(v, u), autograd_hessian(f_sub, v) @ u, rtol=1e-5, atol=1e-10)
    # loss and gradient still use every row
    assert sub.loss(v) == full.loss(v)
    torch.testing.assert_close(sub.gradient(v), full.gradient(v), rtol=0, atol=0)
    assert not torch.allclose(sub.hessian(v), full.hessian(v))


def test_empty_block_is_refused(mlp_problem):
    model, _, x, y = mlp_problem
    with pytest.raises(ValueError, match="empty"):
        BlockObjective(model, {}, x, y, weight_decay=0.1)


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.bn(self.conv(x))))


def test_objective_uses_eval_mode_and_leaves_buffers_untouched():
    """A model handed over in training mode: the objective is the eval-mode network (running
    statistics, not batch statistics) and the model's buffers are never written."""
    torch.manual_seed(0)
    model = BatchNormNet().double()
    with torch.no_grad():                          # non-trivial running statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.train()
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    x, y = make_data(12, seed=3)
    lam = 0.1
    rows = slice_parameter_rows(model, [SliceRef("conv", 1, "conv"), SliceRef("fc", 0, "linear")])
    objective = BlockObjective(model, rows, x, y, weight_decay=lam)
    v = objective.v0
    loss, hessian = objective.loss(v), objective.hessian(v)
    objective.gradient(v)
    objective.hvp(v, torch.ones_like(v))

    assert model.training                          # the caller's mode is restored
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), f"buffer {name} was modified"
    reference = BatchNormNet().double()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():
        expected = F.cross_entropy(reference(x), y) + 0.5 * lam * v.pow(2).sum()
    assert loss == pytest.approx(float(expected), rel=1e-12)
    eval_objective = BlockObjective(reference, rows, x, y, weight_decay=lam)
    torch.testing.assert_close(hessian, eval_objective.hessian(v), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- closed forms: logistic regression
LAM = 0.05


def logreg_forward(params, x):
    return x.reshape(len(x), -1) @ params["fc.weight"].T + params["fc.bias"]


@pytest.fixture(scope="module")
def logreg_problem():
    """Two overlapping classes in 4-d, a 2-class logistic regression at the *exact* optimum
    w* of F on all n = 40 samples, and a forget set U of the first k = 3 samples."""
    x, y = make_data(40, seed=7, classes=2, shift=1.0)
    model = LogisticRegression(num_classes=2, in_features=4).double().eval()
    params = detached(model)
    shapes = {k: v.shape for k, v in params.items()}
    names = sorted(params)

    def unflatten(w):
        out, offset = {}, 0
        for name in names:
            size = math.prod(shapes[name])
            out[name] = w[offset:offset + size].reshape(shapes[name])
            offset += size
        return out

    def full_objective(w_np):
        w = torch.tensor(w_np, dtype=DTYPE, requires_grad=True)
        value = F.cross_entropy(logreg_forward(unflatten(w), x), y) + 0.5 * LAM * w.pow(2).sum()
        value.backward()
        return float(value.detach()), w.grad.numpy()

    w0 = np.concatenate([params[n].reshape(-1).numpy() for n in names])
    solution = scipy.optimize.minimize(full_objective, w0, jac=True, method="BFGS",
                                       options={"gtol": 1e-13, "maxiter": 2000})
    assert np.abs(full_objective(solution.x)[1]).max() < 1e-9
    optimum = unflatten(torch.tensor(solution.x, dtype=DTYPE))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(optimum[name])
    return model, x, y, 3


def test_block_newton_converges_to_the_block_minimiser(logreg_problem):
    """Many steps from a poor start: grad f ~ 0 on the block, and v equals scipy's minimiser
    of the same objective restricted to the block (row 1: weight[1] and bias[1])."""
    model, x, y, k = logreg_problem
    start = LogisticRegression(num_classes=2, in_features=4).double().eval()
    with torch.no_grad():
        start.fc.weight.copy_(model.fc.weight + 2.0)
        start.fc.bias.copy_(model.fc.bias - 1.0)
    retain_x, retain_y = x[k:], y[k:]
    rows = slice_parameter_rows(start, [SliceRef("fc", 1, "linear")])
    objective = BlockObjective(start, rows, retain_x, retain_y, weight_decay=LAM)
    v, report = block_newton(objective, max_steps=30, gradient_tolerance=1e-13)
    assert report.steps >= 2
    assert report.loss_after < report.loss_before
    assert float(objective.gradient(v).norm()) < 1e-6

    f = reference_objective(logreg_forward, detached(start), rows, retain_x, retain_y, LAM)

    def restricted(v_np):
        w = torch.tensor(v_np, dtype=DTYPE, requires_grad=True)
        value = f(w)
        value.backward()
        return float(value.detach()), w.grad.numpy()

    reference = scipy.optimize.minimize(restricted, objective.v0.numpy(), jac=True, method="L-BFGS-B",
                                        options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    np.testing.assert_allclose(v.numpy(), reference.x, rtol=1e-4, atol=1e-6)
    # the rows outside the block (row 0) were never part of v
    assert objective.size == 5


def _retained_pieces(model, x, y, k, rows):
    """By hand: f on the retained data, its gradient and Hessian at v0, and g_U."""
    n = len(y)
    params = detached(model)
    v0 = pack(params, rows)
    f = reference_objective(logreg_forward, params, rows, x[k:], y[k:], LAM)
    gradient, hessian = autograd_jacobian(f, v0), autograd_hessian(f, v0)

    def summed_forget_loss(v):
        logits = logreg_forward(with_block(params, rows, v), x[:k])
        return F.cross_entropy(logits, y[:k], reduction="sum")

    # g_U = (1/(n-k)) sum_{i in U} [grad l(w*, z_i) + lam w*], restricted to the block
    g_forget = (autograd_jacobian(summed_forget_loss, v0) + k * LAM * v0) / (n - k)
    return v0, gradient, hessian, g_forget


@pytest.mark.parametrize("block", [[SliceRef("fc", 0, "linear")],
                                   [SliceRef("fc", 0, "linear"), SliceRef("fc", 1, "linear")]])
def test_single_newton_step_is_v0_minus_inverse_hessian_gradient(logreg_problem, block):
    model, x, y, k = logreg_problem
    rows = slice_parameter_rows(model, block)
    objective = BlockObjective(model, rows, x[k:], y[k:], weight_decay=LAM)
    v0, gradient, hessian, _ = _retained_pieces(model, x, y, k, rows)
    v, report = block_newton(objective, rhs="retain_gradient", solver="explicit", max_steps=1)
    expected = v0 - torch.linalg.solve(hessian, gradient)
    assert report.steps == 1 and report.damping == [0.0]          # full step, no damping
    assert report.smallest_eigenvalue == pytest.approx(float(torch.linalg.eigvalsh(hessian)[0]),
                                                       rel=1e-8)
    torch.testing.assert_close(v, expected, rtol=1e-8, atol=1e-10)
    # CG on Hessian-vector products gives the same step
    v_cg, report_cg = block_newton(objective, solver="cg", max_steps=1, cg_iterations=50)
    assert report_cg.steps == 1 and not report_cg.negative_curvature
    torch.testing.assert_close(v_cg, expected, rtol=1e-6, atol=1e-8)


def test_single_forget_gradient_step_is_v0_plus_inverse_hessian_g_forget(logreg_problem):
    model, x, y, k = logreg_problem
    rows = slice_parameter_rows(model, [SliceRef("fc", 1, "linear")])
    objective = BlockObjective(model, rows, x[k:], y[k:], weight_decay=LAM)
    v0, gradient, hessian, g_forget = _retained_pieces(model, x, y, k, rows)
    # at an exact optimum of F, g_U = -grad F_r(w*) (docs/ALGORITHM.md, section 4 (The retained
    # objective on the block and the removal step))
    torch.testing.assert_close(g_forget, -gradient, rtol=1e-6, atol=1e-9)

    v, report = block_newton(objective, rhs="forget_gradient", forget_rhs=g_forget,
                             solver="explicit", max_steps=1)
    assert report.rhs == "forget_gradient" and report.steps == 1
    torch.testing.assert_close(v, v0 + torch.linalg.solve(hessian, g_forget), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="forget_rhs"):
        block_newton(objective, rhs="forget_gradient", max_steps=1)


def test_newton_on_an_indefinite_block_damps_and_decreases(mlp_problem):
    """Non-convex block: the smallest eigenvalue is reported, damping makes H + mu I
    positive definite, and every accepted step decreases f."""
    model, rows, x, y = mlp_problem
    lam = 1e-3
    objective = BlockObjective(model, rows, x, y, weight_decay=lam)
    smallest = float(torch.linalg.eigvalsh(objective.hessian(objective.v0))[0])
    v, report = block_newton(objective, solver="explicit", max_steps=3)
    assert report.smallest_eigenvalue == pytest.approx(smallest, rel=1e-8)
    if smallest <= 0.1 * lam:
        assert report.damping[0] == pytest.approx(-smallest + lam, rel=1e-8)
    assert torch.isfinite(v).all()
    assert report.loss_after <= report.loss_before
    assert objective.loss(v) == pytest.approx(report.loss_after, rel=1e-12)


# ---------------------------------------------------------------- linear algebra
def test_conjugate_gradient_solves_spd_systems():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=generator, dtype=DTYPE)
    spd = a @ a.T + 0.5 * torch.eye(8, dtype=DTYPE)
    b = torch.randn(8, generator=generator, dtype=DTYPE)
    x, negative = conjugate_gradient(lambda u: spd @ u, b, damping=0.0, iterations=50, tolerance=1e-14)
    assert not negative
    torch.testing.assert_close(x, torch.linalg.solve(spd, b), rtol=0, atol=1e-8)
    x, negative = conjugate_gradient(lambda u: spd @ u, b, damping=2.0, iterations=50, tolerance=1e-14)
    torch.testing.assert_close(x, torch.linalg.solve(spd + 2 * torch.eye(8, dtype=DTYPE), b),
                               rtol=0, atol=1e-8)
    torch.testing.assert_close(solve_explicit(spd, b, 0.0), torch.linalg.solve(spd, b),
                               rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_reports_negative_curvature():
    indefinite = torch.diag(torch.tensor([2.0, -3.0], dtype=DTYPE))
    b = torch.tensor([1.0, 1.0], dtype=DTYPE)
    x, negative = conjugate_gradient(lambda u: indefinite @ u, b, damping=0.0, iterations=10)
    assert negative
    torch.testing.assert_close(x, b)                      # first iteration: b / (mu + 1)
    # negative curvature found on a later direction: the iterate so far is returned
    indefinite = torch.diag(torch.tensor([4.0, 1.0, -0.5], dtype=DTYPE))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=DTYPE)
    x, negative = conjugate_gradient(lambda u: indefinite @ u, b, damping=0.0, iterations=10)
    assert negative and torch.isfinite(x).all()
    with pytest.raises(torch.linalg.LinAlgError):
        solve_explicit(indefinite, b, 0.0)
