"""The default update: one step on the selected block along the forget set's gradient.

    d(mu) = (H + mu I)^-1 b,   w_new = w* + d  on the block P (every other weight unchanged)

with, by default (``rhs="forget_gradient"``), the removal-specific right-hand side
    b = g_U = (1/(n-k)) sum_{i in U} [grad l(w*, z_i) + lam w*]
(the paper's Algorithm 1: w' = w + H'^-1 grad f / (n-1) for k = 1), curvature H from
:mod:`.curvature` (empirical Fisher of the block over the retained rows by default), and mu
chosen per request by :mod:`.step_rule`.

What is reported beside the step (``diagnostics["step"]``):
- **null control**: the same update computed with nothing removed (U empty), with the same
  curvature and mu. For g_U it is exactly 0; for ``rhs="retain_gradient"`` it is
  (H + mu I)^-1 (-grad F(w*)), the part of the step that comes from the model not being at a
  stationary point, not from the removal. ``ratio`` = |d_control| / |d|.
- **stationarity** of the block: |grad F(w*)| on P (whole training set, lam included) beside
  |g_U|. When the first is not small next to the second, ``rhs="retain_gradient"`` would be
  dominated by what is not the removal.
- **curvature effect**: angle and norm ratio between d and the curvature-free b / (lam + mu).
"""
from __future__ import annotations

import torch

from .block import BlockObjective
from .curvature import (ConjugateGradientCurvature, ExplicitCurvature, FisherCurvature,
                        curvature_effect)
from ..data import ImageDataset
from .step_rule import StepProblem, build_target, choose_step, log_losses


def forget_gradient(objective: BlockObjective, forget: ImageDataset, n: int,
                    per_sample: torch.Tensor | None = None) -> torch.Tensor:
    """g_U on the block, (p,) float64: (1/(n-k)) sum_U [grad l(w*, z_i) + lam v*].

    ``per_sample``: the forget rows' per-sample gradients (k, p), if already computed."""
    k = len(forget)
    if per_sample is None:
        boundary = objective.boundary_of(forget.images)
        per_sample = objective.per_sample_gradients(objective.v0, boundary,
                                                    forget.targets.to(objective.v0.device))
    v0 = objective.v0.double()
    return (per_sample.double().sum(0) + k * objective.weight_decay * v0) / (n - k)


def block_curvature(objective: BlockObjective, solver: str, *, explicit_max_params: int = 40,
                    cg_iterations: int = 20, cg_tolerance: float = 0.1):
    """The curvature object for ``solver`` (fisher, explicit, cg, or auto: explicit up to
    ``explicit_max_params`` scalars, else cg), built once at the trained weights."""
    v0, lam = objective.v0, objective.weight_decay
    if solver == "fisher":
        return FisherCurvature(objective.per_sample_gradients(v0), lam, objective.shard)
    if solver == "auto":
        solver = "explicit" if objective.size <= explicit_max_params else "cg"
    if solver == "explicit":
        return ExplicitCurvature(objective.hessian(v0), lam)
    return ConjugateGradientCurvature(objective.hvp_operator(v0), objective.size, lam,
                                      cg_iterations, cg_tolerance)


