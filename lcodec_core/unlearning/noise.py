"""Calibrated Gaussian noise for (epsilon, delta)-forgetting (Sekhari et al. 2021).

    sigma = (gamma / epsilon) * sqrt(2 ln(1.25 / delta)),
    gamma = 2 M L^2 k^2 / (n^2 lam^3)

M: Hessian Lipschitz constant, L: loss Lipschitz constant, k: removed samples, n: training
samples before the removal, lam: weight decay (strong convexity). With the small lam used to
train networks, gamma is enormous (lam^3 in the denominator): the certified sigma then destroys
the model, which is why ``epsilon=None`` (no noise, no guarantee claimed) is the default.
"""
from __future__ import annotations

import math

import torch


def noise_sigma(*, epsilon: float | None, delta: float, n: int, k: int, weight_decay: float,
                hessian_lipschitz: float, loss_lipschitz: float) -> float:
    """sigma for the given guarantee; 0.0 when ``epsilon`` is None (no guarantee)."""
    if epsilon is None:
        return 0.0
    if not (epsilon > 0 and 0 < delta < 1 and n > k >= 1 and weight_decay > 0):
        raise ValueError(f"noise needs epsilon > 0, 0 < delta < 1, n > k >= 1 and weight_decay > 0; "
                         f"got epsilon={epsilon}, delta={delta}, n={n}, k={k}, weight_decay={weight_decay}")
    gamma = 2 * hessian_lipschitz * loss_lipschitz ** 2 * k ** 2 / (n ** 2 * weight_decay ** 3)
    return gamma / epsilon * math.sqrt(2 * math.log(1.25 / delta))


def add_noise(params: dict[str, torch.Tensor], sigma: float, rows: dict[str, list[int]] | None,
              seed: int) -> dict[str, torch.Tensor]:
    """New tensors with N(0, sigma^2) added on ``rows`` of each named parameter (all if None)."""
    if sigma == 0:
        return dict(params)
    generator = torch.Generator().manual_seed(seed)
    out = dict(params)
    for name in sorted(params if rows is None else rows):
        value = params[name]
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype) * sigma
        if rows is not None:
            mask = torch.zeros(value.shape[0], dtype=torch.bool)
            mask[rows[name]] = True
            noise[~mask] = 0
        out[name] = value + noise.to(value.device)
    return out
