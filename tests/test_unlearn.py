"""``unlearn`` end to end on tiny models: the contract, the noise formula, each method and
baseline moving the metrics the expected way, and the refusals of bad input.

The contract (issue 4, STYLE.md 3): a new model is returned, the input model is unchanged,
and parameters outside the selected block P are bit-identical to the input's.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import scipy.optimize
import torch
from torch import nn
from torch.autograd.functional import hessian as autograd_hessian
from torch.nn import functional as F

from tiny import assert_state_equal, CLASSES, fit_adam, make_dataset, state_copy, TinyNet  # noqa: F401
from lcodec_core.unlearning.config import METHODS, UnlearnConfig
from lcodec_core.data import ImageDataset
from lcodec_core.unlearning.noise import noise_sigma
from lcodec_core.unlearning.result import SelectedSlice, UnlearnResult
from lcodec_core.unlearning.slices import count_parameters, enumerate_slices, slice_parameter_rows
from lcodec_core.unlearning.unlearn import unlearn
from lcodec_models import Recipe, accuracy, build_model, train

LAM = 1e-2
FAST = dict(num_perturbations=20, newton_steps=3)   # small probe, few Newton steps
# The pre-v2 update: damped Newton iterations with an Armijo line search on the retained
# objective F_r. Tests of that iteration's own properties (F_r does not increase,
# diagnostics["newton"]) pin it; tests of the generic contract run the default step rule.
NEWTON = dict(step_rule="newton", solver="auto")
# Engine v2's per-request step: the contract tests below run it (its block is the selection
# alone, so "outside the block" is sharp); the v3 default has its own file, test_engine_v3.py.
TARGET = dict(step_rule="target")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest



# ---------------------------------------------------------------- tiny model and data
def fit(model_cls, data: ImageDataset, steps: int = 300, lr: float = 3e-2) -> nn.Module:
    """A seeded ``model_cls()`` trained by full-batch Adam on mean CE + coupled L2 (lam = LAM),
    as the zoo trains; returned in eval mode."""
    torch.manual_seed(0)
    model = model_cls()
    return fit_adam(model, data, LAM, steps, lr)


def retained_objective(model: nn.Module, retain: ImageDataset, lam: float = LAM) -> float:
    """F_r(w) = mean retained CE + (lam/2) |w|^2 over every parameter."""
    with torch.no_grad():
        data = F.cross_entropy(model(retain.images), retain.targets)
        penalty = sum(p.double().pow(2).sum() for p in model.parameters())
    return float(data) + 0.5 * lam * float(penalty)


def mean_loss(model: nn.Module, data: ImageDataset) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(data.images), data.targets))


def block_mask(model: nn.Module, selected: list[SelectedSlice]) -> dict[str, torch.Tensor]:
    """Parameter name -> bool mask of the scalars inside the block P."""
    refs = {(s.module, s.index): s for s in enumerate_slices(model)}
    rows = slice_parameter_rows(model, [refs[(s.module, s.index)] for s in selected])
    masks = {}
    for name, param in model.named_parameters():
        mask = torch.zeros_like(param, dtype=torch.bool)
        mask[rows.get(name, [])] = True
        masks[name] = mask
    return masks


@pytest.fixture(scope="module")
def problem():
    """A TinyNet trained on 30 images; forget the first 3 (one per class)."""
    data = make_dataset(30)
    model = fit(TinyNet, data)
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    assert accuracy(model, retain.images, retain.targets) > 0.9
    return model, forget, retain


@pytest.fixture(scope="module")
def lfoci_run(problem):
    model, forget, retain = problem
    before = state_copy(model)
    events: list[dict] = []
    config = UnlearnConfig(method="lfoci", max_slices=4, **FAST, **TARGET)
    result = unlearn(model, forget, retain, config, on_progress=events.append, weight_decay=LAM)
    return model, before, result, events


@pytest.fixture(scope="module")
def newton_run(problem):
    """The same removal with the damped Newton iterations (step_rule "newton")."""
    model, forget, retain = problem
    before = state_copy(model)
    config = UnlearnConfig(method="lfoci", max_slices=4, **FAST, **NEWTON)
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    return model, before, result


# ---------------------------------------------------------------- the contract
def test_engine_v3_defaults():
    config = UnlearnConfig()
    assert (config.rhs, config.step_rule, config.feature_step, config.solver, config.step_rounds) == \
        ("forget_gradient", "optimum", False, "fisher", 4)
    assert config.epsilon is None and not config.allow_harmful_noise


def test_input_model_unchanged_and_new_model_returned(lfoci_run):
    model, before, result, _ = lfoci_run
    assert_state_equal(model, before)
    assert result.model is not model
    assert not result.model.training
    assert all(p is not q for p, q in zip(result.model.parameters(), model.parameters()))


def test_weights_outside_the_block_are_bit_identical(lfoci_run):
    model, before, result, _ = lfoci_run
    masks = block_mask(model, result.selected_slices)
    new = dict(result.model.named_parameters())
    changed = 0
    for name, mask in masks.items():
        assert torch.equal(new[name].detach()[~mask], before[name][~mask]), f"{name} outside P moved"
        changed += int((new[name].detach()[mask] != before[name][mask]).sum())
    assert changed > 0, "the Newton step did not move the block"
    for name, value in result.model.named_buffers():
        assert torch.equal(value, before[name])


def test_result_fields(lfoci_run):
    model, _, result, _ = lfoci_run
    assert isinstance(result, UnlearnResult)
    selected = result.selected_slices
    assert 1 <= len(selected) <= 4
    assert [s.order for s in selected] == list(range(len(selected)))
    modules = {name for name, _ in model.named_modules()}
    for s in selected:
        assert s.module in modules and isinstance(s.index, int) and math.isfinite(s.score)
    assert len({(s.module, s.index) for s in selected}) == len(selected)
    refs = {(s.module, s.index): s for s in enumerate_slices(model)}
    rows = slice_parameter_rows(model, [refs[(s.module, s.index)] for s in selected])
    assert result.parameters_updated == count_parameters(model, rows)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < result.parameter_share <= 1
    assert result.parameter_share == pytest.approx(result.parameters_updated / total)
    assert {"probe_s", "select_s", "newton_s", "unlearn_s"} <= set(result.timings)
    assert all(t >= 0 for t in result.timings.values())
    assert result.timings["unlearn_s"] >= result.timings["newton_s"]
    assert result.sigma == 0.0 and result.config.epsilon is None
    assert result.diagnostics["n"] == 30 and result.diagnostics["k"] == 3
    summary = json.loads(json.dumps(result.summary()))
    assert UnlearnConfig.from_dict(summary["settings"]) == result.config


def test_default_step_report(lfoci_run):
    """The engine-v2 step: g_U on the block, Fisher curvature, damping by the target."""
    _, _, result, _ = lfoci_run
    assert "newton" not in result.diagnostics
    step = result.diagnostics["step"]
    assert step["curvature"] == "fisher" and step["rhs"] == "forget_gradient"
    assert step["parameters"] == result.parameters_updated
    assert step["curvature_rows"] == 27                 # every retained row
    assert step["rule"] == "undamped"                   # scattered photos, no held-out reference
    assert isinstance(step["target_met"], bool) and isinstance(step["guard_limited"], bool)
    assert 1 <= len(step["rounds"]) <= result.config.step_rounds
    # the reported round is the round kept (a rejected last round is never reported)
    assert (step["damping"], step["target_met"]) == (step["rounds"][-1]["damping"],
                                                     step["rounds"][-1]["target_met"])
    assert step["step_norm"] > 0 and math.isfinite(step["step_norm"])
    assert step["null_control"]["step_norm"] == 0.0
    assert {"angle_deg", "norm_ratio"} <= set(step["curvature_effect"])
    assert {"block_gradient_norm", "forget_gradient_norm", "ratio"} <= set(step["stationarity"])
    assert result.guarantee == "none" and result.changed


def test_retained_objective_does_not_increase(newton_run, problem):
    """The Newton iterations' line search: F_r never increases."""
    model, before, result = newton_run
    _, _, retain = problem
    assert_state_equal(model, before)
    newton = result.diagnostics["newton"]
    assert newton["solver"] == "explicit" and newton["steps"] >= 1 and "step" not in result.diagnostics
    assert newton["loss_after"] <= newton["loss_before"]
    assert retained_objective(result.model, retain) <= retained_objective(model, retain) + 1e-6


