"""Parameter slices: one output unit of a Conv2d (filter j) or Linear (row j) layer, with its bias.

Slices are keyed by module name from ``named_modules()``, never by the module's repr (the
authors' code keyed by ``str(module)``, so identical layers collided).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SLICED_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class SliceRef:
    """Output unit ``index`` of the Conv2d/Linear module called ``module``."""
    module: str
    index: int
    kind: str  # "conv" or "linear"

    @property
    def label(self) -> str:
        return f"{self.module}[{self.index}]"


def sliced_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear layer, in ``named_modules`` order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, SLICED_TYPES)]


def enumerate_slices(model: nn.Module) -> list[SliceRef]:
    """Every slice of the model, in the column order used by :class:`ActivationRecorder`."""
    slices = []
    for name, module in sliced_modules(model):
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        count = module.out_channels if kind == "conv" else module.out_features
        slices += [SliceRef(name, j, kind) for j in range(count)]
    return slices


def slice_parameter_rows(model: nn.Module, slices: list[SliceRef]) -> dict[str, list[int]]:
    """Parameter name -> sorted first-dimension rows touched by ``slices`` (weight and bias)."""
    modules = dict(model.named_modules())
    rows: dict[str, set[int]] = {}
    for ref in slices:
        module = modules.get(ref.module)
        if not isinstance(module, SLICED_TYPES):
            raise ValueError(f"slice {ref.label}: no Conv2d/Linear module named {ref.module!r}")
        prefix = f"{ref.module}." if ref.module else ""
        for pname, param in module.named_parameters(recurse=False):
            if ref.index >= param.shape[0]:
                raise ValueError(f"slice {ref.label}: index out of range for {prefix}{pname} "
                                 f"with {param.shape[0]} rows")
            rows.setdefault(prefix + pname, set()).add(ref.index)
    return {name: sorted(indices) for name, indices in rows.items()}


def count_parameters(model: nn.Module, rows: dict[str, list[int]]) -> int:
    """Number of scalars in the rows ``rows`` of the named parameters."""
    params = dict(model.named_parameters())
    return sum(len(r) * params[name][0].numel() for name, r in rows.items())


class ActivationRecorder:
    """Forward hooks recording one statistic per slice for every sample of a batch.

    Conv2d: the spatial mean of each output channel, (B, C_out, H, W) -> (B, C_out).
    Linear: the output unit (pre-activation), (B, F_out) (extra middle dims are averaged).
    A module that fires more than once in a forward raises ``RuntimeError`` (a reused module
    would silently overwrite its own record).

    Use as a context manager; ``record(model_output_fn)`` returns activations (B, D) with the
    columns in :func:`enumerate_slices` order.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = sliced_modules(model)
        self._handles = []
        self._store: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "ActivationRecorder":
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name in self._store:
                raise RuntimeError(
                    f"module {name!r} ran twice in one forward pass; slices need each Conv2d/"
                    f"Linear module called once (use a separate module instance per call)")
            out = output.detach()
            if isinstance(module, nn.Conv2d):
                stat = out.mean(dim=(2, 3))
            else:
                stat = out if out.ndim == 2 else out.reshape(out.shape[0], -1, out.shape[-1]).mean(1)
            self._store[name] = stat
        return hook

    def record(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model on ``inputs`` (B, ...) and return (logits (B, K), activations (B, D))."""
        self._store.clear()
        logits = self.model(inputs)
        missing = [name for name, _ in self.modules if name not in self._store]
        if missing:
            raise RuntimeError(f"modules {missing[:5]} did not run in the forward pass")
        activations = torch.cat([self._store[name] for name, _ in self.modules], dim=1)
        self._store.clear()
        return logits, activations
