"""The default step policy of engine v3: the head to the optimum of the retained objective.

    w_new[head] = argmin_{W, b} F_r(W, b),   features fixed at the (possibly updated) layers
    w_new[P \\ head] = w*[P \\ head] (+ the v2 targeted step when ``config.feature_step``)

A block Newton method run to convergence on the retained objective of the block reaches this
point on the head exactly (the head's part of F_r is strongly convex; :mod:`.head_optimum`).
The engine-v2 rule stopped at the smallest step that changed the predictions; that hid the
person (one constant on their logit brought every photo back) instead of removing them.

Controls reported beside the step (:class:`OptimumReport`):
- **null control**: the same solve with nothing removed (every training photo kept). From a
  head at the optimum of F (the zoo's recipe polishes it) this moves next to nothing; a head
  far from its optimum would move by itself, and the ratio says so. It can fail: it is not zero
  by construction.
- **start gradient**: |grad F_r| of the head before the solve, beside |grad F| (the null
  control's start): the first is the removal's pull, the second the model's own distance
  from stationarity.

Which photos the step reads: the retained training photos only. No held-out photo chooses
anything, so the audit's held-out photos judge a step they never shaped.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lcodec_models.stationarity import head_features, head_module

from ..data import ImageDataset
from .head_optimum import HeadOptimum, retained_head_optimum

RULE_TEXT = ("the whole linear head moved to the optimum of the retained objective (features "
             "fixed; Newton-CG in float64 to |grad F_r| <= tolerance)")


@dataclass(frozen=True)
class OptimumReport:
    """What the default step did, as fields (the dashboard and the teaching page read these).

    head : name of the head module; head_parameters : its size (K (d+1)).
    solve : :meth:`HeadOptimum.report` of the retained solve.
    step_norm : |w_new - w*| over the head; block_norm : |w*| over the head.
    null_control_step_norm : the same solve with nothing removed; null_control_ratio its norm
        over step_norm.
    stationarity_head_gradient_norm : |grad F| of the head at w* (all training photos).
    feature_slices : the selected slices outside the head; feature_step : whether they moved
        (the v2 targeted step, ``config.feature_step``).
    (Clocks are not here: the engine's ``timings`` has ``head_features_s`` and ``head_solve_s``.)
    """
    head: str
    head_parameters: int
    solve: dict
    step_norm: float
    block_norm: float
    null_control_step_norm: float
    null_control_ratio: float
    stationarity_head_gradient_norm: float
    feature_slices: list
    feature_step: bool
    rule: str = "retained_optimum"

    @property
    def converged(self) -> bool:
        return bool(self.solve["converged"])

    def to_dict(self) -> dict:
        """The report as the record's ``diagnostics["step"]``: its fields, plus the keys every
        step rule reports (rule, rule_text, target_met, guard_limited, damping, null_control)."""
        return {**asdict(self), "rule_text": RULE_TEXT, "target_met": self.converged,
                "guard_limited": False, "damping": None, "converged": self.converged,
                "null_control": {"step_norm": self.null_control_step_norm,
                                 "ratio": self.null_control_ratio,
                                 "definition": "the same solve with nothing removed (U empty)"}}


def head_name(model: nn.Module) -> str:
    """Name of the model's last nn.Linear; ValueError naming what is expected when it has none."""
    found = head_module(model)
    if found is None:
        raise ValueError("step_rule 'optimum' moves the model's linear head (its last nn.Linear); "
                         "this model has none: use step_rule 'target'")
    return found[0]


def _check_output_is_the_head(model, head, images, features) -> None:
    """ValueError unless the model's logits are its head's output on these photos: the solve
    minimises CE(head(features)), which is the model's loss only then."""
    with torch.no_grad():
        logits = model(images.to(next(model.parameters()).device)).cpu()
        from_head = head(features.to(head.weight.device)).cpu()
    if logits.shape != from_head.shape or not torch.allclose(logits, from_head, rtol=1e-3, atol=1e-4):
        raise ValueError("step_rule 'optimum' needs the model's output to be its last nn.Linear "
                         "layer's output (logits = head(features)); this model transforms it "
                         "further: use step_rule 'target'")


def _solve(features, targets, head, lam) -> HeadOptimum:
    return retained_head_optimum(features, targets, head.weight, head.bias, lam)


def retained_optimum_head(model: nn.Module, forget: ImageDataset, retain: ImageDataset,
                          weight_decay: float, *, feature_slices: list = (),
                          feature_step: bool = False) -> tuple[nn.Module, OptimumReport, dict]:
    """A copy of ``model`` whose head is at the retained optimum, the report, and the clocks
    ``{"head_features_s", "head_solve_s"}``.

    ``model`` is not modified; its other layers are kept as they are (bit for bit).
    forget (k photos) only enters the null control; retain (N photos) is the objective.
    """
    name = head_name(model)
    new_model = copy.deepcopy(model).eval()
    head = dict(new_model.named_modules())[name]
    tick = time.perf_counter()
    features = head_features(new_model, torch.cat([retain.images, forget.images]))  # (N + k, d)
    retain_features, forget_features = features[:len(retain)], features[len(retain):]
    features_s = time.perf_counter() - tick
    _check_output_is_the_head(new_model, head, retain.images[:64], retain_features[:64])
    tick = time.perf_counter()
    solve = _solve(retain_features, retain.targets, head, weight_decay)
    everyone = _solve(torch.cat([retain_features, forget_features]),
                      torch.cat([retain.targets, forget.targets]), head, weight_decay)
    solve_s = time.perf_counter() - tick

    def flat(weight, bias):
        return torch.cat([weight.reshape(-1)] + ([bias.reshape(-1)] if bias is not None else []))
    start = flat(head.weight.detach().double(), None if head.bias is None else head.bias.detach().double())
    step_norm = float((flat(solve.weight, solve.bias) - start).norm())
    control_norm = float((flat(everyone.weight, everyone.bias) - start).norm())
    with torch.no_grad():
        head.weight.copy_(solve.weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(solve.bias.to(head.bias.dtype))
    report = OptimumReport(
        head=name, head_parameters=int(start.numel()), solve=solve.report(),
        step_norm=step_norm, block_norm=float(start.norm()),
        null_control_step_norm=control_norm,
        null_control_ratio=control_norm / step_norm if step_norm else float("nan"),
        stationarity_head_gradient_norm=everyone.gradient_norm_start,
        feature_slices=[s.label if hasattr(s, "label") else f"{s.module}[{s.index}]"
                        for s in feature_slices],
        feature_step=bool(feature_step and feature_slices))
    return new_model, report, {"head_features_s": features_s, "head_solve_s": solve_s}