def test_progress_phases_and_fractions(lfoci_run):
    _, _, _, events = lfoci_run
    phases = [e["phase"] for e in events]
    assert {"probe", "select", "newton", "done"} <= set(phases)
    assert phases[0] == "probe" and phases[-1] == "done"
    first = {phase: phases.index(phase) for phase in ("probe", "select", "newton", "done")}
    assert first["probe"] < first["select"] < first["newton"] < first["done"]
    assert all(0.0 <= e["fraction"] <= 1.0 and isinstance(e["message"], str) for e in events)
    assert events[-1]["fraction"] == 1.0


# ---------------------------------------------------------------- noise
# hand numbers: ln(1.25 / delta) = 2, so sqrt(2 ln(1.25/delta)) = 2;
# gamma = 2 M L^2 k^2 / (n^2 lam^3) = 2 * 0.5 * 4 * 1 / (100 * 0.125) = 0.32; sigma = 0.32 / 0.64 * 2 = 1
NOISE = dict(epsilon=0.64, delta=1.25 * math.exp(-2), hessian_lipschitz=0.5, loss_lipschitz=2.0,
             weight_decay=0.5)


def test_noise_sigma_formula_by_hand():
    assert noise_sigma(n=10, k=1, **NOISE) == pytest.approx(1.0, rel=1e-12)
    # k = 2: gamma x 4; n = 20: gamma / 4; lam halved: gamma x 8; epsilon doubled: sigma / 2
    assert noise_sigma(n=10, k=2, **NOISE) == pytest.approx(4.0, rel=1e-12)
    assert noise_sigma(n=20, k=1, **NOISE) == pytest.approx(0.25, rel=1e-12)
    assert noise_sigma(n=10, k=1, **{**NOISE, "weight_decay": 0.25}) == pytest.approx(8.0, rel=1e-12)
    assert noise_sigma(n=10, k=1, **{**NOISE, "epsilon": 1.28}) == pytest.approx(0.5, rel=1e-12)
    # the paper's constants, written out
    expected = (2 * 0.25 * 1 * 1 / (100 ** 2 * 0.1 ** 3)) / 2.0 * math.sqrt(2 * math.log(1.25 / 1e-5))
    assert noise_sigma(epsilon=2.0, delta=1e-5, n=100, k=1, weight_decay=0.1,
                       hessian_lipschitz=0.25, loss_lipschitz=1.0) == pytest.approx(expected, rel=1e-12)
    assert noise_sigma(n=10, k=1, **{**NOISE, "epsilon": None}) == 0.0
    for bad in ({"n": 1, "k": 1}, {"n": 10, "k": 0}):
        with pytest.raises(ValueError, match="n > k >= 1"):
            noise_sigma(**{**NOISE, **bad})


