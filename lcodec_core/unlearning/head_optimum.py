"""The linear head at the optimum of the retained objective, features fixed: the deep part of
the default removal (docs/ALGORITHM.md, "Engine v3").

With every layer before the head fixed, the retained objective restricted to the head
(weight W (K, d), bias b (K,)) is softmax regression with weight decay,

    F_r(W, b) = (1/N) sum_{i retained} CE(W f_i + b, y_i) + (lam/2) (|W|^2 + |b|^2),

strongly convex (lam > 0), so Newton's method converges to its unique optimum. We run
Newton-CG in float64 on the cached features f_i (N, d): the gradient

    grad = (1/N) (P - Y)^T [F, 1] + lam [W, b]         (P softmax (N, K), Y one-hot)

and exact Hessian-vector products (V (K, d+1) -> (1/N) S^T [F, 1] + lam V with
S_i = p_i * z_i - p_i (p_i . z_i), z_i = V [f_i, 1]), conjugate gradients to a relative
residual min(0.5, sqrt|grad|) (the classic forcing term, superlinear convergence), and an
Armijo backtracking line search. It stops when |grad| <= ``tolerance``.

The optimum lies in the row space of [F, 1] (at the optimum lam theta = -(1/N) (P - Y)^T [F, 1]),
so the solve runs in the coordinates of its right singular vectors (r <= min(N, d+1) per
class), where a diagonal (Jacobi) preconditioner captures the features' scales: 5-10x fewer
CG iterations than plain CG on the default model. The part of the starting head outside that
row space is set to 0, its value at the optimum.

Why the whole head: the smallest step that stops a person being predicted lowers their
output by about a constant and leaves everything else the model learnt about them (measured
on engine v2: margin ranking AUC 1.00, one constant on the logit brings every photo back).
At the retained optimum the head holds no trace of the forgotten photos that the features do
not carry, which is what a model retrained without them has (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class HeadOptimum:
    """The head at the retained optimum and how it was reached.

    weight (K, d), bias (K,) or None: float64. ``newton_steps``, ``cg_iterations``: work done;
    ``gradient_norm_start`` / ``gradient_norm``: |grad F_r| of the head before and after;
    ``converged``: |grad F_r| <= the tolerance; ``objective``: F_r at the optimum.
    """
    weight: torch.Tensor
    bias: torch.Tensor | None
    newton_steps: int
    cg_iterations: int
    gradient_norm_start: float
    gradient_norm: float
    tolerance: float
    converged: bool
    objective: float

    def report(self) -> dict:
        return {"newton_steps": self.newton_steps, "cg_iterations": self.cg_iterations,
                "gradient_norm_start": self.gradient_norm_start,
                "gradient_norm": self.gradient_norm, "tolerance": self.tolerance,
                "converged": self.converged, "objective": self.objective}


def _augmented(features: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """[F, 1] (N, d+1) when the head has a bias, else F (N, d)."""
    if not with_bias:
        return features
    return torch.cat([features, features.new_ones(len(features), 1)], dim=1)


def _objective(theta: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, lam: float):
    """(F_r, softmax P (N, K)) at theta (K, d+1)."""
    logits = x @ theta.T
    value = F.cross_entropy(logits, targets) + 0.5 * lam * theta.pow(2).sum()
    return float(value), torch.softmax(logits, dim=1)


def _gradient(theta, x, onehot, probs, lam):
    return (probs - onehot).T @ x / len(x) + lam * theta


def _hvp(v, x, probs, lam):
    z = x @ v.T                                               # (N, K)
    s = probs * z - probs * (probs * z).sum(1, keepdim=True)  # softmax Jacobian times z
    return s.T @ x / len(x) + lam * v


def _jacobi(x, probs, lam):
    """Diagonal of the Hessian (K, D): (1/N) sum_i p_ik (1 - p_ik) x_ij^2 + lam."""
    return (probs * (1 - probs)).T @ x.pow(2) / len(x) + lam


def _conjugate_gradient(matvec, rhs, diagonal, tolerance, max_iterations):
    """Solve A d = rhs for symmetric positive definite A by conjugate gradients preconditioned
    with ``diagonal`` (A's diagonal), to |r| <= tolerance |rhs|; (d, iterations)."""
    d = torch.zeros_like(rhs)
    r = rhs.clone()
    z = r / diagonal
    p = z.clone()
    rz = float((r * z).sum())
    stop = (tolerance ** 2) * float((r * r).sum())
    for it in range(1, max_iterations + 1):
        ap = matvec(p)
        alpha = rz / float((p * ap).sum())
        d += alpha * p
        r -= alpha * ap
        if float((r * r).sum()) <= stop:
            return d, it
        z = r / diagonal
        rz_new = float((r * z).sum())
        p = z + (rz_new / rz) * p
        rz = rz_new
    return d, max_iterations


def retained_head_optimum(features: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None, weight_decay: float, *,
                          tolerance: float = 1e-7, max_newton_steps: int = 30,
                          max_cg_iterations: int = 60) -> HeadOptimum:
    """Newton-CG from (weight, bias) to the optimum of F_r over the head (module docstring).

    features (N, d): the head's inputs on the retained photos; targets (N,) long;
    weight (K, d), bias (K,) or None: the starting head; weight_decay: lam > 0.
    """
    if len(features) == 0:
        raise ValueError("the retained set is empty: the head has no objective to minimise")
    if not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0 for a strongly convex head; got {weight_decay}")
    with_bias = bias is not None
    x = _augmented(features.detach().double(), with_bias)
    theta = (torch.cat([weight.detach().double(), bias.detach().double().view(-1, 1)], dim=1)
             if with_bias else weight.detach().double().clone())
    targets = targets.to(x.device)
    onehot = F.one_hot(targets, theta.shape[0]).double()
    lam = float(weight_decay)
    start_value, probs = _objective(theta, x, targets, lam)
    start_norm = float(_gradient(theta, x, onehot, probs, lam).norm())
    if start_norm <= tolerance:          # already there: the head is returned bit for bit
        return HeadOptimum(weight=weight.detach().double().clone(),
                           bias=None if bias is None else bias.detach().double().clone(),
                           newton_steps=0, cg_iterations=0, gradient_norm_start=start_norm,
                           gradient_norm=start_norm, tolerance=tolerance, converged=True,
                           objective=start_value)
    # The optimum lies in the row space of x (its gradient is lam times the part outside it):
    # solve in the coordinates of x's right singular vectors, where the features are
    # uncorrelated and a diagonal preconditioner captures their scales.
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    basis = vh[singular > singular[0] * 1e-10].T                          # (D, r), r <= min(N, D)
    full_x, x = x, x @ basis                                             # (N, r)
    theta = theta @ basis                                                # (K, r)
    value, probs = _objective(theta, x, targets, lam)
    grad = _gradient(theta, x, onehot, probs, lam)
    norm = float(grad.norm())
    steps = cg_total = 0
    while norm > tolerance and steps < max_newton_steps:
        forcing = min(0.5, math.sqrt(norm))
        direction, used = _conjugate_gradient(lambda v: _hvp(v, x, probs, lam), -grad,
                                              _jacobi(x, probs, lam), forcing, max_cg_iterations)
        cg_total += used
        slope = float((grad * direction).sum())
        size = 1.0
        while True:                                            # Armijo backtracking
            candidate = theta + size * direction
            new_value, new_probs = _objective(candidate, x, targets, lam)
            if new_value <= value + 1e-4 * size * slope or size < 1e-8:
                break
            size *= 0.5
        theta, value, probs = candidate, new_value, new_probs
        grad = _gradient(theta, x, onehot, probs, lam)
        norm = float(grad.norm())
        steps += 1
    theta = theta @ basis.T                                              # back to (K, D)
    value, probs = _objective(theta, full_x, targets, lam)
    norm = float(_gradient(theta, full_x, onehot, probs, lam).norm())
    w = theta[:, :-1].clone() if with_bias else theta.clone()
    b = theta[:, -1].clone() if with_bias else None
    return HeadOptimum(weight=w, bias=b, newton_steps=steps, cg_iterations=cg_total,
                       gradient_norm_start=start_norm, gradient_norm=norm, tolerance=tolerance,
                       converged=norm <= tolerance, objective=value)
