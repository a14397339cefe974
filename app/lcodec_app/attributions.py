"""Where a model looks: Captum LayerGradCam and LayerActivation maps, and its predictions.

Grad-CAM (Selvaraju et al. 2017) weights each channel of a conv layer's output by the mean
gradient of the target logit and keeps the positive part of the sum: a coarse map of the
evidence for the target class, upsampled (bilinear) to the input size. Models without a conv
layer (logistic regression, MLP) get the input-gradient magnitude (Captum ``Saliency``).

Every function sets ``model.eval()`` and restores the previous mode; Captum's hooks are
removed when it returns, and gradients are taken with ``torch.autograd.grad`` so no
parameter's ``.grad`` or buffer is touched. Call these only on a model no other thread is
running (the session's own copies; jobs work on their own deep copies).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import LayerActivation, LayerAttribution, LayerGradCam, Saliency
from torch import nn
from torch.nn import functional as F


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d layers, in forward order (the last one is Grad-CAM's usual choice)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def head_layer(model: nn.Module, num_classes: int) -> str | None:
    """Name of the output layer: the last Linear with one output per class (``fc`` in the zoo
    models), whose unit k is class k's score; None when there is none."""
    heads = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and module.out_features == num_classes]
    return heads[-1] if heads else None


def units_by_layer(slices) -> dict[str, list[int]]:
    """Selected slices (objects or dicts with ``module`` and ``index``) grouped by layer, in the
    order the layers first appear, each layer's units sorted."""
    found: dict[str, set[int]] = {}
    for s in slices:
        module, index = (s["module"], s["index"]) if isinstance(s, dict) else (s.module, s.index)
        found.setdefault(module, set()).add(int(index))
    return {module: sorted(units) for module, units in found.items()}


def forgotten_photos(forget_indices, held_out_indices, count: int) -> list[tuple[str, int]]:
    """``count`` photos of what was removed, as (split, index): about half held-out photos of
    the person (``held_out_indices``, empty for single photos) and the rest removed training
    photos; fewer only when both run out."""
    forget_indices, held_out_indices = list(forget_indices), list(held_out_indices)
    n_test = min(count // 2, len(held_out_indices))
    n_train = min(count - n_test, len(forget_indices))
    n_test = min(count - n_train, len(held_out_indices))
    return ([("train", int(i)) for i in forget_indices[:n_train]]
            + [("test", int(i)) for i in held_out_indices[:n_test]])


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")


def gradcam(model: nn.Module, layer: str | None, images: torch.Tensor,
            targets: torch.Tensor) -> np.ndarray:
    """Grad-CAM maps for the logit of ``targets``.

    Parameters
    ----------
    images : (N, C, H, W) float32, normalised like the training data.
    targets : (N,) long, the class whose evidence to map.
    layer : a Conv2d name from :func:`conv_layers`; None uses input gradients (Saliency).

    Returns
    -------
    float32 array (N, H, W), non-negative.
    """
    _check_images(images)
    targets = torch.as_tensor(targets, dtype=torch.long)
    with _eval_mode(model), torch.enable_grad():
        if layer is None:
            maps = Saliency(model).attribute(images.clone().requires_grad_(True),
                                             target=targets, abs=True).amax(dim=1)  # (N, H, W)
        else:
            module = dict(model.named_modules())[layer]
            attr = LayerGradCam(model, module).attribute(images, target=targets,
                                                         relu_attributions=True)  # (N, 1, h, w)
            maps = LayerAttribution.interpolate(attr, tuple(images.shape[-2:]),
                                                interpolate_mode="bilinear")[:, 0]
    return maps.detach().float().numpy()


def channel_activation(model: nn.Module, layer: str, images: torch.Tensor,
                       channels: list[int]) -> np.ndarray:
    """Mean activation of ``channels`` of ``layer`` (Captum LayerActivation).

    Conv2d: (N, H, W) maps upsampled to the input size; Linear: (N,) values.
    """
    _check_images(images)
    module = dict(model.named_modules())[layer]
    with _eval_mode(model), torch.no_grad():
        out = LayerActivation(model, module).attribute(images)
    out = out[:, channels].mean(dim=1)
    if out.ndim == 3:  # (N, h, w) from a conv layer
        out = F.interpolate(out[:, None], size=tuple(images.shape[-2:]), mode="bilinear",
                            align_corners=False)[:, 0]
    return out.detach().float().numpy()


def slice_activation(model: nn.Module, layer: str, index: int, images: torch.Tensor) -> np.ndarray:
    """The raw activation of one slice: (N, h, w) for a conv filter, (N,) for a linear unit."""
    _check_images(images)
    module = dict(model.named_modules())[layer]
    with _eval_mode(model), torch.no_grad():
        out = LayerActivation(model, module).attribute(images)
    return out[:, index].detach().float().numpy()


def predictions(model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted class (N,), its probability (N,), all probabilities (N, K))."""
    _check_images(images)
    with _eval_mode(model), torch.inference_mode():
        probs = torch.softmax(model(images), dim=1)
    confidence, predicted = probs.max(dim=1)
    return predicted.numpy(), confidence.numpy(), probs.numpy()