@pytest.fixture(scope="module")
def noise_problem():
    """n = 10 images (k = 1 forgotten) so sigma = 1 with the hand numbers above."""
    data = make_dataset(10, seed=1)
    model = fit(TinyNet, data, steps=100)
    return model, data.subset([0]), data.subset(range(1, 10))


def _noise_config(**changes) -> UnlearnConfig:
    return UnlearnConfig(**{"method": "top1", **FAST, **NOISE, **TARGET, **changes})


def test_noise_on_block_only_touches_the_block(noise_problem):
    model, forget, retain = noise_problem
    before = state_copy(model)
    clean = unlearn(model, forget, retain, _noise_config(epsilon=None))
    noisy = unlearn(model, forget, retain, _noise_config(noise_on="block"))
    assert clean.sigma == 0.0
    assert noisy.sigma == pytest.approx(1.0, rel=1e-12)
    assert noisy.selected_slices == clean.selected_slices and len(noisy.selected_slices) == 1
    masks = block_mask(model, noisy.selected_slices)
    clean_params, noisy_params = dict(clean.model.named_parameters()), dict(noisy.model.named_parameters())
    for name, mask in masks.items():
        difference = (noisy_params[name] - clean_params[name]).detach()
        assert torch.equal(noisy_params[name].detach()[~mask], before[name][~mask])
        assert (difference[mask] != 0).all(), f"no noise on the block rows of {name}"
    assert_state_equal(model, before)


