"""Block curvature of the retained objective, factorised once and solved for any damping.

Every solver answers ``solve(b, mu)``: d = (H + mu I)^-1 b on the block P (p scalars), where
H already contains the weight-decay term lam I. The step rule (:mod:`.step_rule`) tries many
values of mu per request, so the factorisation is done once and each solve is cheap.

- :class:`FisherCurvature` (the default, ``solver="fisher"``): the empirical Fisher of the
  block from per-sample gradients over the retained rows,
      H = G^T G / N + lam I,   G (N, p), row i = grad_v CE(f(x_i), y_i).
  Its cost is N per-sample gradients through the part of the network after the block
  (``torch.func.vmap``), whichever layer the block is in, plus one eigendecomposition in
  min(N, p) dimensions. With B = G / sqrt(N) and N <= p the Woodbury identity gives
      (B^T B + a I)^-1 b = (b - B^T U diag(1 / (s + a)) U^T B b) / a,   B B^T = U diag(s) U^T,
  otherwise (p < N) B^T B = V diag(s) V^T is decomposed directly. Memory: G, never p x p
  when p > N. Split over W processes (:mod:`lcodec_core.parallel`), each holds its rows G_r:
  for p < N the p x p sum G^T G = sum_r G_r^T G_r is all-reduced (8 p^2 bytes), for N <= p
  the rows are all-gathered (8 N p bytes); either way 8 p min(N, p) bytes, never more than
  the single-process form already holds in memory.
- :class:`ExplicitCurvature` (``solver="explicit"``): the exact p x p Hessian block
  (p Hessian-vector products), eigendecomposed; reports the smallest eigenvalue.
- :class:`ConjugateGradientCurvature` (``solver="cg"``): exact Hessian-vector products, one
  CG run per solve; stops at negative curvature. The test oracle for large blocks.
The empirical Fisher is positive semi-definite, so H + mu I is positive definite for any
mu >= 0; the exact Hessian of a network need not be.
"""
from __future__ import annotations

import math

import torch

from ..parallel.shard import ONE_PROCESS, RetainedShard
from .newton import conjugate_gradient


class FisherCurvature:
    """H = G^T G / N + lam I from per-sample gradients ``G`` (N, p); solves in float64.

    With ``shard`` (W processes), ``per_sample_gradients`` is this rank's rows G_r (N_r, p)
    and N counts every rank's rows; every rank ends with the same factorisation."""

    kind = "fisher"

    def __init__(self, per_sample_gradients: torch.Tensor, weight_decay: float,
                 shard: RetainedShard = ONE_PROCESS):
        gradients = per_sample_gradients.double()                       # (N_r, p); N_r = N in one process
        self.size = gradients.shape[1]
        count = shard.count(len(gradients), "fisher_count")             # N
        self.weight_decay = float(weight_decay)
        self.rows = count
        self.mean_gradient = (shard.mean_rows(gradients, "fisher_mean") if count
                              else torch.zeros(self.size, dtype=torch.float64))
        scaled = gradients / math.sqrt(max(count, 1))                   # B (N_r, p)
        self._dual = count <= self.size
        if self._dual:
            scaled = shard.gather_rows(scaled, "fisher_rows")           # B (N, p), every rank's rows
            values, vectors = torch.linalg.eigh(scaled @ scaled.T)      # (N,), (N, N)
            self._basis = scaled.T @ vectors                            # B^T U (p, N)
        else:
            gram = shard.all_reduce_sum(scaled.T @ scaled, "fisher_gram")   # B^T B (p, p)
            values, vectors = torch.linalg.eigh(gram)                   # (p,), (p, p)
            self._basis = vectors
        self._values = values.clamp_min(0.0)
        self.largest_eigenvalue = float(self._values.max()) + self.weight_decay if count else self.weight_decay
        self.smallest_eigenvalue = self.weight_decay  # PSD Fisher: lam is a lower bound

    def solve(self, rhs: torch.Tensor, damping: float) -> torch.Tensor:
        """(G^T G / N + (lam + mu) I)^-1 b, shape (p,)."""
        a = self.weight_decay + damping
        b = rhs.double()
        if self._dual:
            # columns of B^T U have squared norm s: (B^T B + aI)^-1 b
            #   = b/a - (B^T U) diag(1 / (a (s + a))) (B^T U)^T b
            coefficients = self._basis.T @ b                            # (N,)
            return b / a - self._basis @ (coefficients / (a * (self._values + a)))
        return self._basis @ ((self._basis.T @ b) / (self._values + a))


class ExplicitCurvature:
    """The exact block Hessian ``hessian`` (p, p), including lam I, eigendecomposed once."""

    kind = "explicit"

    def __init__(self, hessian: torch.Tensor, weight_decay: float):
        self.weight_decay = float(weight_decay)
        self.size = len(hessian)
        values, self._vectors = torch.linalg.eigh(hessian.double())
        self._values = values
        self.smallest_eigenvalue = float(values[0])
        self.largest_eigenvalue = float(values[-1])

    def solve(self, rhs: torch.Tensor, damping: float) -> torch.Tensor:
        """(H + mu I)^-1 b; mu must make H + mu I positive definite."""
        shifted = self._values + damping
        if float(shifted.min()) <= 0:
            raise torch.linalg.LinAlgError(f"H + mu I is not positive definite (mu = {damping:.3g}, "
                                           f"smallest eigenvalue {self.smallest_eigenvalue:.3g})")
        return self._vectors @ ((self._vectors.T @ rhs.double()) / shifted)


class ConjugateGradientCurvature:
    """Exact Hessian-vector products ``hvp`` (u -> H u, lam included); CG per solve."""

    kind = "cg"

    def __init__(self, hvp, size: int, weight_decay: float, iterations: int = 20,
                 tolerance: float = 0.1):
        self._hvp, self.size = hvp, size
        self.weight_decay = float(weight_decay)
        self.iterations, self.tolerance = iterations, tolerance
        self.smallest_eigenvalue = None
        self.largest_eigenvalue = None
        self.negative_curvature = False

    def solve(self, rhs: torch.Tensor, damping: float) -> torch.Tensor:
        x, negative = conjugate_gradient(self._hvp, rhs.to(torch.float32), damping,
                                         self.iterations, self.tolerance)
        self.negative_curvature |= negative
        return x.double()


def curvature_effect(step: torch.Tensor, rhs: torch.Tensor, weight_decay: float,
                     damping: float) -> dict[str, float]:
    """How much the curvature shaped a step d = (H + mu I)^-1 b.

    Compares d with the curvature-free step b / (lam + mu): the angle between them (degrees)
    and |d| / |b / (lam + mu)|. An angle near 0 and a ratio near 1 mean the damping, not the
    curvature, set the step (damped gradient ascent on the forget loss).
    """
    plain = rhs.double() / (weight_decay + damping)
    norm_step, norm_plain = float(step.norm()), float(plain.norm())
    if norm_step == 0 or norm_plain == 0:
        return {"angle_deg": 0.0, "norm_ratio": 0.0 if norm_plain else float("nan")}
    cosine = float(step.double().dot(plain)) / (norm_step * norm_plain)
    return {"angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, cosine)))),
            "norm_ratio": norm_step / norm_plain}
