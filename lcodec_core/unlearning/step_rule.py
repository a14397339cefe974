"""How far to step: the damping mu of d(mu) = (H + mu I)^-1 g_U, chosen per request.

Why a rule is needed. At a fitted network the block curvature G^T G / N is tiny next to lam,
so the undamped step g_U / lam overshoots wildly, and no single mu suits every request (the
working window measured on the default model was 0.01-0.05 and moved per identity). The
retrained model is what we want to imitate, but it is not available; what is available is
what it would do to the forgotten photos:

- **a removed class** (every training photo of a class is in the forget set, none retained):
  a model trained without any photo of a class does not predict it. Target: every such photo
  is no longer classified as its class, and the model is no more confident in that class than
  a uniform guess (its loss is at least ln K, K classes).
- **scattered photos** (their classes keep other training photos): a model trained without
  them treats them as never-seen photos of people it still knows. Target: the forget photos'
  mean log-loss reaches the mean log-loss the model gives held-out photos of the same classes
  (the quantity a loss-based membership attack reads). Without held-out photos there is no
  reference and the undamped step (mu = 0, the influence-function estimate of retraining) is
  the target.

The rule takes the **smallest** step that meets the target: mu is scanned from large (a step of
1e-4 of the block's norm) to 0 on a grid of factor sqrt(10), then bisected in log mu between
the last miss and the first hit. A guard, like a trust region, protects what must not change:
retained accuracy may not fall by more than ``retain_tolerance`` and held-out accuracy of
other classes by more than ``held_out_tolerance``. If the target can only be met by breaking
the guard, the largest step that keeps the guard is taken and the report says the target was
not met. Each candidate is judged by a real forward pass of the changed model, so the report's
numbers are measured, not predicted.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch.nn import functional as F

from ..parallel.shard import ONE_PROCESS, RetainedShard

RULES = {
    "removed_class": "smallest step after which no forgotten photo of a removed class is "
                     "predicted as it and its loss is at least ln K",
    "held_out_loss": "smallest step raising the forgotten photos' mean log-loss to that of "
                     "held-out photos of the same classes",
    "undamped": "no held-out reference for these photos: the undamped step (mu = 0)",
    "mixed": "removed classes and scattered photos: both targets at once",
}


@dataclass(frozen=True)
class StepTarget:
    """What the step must achieve, measured on the model before the removal.

    removed : (k,) bool, forget photos whose class has no retained training photo.
    reference_log_loss : mean log-loss of held-out photos of the scattered photos' classes
        (None: no reference).
    minimum_removed_loss : ln K.
    retain_accuracy_floor, held_out_accuracy_floor : the guard (None: not guarded).
    """
    removed: torch.Tensor
    reference_log_loss: float | None
    minimum_removed_loss: float
    retain_accuracy_floor: float
    held_out_accuracy_floor: float | None

    @property
    def rule(self) -> str:
        has_removed, has_scattered = bool(self.removed.any()), bool((~self.removed).any())
        if has_removed and has_scattered:
            return "mixed"
        if has_removed:
            return "removed_class"
        return "held_out_loss" if self.reference_log_loss is not None else "undamped"


@dataclass
class StepCheck:
    """One candidate damping, judged by a forward pass of the changed model."""
    damping: float
    step_norm: float
    target_met: bool
    removed_misclassified: float | None = None   # share of removed-class photos not predicted as theirs
    removed_min_loss: float | None = None
    scattered_log_loss: float | None = None
    retain_accuracy: float | None = None
    held_out_accuracy: float | None = None
    guard_ok: bool | None = None


@dataclass
class StepChoice:
    """The chosen damping and step, and how they were chosen."""
    damping: float
    step: torch.Tensor
    rule: str
    target_met: bool
    guard_limited: bool
    checks: list[StepCheck] = field(default_factory=list)

    def report(self) -> dict:
        chosen = next((c for c in self.checks if c.damping == self.damping and c.guard_ok is not None),
                      None)
        return {"rule": self.rule, "rule_text": RULES[self.rule], "damping": self.damping,
                "target_met": self.target_met, "guard_limited": self.guard_limited,
                "candidates_tried": len(self.checks),
                "chosen": asdict(chosen) if chosen is not None else None}


def target_status(step: dict) -> str:
    """One plain sentence on a step report's target (``StepChoice.report()`` keys)."""
    if step.get("target_met"):
        return "met."
    if step.get("guard_limited"):
        return ("not met; the step stopped where the kept or held-out photos would have "
                "started to suffer (the guard).")
    return "not met."


