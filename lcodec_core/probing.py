"""Probing: perturb each forget image and record the loss and every slice's activation.

For a forget set of k images and m perturbations each, the rows of all k * m perturbed copies
are pooled into one table (A, Y), so a single L-FOCI run selects the slices that carry the
forget set as a whole (for an identity, what its images share). Pooling, rather than a union
of per-image selections, keeps the selection size under ``max_slices`` and costs one search.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .slices import ActivationRecorder


@dataclass
class Probe:
    """activations: (k*m, D) float64; losses: (k*m,) float64; sample: (k*m,) long, which forget
    image each row perturbs."""
    activations: torch.Tensor
    losses: torch.Tensor
    sample: torch.Tensor


@torch.no_grad()
def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_perturbations: int,
          perturbation_std: float, seed: int = 0, batch_size: int = 256) -> Probe:
    """Record Y_j = CE(f(x + xi_j), y) and A_j (per-slice statistics) for xi_j ~ N(0, s^2 I).

    Parameters
    ----------
    images : (k, C, H, W) normalised forget images; labels : (k,) their true classes.
    num_perturbations : m >= 3 per image. perturbation_std : s.
    The model runs in eval mode (restored afterwards); the model is not modified.
    """
    if len(images) == 0:
        raise ValueError("the forget set is empty: nothing to probe")
    if num_perturbations < 3:
        raise ValueError(f"num_perturbations must be >= 3 (L-CODEC needs m >= 3); got {num_perturbations}")
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    k, m = len(images), num_perturbations
    sample = torch.arange(k).repeat_interleave(m)                      # (k*m,)
    was_training = model.training
    model.eval()
    activations, losses = [], []
    try:
        with ActivationRecorder(model) as recorder:
            for start in range(0, k * m, batch_size):
                rows = sample[start:start + batch_size]
                noise = torch.randn((len(rows),) + tuple(images.shape[1:]), generator=generator)
                batch = (images[rows] + perturbation_std * noise).to(device)   # (B, C, H, W)
                logits, acts = recorder.record(batch)                         # (B, K), (B, D)
                losses.append(F.cross_entropy(logits, labels[rows].to(device), reduction="none").cpu())
                activations.append(acts.cpu())
    finally:
        model.train(was_training)
    activations = torch.cat(activations).double()
    losses = torch.cat(losses).double()
    if not (torch.isfinite(activations).all() and torch.isfinite(losses).all()):
        raise ValueError("probing produced non-finite activations or losses; check the model's "
                         "weights and the input normalisation")
    return Probe(activations, losses, sample)
