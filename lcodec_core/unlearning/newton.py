"""Damped block Newton steps on the retained objective (docs/ALGORITHM.md, section 8 (Exact
damped Newton iterations)).

One step solves (H + mu I) d = b on the block P and sets v <- v + d, where H is the exact
Hessian of the retained objective f (see :class:`~lcodec_core.unlearning.block.BlockObjective`) and
    b = g_U = (1/(n-k)) sum_{i in U} [grad l(w*, z_i) + lam w*]     ("forget_gradient"), or
    b = -grad f(v)                                                   ("retain_gradient").
The two agree at an exact optimum of the training objective; a trained network never is one,
so "retain_gradient" is the default (it is the Newton step on the objective we want to reach).

Robustness on a non-convex network:
- damping mu is chosen from the data: mu = 0 when H is positive definite, else
  -lambda_min(H) + lam (explicit) and Levenberg-Marquardt growth when a step fails;
- a backtracking line search along the Newton direction (Armijo rule) accepts a step only
  if the retained objective decreases enough;
- up to ``newton_steps`` steps are taken, stopping when the gradient norm falls below a
  tolerance (several steps are needed when the forget set moved the optimum far);
- conjugate gradient (large p) stops at negative curvature;
- non-finite iterates are never accepted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .block import BlockObjective

log = logging.getLogger(__name__)


@dataclass
class NewtonReport:
    """Diagnostics of the solve."""
    solver: str
    rhs: str
    steps: int = 0
    rejected_steps: int = 0
    damping: list[float] = field(default_factory=list)
    smallest_eigenvalue: float | None = None
    negative_curvature: bool = False
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    grad_norm_before: float = float("nan")
    grad_norm_after: float = float("nan")


def solve_explicit(hessian: torch.Tensor, rhs: torch.Tensor, damping: float) -> torch.Tensor:
    """d = (H + mu I)^-1 b with a Cholesky factorisation in float64."""
    eye = torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    factor, info = torch.linalg.cholesky_ex(hessian + damping * eye)
    if int(info) != 0:
        raise torch.linalg.LinAlgError("H + mu I is not positive definite")
    return torch.cholesky_solve(rhs.double().unsqueeze(1), factor).squeeze(1)


def conjugate_gradient(hvp, rhs: torch.Tensor, damping: float, iterations: int,
                       tolerance: float = 1e-6) -> tuple[torch.Tensor, bool]:
    """Approximately solve (H + mu I) x = b with CG; stop at negative curvature.

    Returns (x, hit_negative_curvature). On negative curvature at the first iteration the
    steepest-descent direction b, scaled by 1/(mu + 1), is returned.
    """
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rr = residual.dot(residual)
    target = tolerance * float(rhs.norm())
    for iteration in range(iterations):
        hd = hvp(direction) + damping * direction
        curvature = direction.dot(hd)
        if curvature <= 0:
            return (x if iteration else rhs / (damping + 1.0)), True
        alpha = rr / curvature
        x = x + alpha * direction
        residual = residual - alpha * hd
        rr_new = residual.dot(residual)
        if float(rr_new.sqrt()) < target:
            break
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return x, False


def block_newton(objective: BlockObjective, *, rhs: str = "retain_gradient",
                 forget_rhs: torch.Tensor | None = None, solver: str = "explicit",
                 max_steps: int = 10, damping: float | None = None, cg_iterations: int = 50,
                 cg_tolerance: float = 1e-6,
                 gradient_tolerance: float = 1e-2, on_step=None) -> tuple[torch.Tensor, NewtonReport]:
    """Damped Newton on f over the block, starting from the trained weights.

    Parameters
    ----------
    objective : the retained objective on P.
    rhs : "retain_gradient" (b = -grad f(v) every step) or "forget_gradient" (b = g_U,
        given as ``forget_rhs`` (p,), for the first step; later steps use -grad f(v)).
    solver : "explicit" (p x p Hessian, Cholesky) or "cg" (Hessian-vector products).
    max_steps : at most this many accepted steps; stops early once |grad f| has fallen by
        the factor ``gradient_tolerance``.
    damping : a fixed extra damping mu >= 0; None chooses it from the data.
    Returns (v_new (p,), report). v_new is finite (otherwise ``FloatingPointError``).
    """
    v = objective.v0.clone()
    lam = objective.weight_decay
    report = NewtonReport(solver=solver, rhs=rhs)
    loss = objective.loss(v)
    gradient = objective.gradient(v)
    report.loss_before, report.grad_norm_before = loss, float(gradient.norm())
    mu = damping
    for step in range(max_steps):
        if step and float(gradient.norm()) <= gradient_tolerance * report.grad_norm_before:
            break
        if rhs == "forget_gradient" and step == 0:
            if forget_rhs is None:
                raise ValueError("rhs='forget_gradient' needs forget_rhs (g_U)")
            b = forget_rhs
        else:
            b = -gradient
        hessian = objective.hessian(v) if solver == "explicit" else None
        hvp = objective.hvp_operator(v) if solver == "cg" else None
        if hessian is not None and mu is None:
            smallest = float(torch.linalg.eigvalsh(hessian)[0])
            report.smallest_eigenvalue = smallest if step == 0 else report.smallest_eigenvalue
            mu_step = 0.0 if smallest > 0.1 * lam else (-smallest + lam)
        else:
            mu_step = 0.0 if mu is None else mu
        accepted = False
        for attempt in range(6):
            try:
                if hessian is not None:
                    direction = solve_explicit(hessian, b, mu_step).to(v.dtype)
                else:
                    direction, negative = conjugate_gradient(hvp, b, mu_step, cg_iterations,
                                                             cg_tolerance)
                    report.negative_curvature |= negative
            except torch.linalg.LinAlgError:
                mu_step = max(mu_step, lam) * 10
                continue
            if rhs == "forget_gradient" and step == 0:
                # the paper's single step w + H^-1 g_U, taken as is
                candidate = v + direction
                accepted = bool(torch.isfinite(candidate).all())
                candidate_loss = objective.loss(candidate) if accepted else float("nan")
                break
            candidate, candidate_loss = _backtrack(objective, v, loss, gradient, direction)
            if candidate is not None:
                accepted = True
                break
            report.rejected_steps += 1
            mu_step = max(mu_step, lam) * 10
        if not accepted:
            log.info("block Newton: no decreasing step at step %d; stopping", step)
            break
        report.damping.append(mu_step)
        v, loss = candidate, candidate_loss
        gradient = objective.gradient(v)
        report.steps += 1
        if on_step is not None:
            on_step(step + 1, max_steps, loss)
    if not torch.isfinite(v).all():
        raise FloatingPointError("block Newton produced non-finite weights; the model is unchanged")
    report.loss_after, report.grad_norm_after = loss, float(gradient.norm())
    return v, report


def _backtrack(objective: BlockObjective, v: torch.Tensor, loss: float, gradient: torch.Tensor,
               direction: torch.Tensor, shrink: float = 0.5, tries: int = 8,
               armijo: float = 1e-4) -> tuple[torch.Tensor | None, float]:
    """Largest t in {1, 1/2, ..., 1/128} with f(v + t d) <= f(v) + c t grad.d (Armijo).

    Returns (v + t d, f(v + t d)), or (None, nan) when d is not a descent direction or no t
    decreases f enough.
    """
    slope = float(gradient.dot(direction))
    if not slope < 0:
        return None, float("nan")
    t = 1.0
    for _ in range(tries):
        candidate = v + t * direction
        if torch.isfinite(candidate).all():
            candidate_loss = objective.loss(candidate)
            if candidate_loss <= loss + armijo * t * slope:
                return candidate, candidate_loss
        t *= shrink
    return None, float("nan")
