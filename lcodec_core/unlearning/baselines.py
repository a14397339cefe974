"""Baselines in the same API as the block Newton removal.

- retrain: the same architecture trained from scratch on the retained data, same recipe.
- finetune: a few epochs of the training objective on the retained data.
- negrad: gradient ascent on the forget set (NegGrad), a few epochs.
The full-model Newton step is :func:`lcodec_core.unlearning.unlearn.unlearn` with method "full-newton".
Every function returns a new model; the input model is not modified.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lcodec_models import Recipe, train

from ..data import ImageDataset


def retrain(retain: ImageDataset, recipe: Recipe, *,
            on_progress: Callable[[dict], None] | None = None) -> nn.Module:
    """Train ``recipe.model`` from scratch on ``retain`` with ``recipe``; ``on_progress`` gets
    :func:`lcodec_models.train`'s epoch events."""
    return train(recipe.model, retain, recipe, on_progress=on_progress).model


def _epochs(model: nn.Module, data: ImageDataset, *, epochs: int, lr: float, weight_decay: float,
            seed: int, ascent: bool) -> nn.Module:
    model = copy.deepcopy(model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0 if ascent else weight_decay)
    generator = torch.Generator().manual_seed(seed)
    batch_size = 32
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            rows = order[start:start + batch_size]
            loss = F.cross_entropy(model(data.images[rows]), data.targets[rows])
            optimizer.zero_grad(set_to_none=True)
            (-loss if ascent else loss).backward()
            optimizer.step()
    model.eval()
    return model


def finetune(model: nn.Module, retain: ImageDataset, *, epochs: int, lr: float,
             weight_decay: float, seed: int = 0) -> nn.Module:
    """Continue training on the retained data only (objective F_r)."""
    return _epochs(model, retain, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
                   ascent=False)


def negrad(model: nn.Module, forget: ImageDataset, *, epochs: int, lr: float, seed: int = 0) -> nn.Module:
    """Gradient ascent on the forget set's cross-entropy."""
    return _epochs(model, forget, epochs=epochs, lr=lr, weight_decay=0.0, seed=seed, ascent=True)
