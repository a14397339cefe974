"""The engine-v2 step rule "target" (lcodec_core/unlearning/step_rule.py, lcodec_core/unlearning/forget_step.py): how far to step,
chosen per request by the forget target, with a guard on what must not change.

- ``choose_step`` on synthetic closures with known thresholds: the smallest step meeting a
  monotone target (the largest damping, to the bisection's resolution), the back-off when the
  guard fails, and the undamped rule;
- ``build_target``: which photos are removed classes, the held-out reference, the guard rows;
- end to end on a tiny 3-class network: removing a whole class (rule "removed_class": none of
  its photos is predicted as it afterwards), one or two scattered photos with held-out photos
  (rule "held_out_loss": their mean log-loss reaches the reference) and without (rule
  "undamped");
- the null control: exactly 0 with the forget gradient, > 0 with ``rhs="retain_gradient"`` on
  a model that is not at a stationary point.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tiny import CLASSES, fit_adam, make_dataset, TinyNet  # noqa: F401
from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.data import ImageDataset
from lcodec_core.unlearning.step_rule import (RULES, StepProblem, StepTarget, build_target, choose_step,
                                   log_losses)
from lcodec_core.unlearning.unlearn import unlearn
from lcodec_models import accuracy

LAM = 1e-2
CONFIG = UnlearnConfig(num_perturbations=20, step_rule="target")   # the engine-v2 rule this file tests

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


# ---------------------------------------------------------------- synthetic problems
# One scalar block: d(mu) = B / (LAM_S + mu). Each closure reads d[0] only, so every target
# below is monotone in the step and its damping threshold is known in closed form.
B, LAM_S = 1.0, 0.01
RESOLUTION = math.sqrt(10) ** (1 / 2 ** 6)   # grid factor sqrt(10), six bisections


def step_of(mu: float) -> float:
    return B / (LAM_S + mu)


def synthetic_problem(forget_logits, retain_ok=lambda d: True) -> StepProblem:
    """forget_logits(d) -> (1, K) logits; the guard reads one retained row of class 0, which is
    right while ``retain_ok(d)``."""
    def retain_logits(d):
        return torch.tensor([[1.0, 0.0]]) if retain_ok(float(d[0])) else torch.tensor([[0.0, 1.0]])

    return StepProblem(
        solve=lambda mu: torch.tensor([step_of(mu)], dtype=torch.float64),
        forget_logits=lambda d: forget_logits(float(d[0])),
        retain_logits=retain_logits, held_out_logits=None,
        forget_targets=torch.tensor([0]), retain_targets=torch.tensor([0]), held_out_targets=None,
        block_norm=1.0, rhs_norm=B, weight_decay=LAM_S)


def scattered_target(reference: float | None) -> StepTarget:
    return StepTarget(removed=torch.tensor([False]), reference_log_loss=reference,
                      minimum_removed_loss=math.log(2), retain_accuracy_floor=0.99,
                      held_out_accuracy_floor=None)


def rising_loss(d: float) -> torch.Tensor:
    """Logits (0, 10 d - 5) for class 0: CE = log(1 + e^(10 d - 5)), increasing in d."""
    return torch.tensor([[0.0, 10 * d - 5]], dtype=torch.float64)


# log CE >= 0  <=>  CE >= 1  <=>  10 d - 5 >= ln(e - 1)  <=>  mu <= MU_STAR
D_STAR = (5 + math.log(math.e - 1)) / 10
MU_STAR = B / D_STAR - LAM_S


def test_choose_step_takes_the_smallest_step_meeting_a_monotone_target():
    choice = choose_step(synthetic_problem(rising_loss), scattered_target(0.0))
    assert choice.rule == "held_out_loss" and choice.target_met and not choice.guard_limited
    assert MU_STAR / RESOLUTION * (1 - 1e-9) <= choice.damping <= MU_STAR
    assert float(choice.step[0]) == pytest.approx(step_of(choice.damping))
    # every damping that met the target is at most the chosen one; every larger one missed
    for check in choice.checks:
        assert check.target_met == (check.damping <= MU_STAR)
        if check.target_met:
            assert check.damping <= choice.damping
    final = [c for c in choice.checks if c.guard_ok is not None]
    assert len(final) == 1 and final[0].damping == choice.damping and final[0].retain_accuracy == 1.0
    report = choice.report()
    assert report["rule"] == "held_out_loss" and report["rule_text"] == RULES["held_out_loss"]
    assert report["chosen"]["damping"] == choice.damping and report["candidates_tried"] == len(choice.checks)


def test_choose_step_backs_off_when_the_guard_fails():
    """The target needs d >= 0.554 but the retained row breaks above d = 0.3: the largest step
    that keeps the guard is a grid damping above the hit (mu = 10 gives d = 0.0999, mu = 3.16
    gives d = 0.315), and the target is reported as not met."""
    limit = 0.3
    choice = choose_step(synthetic_problem(rising_loss, retain_ok=lambda d: d < limit),
                         scattered_target(0.0))
    assert not choice.target_met and choice.guard_limited
    assert choice.damping == pytest.approx(10.0, rel=1e-5)     # the grid: (1e4 - lam) / sqrt(10)^6
    assert step_of(choice.damping) < limit <= step_of(choice.damping / math.sqrt(10))
    assert float(choice.step[0]) == pytest.approx(step_of(choice.damping))
    guarded = [c for c in choice.checks if c.guard_ok is not None]
    assert not guarded[0].guard_ok and guarded[0].damping <= MU_STAR     # the hit, refused
    assert guarded[-1].guard_ok and guarded[-1].damping == choice.damping
    assert choice.report()["chosen"]["guard_ok"] is True


def test_choose_step_with_no_safe_step_takes_the_smallest_candidate():
    choice = choose_step(synthetic_problem(rising_loss, retain_ok=lambda d: False), scattered_target(0.0))
    assert not choice.target_met and choice.guard_limited
    largest = max(c.damping for c in choice.checks)
    assert choice.damping == largest and float(choice.step[0]) == pytest.approx(step_of(largest))
    assert step_of(largest) == pytest.approx(1e-4, rel=1e-3)    # about 1e-4 of the block's norm


def test_choose_step_without_a_reference_is_undamped():
    choice = choose_step(synthetic_problem(rising_loss), scattered_target(None))
    assert choice.rule == "undamped" and choice.target_met and choice.damping == 0.0
    assert float(choice.step[0]) == pytest.approx(B / LAM_S)


def test_choose_step_for_a_removed_class():
    """Logits (5 - 10 d, 0, 0) for class 0, a removed class: it stops being predicted, and its
    loss reaches ln 3, once d > 0.5 (mu < 1.99)."""
    target = StepTarget(removed=torch.tensor([True]), reference_log_loss=None,
                        minimum_removed_loss=math.log(3), retain_accuracy_floor=0.99,
                        held_out_accuracy_floor=None)
    choice = choose_step(synthetic_problem(lambda d: torch.tensor([[5 - 10 * d, 0.0, 0.0]])), target)
    threshold = B / 0.5 - LAM_S
    assert choice.rule == "removed_class" and choice.target_met
    assert threshold / RESOLUTION <= choice.damping < threshold
    chosen = choice.report()["chosen"]
    assert chosen["removed_misclassified"] == 1.0 and chosen["removed_min_loss"] >= math.log(3)


def test_build_target_splits_removed_classes_from_scattered_photos():
    """Forget two photos of class 1 (no retained photo of it) and one of class 0."""
    forget_targets = torch.tensor([1, 1, 0])
    retain_targets = torch.tensor([0, 2, 0, 2])
    retain_logits = torch.tensor([[2.0, 0, 0], [0, 0, 2.0], [0, 2.0, 0], [0, 0, 2.0]])  # 3 of 4 right
    held_targets = torch.tensor([0, 1, 2, 0])
    held_logits = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 3.0, 0]])      # 3 of 4 right
    target, guard_rows = build_target(forget_targets, retain_targets, 3, retain_logits, held_logits,
                                      held_targets, retain_tolerance=0.01, held_out_tolerance=0.05)
    assert target.removed.tolist() == [True, True, False]
    assert target.rule == "mixed"
    assert target.minimum_removed_loss == pytest.approx(math.log(3))
    class0 = torch.tensor([0, 3])
    expected = float(log_losses(held_logits[class0], held_targets[class0]).mean())
    assert target.reference_log_loss == pytest.approx(expected)
    assert guard_rows.tolist() == [True, False, True, True]         # held-out photos of class 1 excluded
    assert target.retain_accuracy_floor == pytest.approx(0.75 - 0.01)
    assert target.held_out_accuracy_floor == pytest.approx(2 / 3 - 0.05)   # 2 of the 3 guarded rows
    alone, rows = build_target(forget_targets[2:], retain_targets, 3, retain_logits)
    assert alone.rule == "undamped" and rows is None and alone.held_out_accuracy_floor is None


# ---------------------------------------------------------------- a tiny network, end to end
def fit(data: ImageDataset, steps: int = 300) -> nn.Module:
    """A seeded TinyNet trained by full-batch Adam on mean CE + coupled L2 (lam = LAM)."""
    torch.manual_seed(0)
    model = TinyNet()
    return fit_adam(model, data, LAM, steps)


@pytest.fixture(scope="module")
def world():
    """45 training images (15 per class) and 15 held-out images from the same distribution."""
    full = make_dataset(60)
    train, held_out = full.subset(range(45)), full.subset(range(45, 60))
    model = fit(train)
    assert accuracy(model, train.images, train.targets) == 1.0
    assert accuracy(model, held_out.images, held_out.targets) == 1.0
    return model, train, held_out


def split(train: ImageDataset, forget_indices: list[int]) -> tuple[ImageDataset, ImageDataset]:
    keep = [i for i in range(len(train)) if i not in set(forget_indices)]
    return train.subset(forget_indices), train.subset(keep)


def mean_log_loss(model: nn.Module, data: ImageDataset) -> float:
    with torch.no_grad():
        return float(log_losses(model(data.images), data.targets).mean())


@pytest.mark.parametrize("held", [True, False], ids=["with_held_out", "without_held_out"])
def test_removing_a_whole_class(world, held):
    model, train, held_out = world
    forget, retain = split(train, [i for i in range(len(train)) if int(train.targets[i]) == 1])
    result = unlearn(model, forget, retain, CONFIG, weight_decay=LAM,
                     held_out=held_out if held else None)
    step = result.diagnostics["step"]
    assert step["rule"] == "removed_class" and step["target_met"] and not step["guard_limited"]
    with torch.no_grad():
        after = result.model(forget.images)
    assert (after.argmax(1) != 1).all(), "a photo of the removed class is still predicted as it"
    assert float(F.cross_entropy(after, forget.targets, reduction="none").min()) >= math.log(3) - 1e-6
    assert step["chosen"]["removed_misclassified"] == 1.0
    assert accuracy(result.model, retain.images, retain.targets) >= 0.99
    if held:
        others = held_out.subset([i for i in range(len(held_out)) if int(held_out.targets[i]) != 1])
        # the guard watched the other classes' held-out photos, measured on the changed model
        assert step["chosen"]["guard_ok"] is True
        assert accuracy(result.model, others.images, others.targets) == \
            pytest.approx(step["chosen"]["held_out_accuracy"])
    else:
        assert step["chosen"]["held_out_accuracy"] is None


@pytest.mark.parametrize("forget_indices", [[4], [7, 11]])
def test_scattered_photos_reach_the_held_out_loss(world, forget_indices):
    """Their classes keep other training photos: the target is the mean log-loss held-out
    photos of the same classes had before the removal, and the step is the smallest reaching it."""
    model, train, held_out = world
    forget, retain = split(train, forget_indices)
    same = held_out.subset([i for i in range(len(held_out))
                            if int(held_out.targets[i]) in forget.targets.tolist()])
    reference = mean_log_loss(model, same)
    before = mean_log_loss(model, forget)
    assert before < reference                         # training photos: lower loss than unseen ones
    result = unlearn(model, forget, retain, CONFIG, weight_decay=LAM, held_out=held_out)
    step = result.diagnostics["step"]
    assert step["rule"] == "held_out_loss" and not step["guard_limited"]
    assert step["target_met"]
    after = mean_log_loss(result.model, forget)
    assert after >= reference - 1e-6
    assert after == pytest.approx(step["chosen"]["scattered_log_loss"], abs=1e-5)
    assert after - reference < 0.1 * (reference - before)     # the smallest step: not far past it
    assert accuracy(result.model, retain.images, retain.targets) >= 0.99


def test_scattered_photos_without_held_out_take_the_undamped_step(world):
    model, train, _ = world
    forget, retain = split(train, [4])
    result = unlearn(model, forget, retain, CONFIG, weight_decay=LAM)
    step = result.diagnostics["step"]
    assert step["rule"] == "undamped" and step["rule_text"] == RULES["undamped"]
    assert step["damping"] == 0.0 and step["target_met"] and len(step["rounds"]) == 1
    assert step["chosen"]["held_out_accuracy"] is None
    assert result.changed and step["step_norm"] > 0


# ---------------------------------------------------------------- null control
def test_null_control_is_exactly_zero_with_the_forget_gradient(world):
    model, train, held_out = world
    forget, retain = split(train, [4])
    step = unlearn(model, forget, retain, CONFIG, weight_decay=LAM, held_out=held_out).diagnostics["step"]
    assert step["rhs"] == "forget_gradient"
    assert step["null_control"]["step_norm"] == 0.0 and step["null_control"]["ratio"] == 0.0
    assert step["step_norm"] > 0


def test_null_control_moves_a_non_stationary_model_with_the_retain_gradient():
    """20 Adam steps leave the model far from a stationary point of F: with nothing removed,
    -grad F(w*) still moves it."""
    full = make_dataset(60)
    train, held_out = full.subset(range(45)), full.subset(range(45, 60))
    model = fit(train, steps=20)
    forget, retain = split(train, [4])
    result = unlearn(model, forget, retain, CONFIG.with_(rhs="retain_gradient"), weight_decay=LAM,
                     held_out=held_out)
    step = result.diagnostics["step"]
    assert step["rhs"] == "retain_gradient"
    assert step["stationarity"]["ratio"] > 1           # |grad F| on the block exceeds |g_U|
    assert step["null_control"]["step_norm"] > 0 and step["null_control"]["ratio"] > 0
    forget_rule = unlearn(model, forget, retain, CONFIG, weight_decay=LAM, held_out=held_out)
    assert forget_rule.diagnostics["step"]["null_control"]["step_norm"] == 0.0