def log_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log of the per-sample cross-entropy, (M,) float64 (floored at 1e-12)."""
    losses = F.cross_entropy(logits.double(), targets, reduction="none")
    return losses.clamp_min(1e-12).log()


def accuracy_of(logits: torch.Tensor, targets: torch.Tensor,
                retained: RetainedShard = ONE_PROCESS) -> float:
    """Share of rows whose logits (M, K) pick their target (M,); over every rank's rows when
    ``retained`` splits them (nan for no rows)."""
    if retained.distributed:
        return retained.mean((logits.argmax(1) == targets).double(), "accuracy")
    return float((logits.argmax(1) == targets).double().mean()) if len(targets) else float("nan")


@dataclass
class StepProblem:
    """Everything the rule evaluates: closures over the block objective.

    solve(mu) -> d (p,); forget_logits(d), retain_logits(d), held_out_logits(d) -> (M, K)
    logits of the changed model (held_out_logits None when there is no held-out data).
    ``retained``: how the retained rows are split over processes (retain_logits and
    retain_targets are this rank's rows); default one process.
    """
    solve: Callable[[float], torch.Tensor]
    forget_logits: Callable[[torch.Tensor], torch.Tensor]
    retain_logits: Callable[[torch.Tensor], torch.Tensor]
    held_out_logits: Callable[[torch.Tensor], torch.Tensor] | None
    forget_targets: torch.Tensor
    retain_targets: torch.Tensor
    held_out_targets: torch.Tensor | None    # targets of the held-out rows used by the guard
    block_norm: float
    rhs_norm: float
    weight_decay: float
    smallest_damping: float = 0.0            # mu must stay above this (indefinite exact Hessian)
    retained: RetainedShard = ONE_PROCESS    # the retained rows' split over processes


def _check(problem: StepProblem, target: StepTarget, mu: float, step: torch.Tensor,
           guard: bool) -> StepCheck:
    logits = problem.forget_logits(step)
    y = problem.forget_targets
    check = StepCheck(damping=mu, step_norm=float(step.norm()), target_met=True)
    removed = target.removed
    if removed.any():
        losses = F.cross_entropy(logits[removed].double(), y[removed], reduction="none")
        check.removed_misclassified = 1.0 - accuracy_of(logits[removed], y[removed])
        check.removed_min_loss = float(losses.min())
        check.target_met &= (check.removed_misclassified == 1.0 and
                             check.removed_min_loss >= target.minimum_removed_loss)
    if (~removed).any():
        check.scattered_log_loss = float(log_losses(logits[~removed], y[~removed]).mean())
        if target.reference_log_loss is not None:
            check.target_met &= check.scattered_log_loss >= target.reference_log_loss
        else:
            check.target_met &= mu <= problem.smallest_damping
    if guard:
        check.retain_accuracy = accuracy_of(problem.retain_logits(step), problem.retain_targets,
                                            problem.retained)
        check.guard_ok = check.retain_accuracy >= target.retain_accuracy_floor
        if problem.held_out_logits is not None and target.held_out_accuracy_floor is not None:
            check.held_out_accuracy = accuracy_of(problem.held_out_logits(step),
                                                  problem.held_out_targets)
            check.guard_ok &= check.held_out_accuracy >= target.held_out_accuracy_floor
    return check


def choose_step(problem: StepProblem, target: StepTarget, *, bisections: int = 6) -> StepChoice:
    """The smallest step meeting ``target`` within the guard (see the module docstring)."""
    lam = problem.weight_decay
    floor = problem.smallest_damping
    # mu_high: the step is about 1e-4 of the block's norm (|d| ~ |b| / (lam + mu))
    mu_high = max(problem.rhs_norm / (1e-4 * max(problem.block_norm, 1e-6)) - lam, 10 * lam, floor * 10)
    grid, mu = [], mu_high
    while mu > max(floor, lam * 1e-3):
        grid.append(mu)
        mu /= math.sqrt(10)
    grid.append(floor)
    checks: list[StepCheck] = []
    cache: dict[float, torch.Tensor] = {}

    def evaluate(mu: float, guard: bool) -> StepCheck:
        if mu not in cache:
            cache[mu] = problem.solve(mu)
        check = _check(problem, target, mu, cache[mu], guard)
        checks.append(check)
        return check

    miss, hit = None, None
    for mu in grid:
        if evaluate(mu, guard=False).target_met:
            hit = mu
            break
        miss = mu
    if hit is not None and miss is not None:
        for _ in range(bisections):       # largest mu (smallest step) that still hits
            middle = math.sqrt(miss * hit) if hit > 0 else miss / 10
            if evaluate(middle, guard=False).target_met:
                hit = middle
            else:
                miss = middle
    chosen = hit if hit is not None else grid[-1]
    final = evaluate(chosen, guard=True)
    if final.guard_ok:
        return StepChoice(chosen, cache[chosen], target.rule, final.target_met, False, checks)
    # The target needs more than the guard allows: back off to the largest step that keeps it.
    smaller = [mu for mu in grid if mu > chosen]
    for mu in reversed(smaller):
        if evaluate(mu, guard=True).guard_ok:
            return StepChoice(mu, cache[mu], target.rule, False, True, checks)
    return StepChoice(grid[0], cache.get(grid[0], problem.solve(grid[0])), target.rule, False, True,
                      checks)


def build_target(forget_targets: torch.Tensor, retain_targets: torch.Tensor, num_classes: int,
                 retain_logits: torch.Tensor, held_out_logits: torch.Tensor | None = None,
                 held_out_targets: torch.Tensor | None = None, *, retain_tolerance: float = 0.01,
                 held_out_tolerance: float = 0.03,
                 retained: RetainedShard = ONE_PROCESS) -> tuple[StepTarget, torch.Tensor | None]:
    """The target and guard for one request, from the model before the removal.

    forget_targets (k,), retain_targets (N,) long; retain_logits (N, K) and held_out_logits
    (M, K) of the model before. Returns (target, guard_rows): ``guard_rows`` (M,) bool selects
    the held-out photos the guard watches (those of classes that are not removed), or None.
    With ``retained`` split over processes, retain_targets and retain_logits are this rank's
    rows and both the removed classes and the guard's floor read every rank's.
    """
    removed = ~retained.any_rows(torch.isin(forget_targets, retain_targets), "classes")
    reference, guard_rows, held_out_floor = None, None, None
    if held_out_logits is not None and held_out_targets is not None and len(held_out_targets):
        scattered_classes = forget_targets[~removed].unique()
        same = torch.isin(held_out_targets, scattered_classes)
        if same.any():
            reference = float(log_losses(held_out_logits[same], held_out_targets[same]).mean())
        guard_rows = ~torch.isin(held_out_targets, forget_targets[removed].unique())
        if guard_rows.any():
            held_out_floor = accuracy_of(held_out_logits[guard_rows],
                                         held_out_targets[guard_rows]) - held_out_tolerance
        else:
            guard_rows = None
    retain_floor = accuracy_of(retain_logits, retain_targets, retained) - retain_tolerance
    target = StepTarget(removed=removed, reference_log_loss=reference,
                        minimum_removed_loss=math.log(num_classes),
                        retain_accuracy_floor=retain_floor, held_out_accuracy_floor=held_out_floor)
    return target, guard_rows