def test_noise_on_all_touches_every_parameter(noise_problem):
    """sigma = 1 on every parameter wrecks this tiny model: it is refused by default
    (HarmfulNoiseError, tested in test_guarantee.py), so this test allows it on purpose."""
    model, forget, retain = noise_problem
    clean = unlearn(model, forget, retain, _noise_config(epsilon=None))
    noisy = unlearn(model, forget, retain, _noise_config(noise_on="all", allow_harmful_noise=True))
    assert noisy.sigma == pytest.approx(1.0, rel=1e-12)
    differences = torch.cat([(p - q).detach().reshape(-1) for p, q in
                             zip(noisy.model.parameters(), clean.model.parameters())])
    assert (differences != 0).all()
    # N(0, 1) on 121 scalars: the sample std is 1 within a generous margin
    assert 0.7 < float(differences.std()) < 1.3


# ---------------------------------------------------------------- methods and baselines
def _assert_selection(model, result, method):
    total = sum(p.numel() for p in model.parameters())
    selected = result.selected_slices
    if method == "top1":
        assert len(selected) == 1
    elif method == "random":
        assert len(selected) == max(result.diagnostics["selection"]["lfoci_size"], 1)
    else:                                           # every slice: the full-model step
        assert len(selected) == len(enumerate_slices(model))
        assert result.parameters_updated == total and result.parameter_share == 1.0
        assert result.diagnostics["selection"]["stopped_because"] == "all slices"


@pytest.mark.parametrize("method", ["random", "top1", "all", "full-newton"])
def test_selection_methods_keep_the_contract_with_the_target_step(problem, method):
    model, forget, retain = problem
    before = state_copy(model)
    result = unlearn(model, forget, retain, UnlearnConfig(method=method, max_slices=4, **FAST, **TARGET),
                     weight_decay=LAM)
    assert_state_equal(model, before)
    _assert_selection(model, result, method)
    assert result.diagnostics["step"]["parameters"] == result.parameters_updated
    assert result.changed
    masks = block_mask(model, result.selected_slices)
    for name, param in result.model.named_parameters():
        assert torch.equal(param.detach()[~masks[name]], before[name][~masks[name]])
        assert torch.isfinite(param).all()


@pytest.mark.parametrize("method", ["random", "top1", "all", "full-newton"])
def test_selection_methods_run_and_decrease_the_retained_objective(problem, method):
    model, forget, retain = problem
    before = state_copy(model)
    result = unlearn(model, forget, retain,
                     UnlearnConfig(method=method, max_slices=4, **FAST, **NEWTON), weight_decay=LAM)
    assert_state_equal(model, before)
    _assert_selection(model, result, method)
    selected = result.selected_slices
    old, new = retained_objective(model, retain), retained_objective(result.model, retain)
    assert new <= old + 1e-6
    if method in ("all", "full-newton"):
        assert new < old - 1e-4, "the full-model Newton step should reduce F_r"
    masks = block_mask(model, selected)
    for name, param in result.model.named_parameters():
        assert torch.equal(param.detach()[~masks[name]], before[name][~masks[name]])


def test_negrad_raises_the_forget_loss(problem):
    model, forget, retain = problem
    before = state_copy(model)
    config = UnlearnConfig(method="negrad", baseline_epochs=5, baseline_lr=1e-2)
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
    assert result.model is not model
    assert mean_loss(result.model, forget) > 5 * mean_loss(model, forget)
    assert accuracy(result.model, forget.images, forget.targets) <= \
        accuracy(model, forget.images, forget.targets)
    assert result.selected_slices == [] and result.parameter_share == 1.0
    assert result.diagnostics["baseline"] == "negrad"


def test_finetune_keeps_retained_accuracy(problem):
    model, forget, retain = problem
    before = state_copy(model)
    config = UnlearnConfig(method="finetune", baseline_epochs=5, baseline_lr=1e-3)
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
    assert accuracy(result.model, retain.images, retain.targets) >= \
        accuracy(model, retain.images, retain.targets)
    assert mean_loss(result.model, retain) <= mean_loss(model, retain) * 1.05
    assert not all(torch.equal(p, q) for p, q in zip(result.model.parameters(), model.parameters()))


