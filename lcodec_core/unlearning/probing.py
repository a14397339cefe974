"""Probing: perturb each forget image and record the loss and every slice's activation.

For a forget set of k images and m perturbations each, the rows of all k * m perturbed copies
are pooled into one table (A, Y), so a single L-FOCI run selects the slices that carry the
forget set as a whole (for an identity, what its images share). Pooling, rather than a union
of per-image selections, keeps the selection size under ``max_slices`` and costs one search.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .slices import ActivationRecorder, enumerate_slices


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
    A private eval-mode copy of the model carries the hooks, so the caller's model (its mode,
    hooks and buffers) is never touched, even while another thread uses it.
    Raises ``ValueError`` when a loss or an activation is NaN or infinite.
    """
    if len(images) == 0:
        raise ValueError("the forget set is empty: nothing to probe")
    if num_perturbations < 3:
        raise ValueError(f"num_perturbations must be >= 3 (L-CODEC ranks need at least 3 rows); "
                         f"got {num_perturbations}. Use the default of 100")
    model = copy.deepcopy(model).eval()
    channels_last = images.ndim == 4
    if channels_last:  # faster convolutions on CPU (about 1.5x measured on the default model)
        model = model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    k, m = len(images), num_perturbations
    sample = torch.arange(k).repeat_interleave(m)                      # (k*m,)
    activations, losses = [], []
    with ActivationRecorder(model) as recorder:
        for start in range(0, k * m, batch_size):
            rows = sample[start:start + batch_size]
            noise = torch.randn((len(rows),) + tuple(images.shape[1:]), generator=generator)
            batch = (images[rows] + perturbation_std * noise).to(device)   # (B, C, H, W)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits, acts = recorder.record(batch)                         # (B, K), (B, D)
            targets = labels[rows].to(device)
            if logits.ndim != 2 or not (0 <= int(targets.min()) and int(targets.max()) < logits.shape[1]):
                raise ValueError(f"labels must be class indices in [0, {logits.shape[-1]}) for a model "
                                 f"with output shape {tuple(logits.shape[1:])}; got labels "
                                 f"{int(targets.min())}..{int(targets.max())}")
            losses.append(F.cross_entropy(logits, targets, reduction="none").cpu())
            activations.append(acts.cpu())
    activations = torch.cat(activations).double()                     # (k*m, D)
    losses = torch.cat(losses).double()                               # (k*m,)
    _check_finite(activations, losses, model)
    return Probe(activations, losses, sample)


def _check_finite(activations: torch.Tensor, losses: torch.Tensor, model: nn.Module) -> None:
    """Refuse NaN/Inf before it reaches L-FOCI, naming the first offending slice."""
    bad_loss = ~torch.isfinite(losses)
    if bad_loss.any():
        raise ValueError(f"probing produced a non-finite loss on {int(bad_loss.sum())} of "
                         f"{len(losses)} perturbed images; the model's output overflows near the "
                         f"forget images: check its weights and the input normalisation, or "
                         f"lower perturbation_std")
    bad_columns = (~torch.isfinite(activations)).any(0)
    if bad_columns.any():
        first = enumerate_slices(model)[int(bad_columns.nonzero()[0])]
        raise ValueError(f"probing produced non-finite activations in {int(bad_columns.sum())} "
                         f"slice(s), the first {first.module}[{first.index}]; check the model's "
                         f"weights and the input normalisation, or lower perturbation_std")
