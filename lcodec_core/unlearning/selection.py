"""Which slices to update: L-FOCI on the probe table, or a comparison rule.

- "lfoci": L-FOCI (docs/ALGORITHM.md, section 2 (L-FOCI, greedy Markov-blanket selection))
  on (A, Y), at most ``max_slices`` slices.
- "top1": the single slice with the largest unconditional T(Y, A_j) (L-FOCI's first step).
- "random": as many slices as L-FOCI selects, drawn uniformly at random.
- "all": every slice (the full-model Newton step on the sliced layers).
Columns whose activation does not vary over the probe are never selectable.
"""
from __future__ import annotations

import numpy as np

from ..dependence import foci
from .probing import Probe
from .result import SelectedSlice
from .slices import SliceRef


def select_slices(probe: Probe, slices: list[SliceRef], method: str, *, max_slices: int,
                  seed: int = 0, pooling: str = "pooled") -> tuple[list[SelectedSlice], dict]:
    """Return (selected slices in order, info) for ``method``.

    ``pooling``: "pooled" runs one L-FOCI on every forget image's probe rows together;
    "per_image" runs L-FOCI on each image's rows alone and takes the union of the selections
    in order of first appearance (each image's selection capped at ``max_slices``; the union
    is not). Measured against each other in bench/bench_pooling.py.

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
    # peak-to-peak, not std: a constant column can have a rounding-error std > 0, and foci
    # refuses constant columns (max == min)
    varying = np.flatnonzero(np.ptp(activations, axis=0) > 0)
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
    if pooling == "per_image":
        picked, reasons = [], []
        for image in probe.sample.unique().tolist():
            rows = (probe.sample == image).numpy()
            columns = varying[np.ptp(activations[rows][:, varying], axis=0) > 0]
            if len(columns) == 0 or np.ptp(losses[rows]) == 0:
                continue
            result = foci(losses[rows], activations[rows][:, columns], max_features=limit, rng=rng)
            reasons.append(getattr(result, "stopped_because", ""))
            seen = {c for c, _ in picked}
            picked += [(int(columns[j]), float(score)) for j, score in zip(result.selected, result.scores)
                       if int(columns[j]) not in seen]
        stopped = "; ".join(sorted(set(reasons)))
    elif pooling == "pooled":
        result = foci(losses, activations[:, varying], max_features=limit, rng=rng)
        picked = [(int(varying[j]), float(score)) for j, score in zip(result.selected, result.scores)]
        stopped = getattr(result, "stopped_because", "")
    else:
        raise ValueError(f"pooling must be 'pooled' or 'per_image'; got {pooling!r}")
    info = {"candidates": int(len(varying)), "stopped_because": stopped, "lfoci_size": len(picked),
            "pooling": pooling}
    if method == "random":
        count = max(len(picked), 1)
        columns = rng.choice(varying, size=min(count, len(varying)), replace=False)
        picked = [(int(c), float("nan")) for c in columns]
    elif method not in ("lfoci", "top1"):
        raise ValueError(f"selection method must be lfoci, top1, random or all; got {method!r}")
    chosen = [SelectedSlice(slices[c].module, slices[c].index, score, order)
              for order, (c, score) in enumerate(picked)]
    return chosen, info


def removed_class_units(slices: list[SliceRef], forget_targets, retain_targets,
                        num_outputs: int) -> list[SliceRef]:
    """The output units of classes the request removes entirely (no retained photo left).

    The model's head is its last Linear slice group with ``num_outputs`` units (row k scores
    class k). A model retrained without any photo of class k leaves that unit to weight decay
    alone, so it is where retraining changes the most; L-FOCI, which only sees perturbations
    of the forget photos, can miss it. Returns [] when the head cannot be identified.
    """
    import torch
    heads = [s.module for s in slices if s.kind == "linear"]
    if not heads:
        return []
    head = heads[-1]
    units = [s for s in slices if s.module == head]
    if len(units) != num_outputs:
        return []
    removed = sorted(set(forget_targets.tolist()) - set(torch.unique(retain_targets).tolist()))
    return [units[k] for k in removed if 0 <= k < num_outputs]