def test_retrain_needs_a_recipe_and_trains_from_scratch():
    data = make_dataset(30, seed=2)
    recipe = Recipe("logreg", epochs=3, lr=1e-2, batch_size=16, weight_decay=1e-3, seed=0)
    model = train("logreg", data, recipe).model
    forget, retain = data.subset(range(3)), data.subset(range(3, 30))
    with pytest.raises(ValueError, match="recipe"):
        unlearn(model, forget, retain, UnlearnConfig(method="retrain"), weight_decay=1e-3)
    before = state_copy(model)
    result = unlearn(model, forget, retain, UnlearnConfig(method="retrain"), recipe=recipe)
    assert_state_equal(model, before)
    assert result.diagnostics["weight_decay"] == 1e-3              # lam taken from the recipe
    expected = train("logreg", retain, recipe).model                # same recipe, same seed
    assert_state_equal(result.model, expected.state_dict())
    assert not torch.equal(result.model.fc.weight, model.fc.weight)
    assert result.timings["newton_s"] > 0


def test_cg_solver_with_curvature_subsample_keeps_the_contract(problem):
    model, forget, retain = problem
    before = state_copy(model)
    config = UnlearnConfig(method="full-newton", step_rule="newton", solver="cg", cg_iterations=10,
                           newton_steps=2, curvature_subsample=10, retain_subsample=20)
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
    newton = result.diagnostics["newton"]
    assert newton["solver"] == "cg" and newton["retain_rows"] == 20
    assert newton["loss_after"] <= newton["loss_before"]
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


@pytest.mark.parametrize("solver", ["explicit", "cg"])
def test_exact_solvers_under_the_target_step_rule(problem, solver):
    """step_rule "target" with the exact Hessian instead of the Fisher: the curvature is built
    on the curvature subsample, and the contract holds."""
    model, forget, retain = problem
    before = state_copy(model)
    config = UnlearnConfig(method="full-newton", solver=solver, cg_iterations=10,
                           curvature_subsample=10, retain_subsample=20, **TARGET)
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
    step = result.diagnostics["step"]
    assert step["curvature"] == solver and step["curvature_rows"] == 10
    assert step["null_control"]["step_norm"] == 0.0 and step["step_norm"] > 0
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_weight_decay_sources(problem):
    """lam comes from config.weight_decay, else weight_decay=, else the recipe's."""
    model, forget, retain = problem
    config = UnlearnConfig(method="top1", **FAST)
    assert unlearn(model, forget, retain, config, weight_decay=0.02).diagnostics["weight_decay"] == 0.02
    assert unlearn(model, forget, retain, config.with_(weight_decay=0.03)
                   ).diagnostics["weight_decay"] == 0.03
    assert unlearn(model, forget, retain, config, recipe=Recipe("mlp", weight_decay=0.04)
                   ).diagnostics["weight_decay"] == 0.04


