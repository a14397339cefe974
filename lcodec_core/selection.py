"""Which slices to update: L-FOCI on the probe table, or a comparison rule.

- "lfoci": L-FOCI (ALGORITHM.md section 2) on (A, Y), at most ``max_slices`` slices.
- "top1": the single slice with the largest unconditional T(Y, A_j) (L-FOCI's first step).
- "random": as many slices as L-FOCI selects, drawn uniformly at random.
- "all": every slice (the full-model Newton step on the sliced layers).
Columns whose activation does not vary over the probe are never selectable.
"""
from __future__ import annotations

import numpy as np

from .dependence import foci
from .probing import Probe
from .result import SelectedSlice
from .slices import SliceRef


def select_slices(probe: Probe, slices: list[SliceRef], method: str, *, max_slices: int,
                  seed: int = 0) -> tuple[list[SelectedSlice], dict]:
    """Return (selected slices in order, info) for ``method``.

    ``probe.activations`` has one column per entry of ``slices``. ``info`` reports the
    number of candidate columns and why the selection stopped.
    """
    activations = probe.activations.numpy()                                 # (k*m, D)
    losses = probe.losses.numpy()                                           # (k*m,)
    if activations.shape[1] != len(slices):
        raise ValueError(f"probe has {activations.shape[1]} activation columns; expected "
                         f"{len(slices)} (one per slice)")
    if method == "all":
        chosen = [SelectedSlice(s.module, s.index, float("nan"), i) for i, s in enumerate(slices)]
        return chosen, {"candidates": len(slices), "stopped_because": "all slices"}
    varying = np.flatnonzero(activations.std(axis=0) > 0)
    if len(varying) == 0:
        raise ValueError("no slice activation varies under the perturbations; increase "
                         "perturbation_std or num_perturbations")
    if np.ptp(losses) == 0:
        raise ValueError("the loss is constant under the perturbations (Y is constant): the "
                         "model's output does not react to these images (saturated outputs, e.g. "
                         "a model already wrecked by noise: check its accuracy), or the "
                         "perturbations are too small (try a larger perturbation_std)")
    rng = np.random.default_rng(seed)
    limit = 1 if method == "top1" else max_slices
    result = foci(losses, activations[:, varying], max_features=limit, rng=rng)
    picked = [(int(varying[j]), float(score)) for j, score in zip(result.selected, result.scores)]
    info = {"candidates": int(len(varying)), "stopped_because": getattr(result, "stopped_because", ""),
            "lfoci_size": len(picked)}
    if method == "random":
        count = max(len(picked), 1)
        columns = rng.choice(varying, size=min(count, len(varying)), replace=False)
        picked = [(int(c), float("nan")) for c in columns]
    elif method not in ("lfoci", "top1"):
        raise ValueError(f"selection method must be lfoci, top1, random or all; got {method!r}")
    chosen = [SelectedSlice(slices[c].module, slices[c].index, score, order)
              for order, (c, score) in enumerate(picked)]
    return chosen, info