def targeted_step(objective: BlockObjective, forget: ImageDataset, held_out: ImageDataset | None,
                  config, *, n: int, on_progress=None) -> tuple[torch.Tensor, dict]:
    """The new block v* + d (p,) and the step's report (see the module docstring).

    ``objective`` holds the retained rows; ``held_out`` (optional) gives the scattered photos'
    reference loss and the guard on other classes' held-out accuracy.
    """
    def emit(fraction, message):
        if on_progress is not None:
            on_progress({"phase": "newton", "fraction": float(fraction), "message": message})

    k = len(forget)
    v0, lam = objective.v0, objective.weight_decay
    device = v0.device
    emit(0.0, f"curvature of p = {objective.size} parameters ({config.solver})")
    forget_boundary = objective.boundary_of(forget.images)
    forget_targets = forget.targets.to(device)
    forget_rows = objective.per_sample_gradients(v0, forget_boundary, forget_targets)   # (k, p)
    g_forget = forget_gradient(objective, forget, n, per_sample=forget_rows)           # (p,)
    all_rows = objective.curvature_count == objective.count
    if config.solver == "fisher" and all_rows:
        # the per-sample pass also gives the retained logits at w*, for the guard's floor
        per_sample, before_retain = objective.per_sample_gradients(v0, with_logits=True)
        curvature = FisherCurvature(per_sample, lam, objective.shard)
    else:
        curvature = block_curvature(objective, config.solver,
                                    explicit_max_params=config.explicit_max_params,
                                    cg_iterations=config.cg_iterations,
                                    cg_tolerance=config.cg_tolerance)
        before_retain = objective.logits(v0)
    if curvature.kind == "fisher" and all_rows:                       # Fisher on every retained row
        retain_mean = curvature.mean_gradient                             # mean_retained grad l
    else:
        retain_mean = objective.gradient(v0).double() - lam * v0.double()
    grad_full = (retain_mean * (n - k) + forget_rows.double().sum(0)) / n + lam * v0.double()
    if config.rhs == "forget_gradient":
        rhs, control_rhs = g_forget, torch.zeros_like(g_forget)
    else:   # -grad F_r(w*) = g_U - n/(n-k) grad F(w*); with nothing removed: -grad F(w*)
        rhs, control_rhs = -(retain_mean + lam * v0.double()), -grad_full
    held_boundary = held_logits = held_targets = None
    if held_out is not None and len(held_out):
        held_boundary = objective.boundary_of(held_out.images)
        held_logits = objective.logits(v0, held_boundary)
        held_targets = held_out.targets.to(device)
    num_classes = before_retain.shape[1]
    target, guard_rows = build_target(forget_targets, objective.targets, num_classes, before_retain,
                                      held_logits, held_targets, retained=objective.shard)
    guard_boundary = None if guard_rows is None else [b[guard_rows] for b in held_boundary]
    smallest = curvature.smallest_eigenvalue
    v, choices, rhs_first, last_progress, remeasured = v0, [], rhs, float("-inf"), False
    for round_ in range(config.step_rounds):
        emit((round_ + 0.5) / config.step_rounds, f"round {round_ + 1}: choosing the step size")
        if round_:
            # the forget photos' gradient at the current point (the curvature is reused)
            rows_now = objective.per_sample_gradients(v, forget_boundary, forget_targets)
            rhs = (rows_now.double().sum(0) + k * lam * v.double()) / (n - k)
            if config.rhs == "retain_gradient":
                rhs = -(objective.gradient(v).double())
        base = v
        problem = StepProblem(
            solve=lambda mu, rhs=rhs: curvature.solve(rhs, mu).to(v0.dtype),
            forget_logits=lambda d, base=base: objective.logits(base + d, forget_boundary),
            retain_logits=lambda d, base=base: objective.logits(base + d),
            held_out_logits=None if guard_boundary is None else
            (lambda d, base=base: objective.logits(base + d, guard_boundary)),
            forget_targets=forget_targets, retain_targets=objective.targets,
            held_out_targets=None if guard_rows is None else held_targets[guard_rows],
            block_norm=float(v0.norm()), rhs_norm=float(rhs.norm()), weight_decay=lam,
            smallest_damping=0.0 if smallest is None or smallest > 0.1 * lam else -smallest + lam,
            retained=objective.shard)
        choice = choose_step(problem, target)
        progress = float(log_losses(objective.logits(base + choice.step, forget_boundary),
                                    forget_targets).mean())
        if round_ and progress <= last_progress:
            break     # a further round would not raise the forget loss: keep what we have
        choices.append(choice)
        v, last_progress = base + choice.step, progress
        if choice.target_met:
            break
        if choice.guard_limited:
            if curvature.kind != "fisher" or remeasured or round_ == config.step_rounds - 1:
                break
            remeasured = True   # once: each measurement costs as much as the first
            # The retained rows were fitted confidently at w*, so their curvature there barely
            # sees what breaks them; measured again where the guard stopped us, it does.
            curvature = FisherCurvature(objective.per_sample_gradients(v), lam, objective.shard)
    step = v - v0
    choice = choices[-1]       # the round kept: a round rejected above is never reported
    first_damping = choices[0].damping
    control = curvature.solve(control_rhs, first_damping)
    step_norm, control_norm = float(step.norm()), float(control.norm())
    first_step_norm = float(choices[0].step.norm())
    report = {
        "curvature": curvature.kind, "rhs": config.rhs, "parameters": objective.size,
        "curvature_rows": getattr(curvature, "rows", objective.curvature_count),
        "smallest_eigenvalue": curvature.smallest_eigenvalue,
        "largest_eigenvalue": curvature.largest_eigenvalue,
        **choice.report(),
        "rounds": [c.report() for c in choices],
        "step_norm": step_norm, "block_norm": float(v0.norm()),
        "curvature_effect": curvature_effect(choices[0].step, rhs_first, lam, first_damping),
        "null_control": {"step_norm": control_norm,
                         "ratio": control_norm / first_step_norm if first_step_norm else float("nan"),
                         "definition": "the same update with nothing removed (U empty)"},
        "stationarity": {"block_gradient_norm": float(grad_full.norm()),
                         "forget_gradient_norm": float(g_forget.norm()),
                         "ratio": float(grad_full.norm()) / max(float(g_forget.norm()), 1e-300)},
        "suffix_traced": objective.split.traced,
    }
    emit(1.0, f"step chosen by rule '{choice.rule}' (target {'met' if choice.target_met else 'not met'})")
    return v, report