# ---------------------------------------------------------------- the forget-gradient step, wired up
def test_full_newton_forget_gradient_step_matches_hand_computation():
    """Logistic regression at the exact optimum w* of F (n = 24): one explicit step with
    rhs="forget_gradient" gives w* + H_r^-1 g_U, g_U = (1/(n-k)) sum_U [grad l + lam w*];
    at an exact optimum it equals the step with rhs="retain_gradient"."""
    lam, k = 0.05, 2
    data = make_dataset(24, seed=3, dtype=torch.float64)
    model = build_model("logreg", 3, (1, 4, 4)).double().eval()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def unflatten(w):
        return dict(zip(names, (c.reshape(s) for c, s in zip(torch.split(w, [math.prod(s) for s in shapes]),
                                                              shapes))))

    def data_loss(w, images, targets, reduction="mean"):
        params = unflatten(w)
        logits = images.reshape(len(images), -1) @ params["fc.weight"].T + params["fc.bias"]
        return F.cross_entropy(logits, targets, reduction=reduction)

    def full(w_np):
        w = torch.tensor(w_np, requires_grad=True)
        value = data_loss(w, data.images, data.targets) + 0.5 * lam * w.pow(2).sum()
        value.backward()
        return float(value.detach()), w.grad.numpy()

    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    w_star = torch.tensor(scipy.optimize.minimize(full, w0, jac=True, method="BFGS",
                                                  options={"gtol": 1e-12}).x)
    assert abs(full(w_star.numpy())[1]).max() < 1e-9, "BFGS did not reach the optimum of F"
    with torch.no_grad():
        for param, value in zip(model.parameters(), unflatten(w_star).values()):
            param.copy_(value)
    forget, retain = data.subset(range(k)), data.subset(range(k, 24))
    n = len(data)

    def retained(w):
        return data_loss(w, retain.images, retain.targets) + 0.5 * lam * w.pow(2).sum()

    hessian = autograd_hessian(retained, w_star)
    w_forget = w_star.clone().requires_grad_(True)
    summed = data_loss(w_forget, forget.images, forget.targets, reduction="sum")
    g_forget = (torch.autograd.grad(summed, w_forget)[0] + k * lam * w_star) / (n - k)
    expected = w_star + torch.linalg.solve(hessian, g_forget)

    config = UnlearnConfig(method="full-newton", rhs="forget_gradient", step_rule="newton",
                           solver="explicit", newton_steps=1, weight_decay=lam)
    result = unlearn(model, forget, retain, config)
    got = torch.cat([p.detach().reshape(-1) for p in result.model.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)
    assert result.diagnostics["newton"]["rhs"] == "forget_gradient"

    retain_step = unlearn(model, forget, retain, config.with_(rhs="retain_gradient"))
    got_retain = torch.cat([p.detach().reshape(-1) for p in retain_step.model.parameters()])
    torch.testing.assert_close(got_retain, expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- a model handed over in training mode
class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(48, 3)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


def test_model_in_training_mode_is_left_untouched():
    """STYLE.md 3 and 6: the buffers (BatchNorm running statistics) of the input model are
    never written, its mode is kept, and the result is the same as for the model in eval mode."""
    data = make_dataset(20, seed=4)
    model = fit(BatchNormNet, data, steps=50)
    forget, retain = data.subset(range(2)), data.subset(range(2, 20))
    model.train()
    before = state_copy(model)
    config = UnlearnConfig(method="full-newton", newton_steps=2)
    result = unlearn(model, forget, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
    assert model.training
    reference = unlearn(copy.deepcopy(model).eval(), forget, retain, config, weight_decay=LAM)
    assert_state_equal(result.model, reference.model.state_dict())


# ---------------------------------------------------------------- refusals
def test_bad_input_is_refused_with_guidance(problem):
    model, forget, retain = problem
    before = state_copy(model)
    empty = forget.subset([])
    config = UnlearnConfig(**FAST)
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn(model, empty, retain, config, weight_decay=LAM)
    with pytest.raises(ValueError, match="retained set is empty"):
        unlearn(model, forget, empty, config, weight_decay=LAM)
    with pytest.raises(ValueError, match=r"num_perturbations \(m\) must be >= 3; got 2"):
        UnlearnConfig(num_perturbations=2)
    with pytest.raises(ValueError, match="method must be one of") as error:
        UnlearnConfig(method="forget-everything")
    assert all(name in str(error.value) for name in METHODS)
    with pytest.raises(ValueError, match="step_rule 'newton' iterates exact Newton steps"):
        UnlearnConfig(step_rule="newton", solver="fisher")
    with pytest.raises(ValueError, match="step_rule must be one of optimum, target, newton"):
        UnlearnConfig(step_rule="armijo")
    with pytest.raises(ValueError, match="weight_decay"):
        unlearn(model, forget, retain, config)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite values in 'fc2.weight'"):
        unlearn(broken, forget, retain, config, weight_decay=LAM)
    wrong_shape = ImageDataset(torch.zeros(2, 1, 5, 5), torch.zeros(2, dtype=torch.long), CLASSES,
                               ["x", "y"])
    with pytest.raises(ValueError, match="same shape"):
        unlearn(model, wrong_shape, retain, config, weight_decay=LAM)
    assert_state_equal(model, before)
