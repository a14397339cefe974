"""One deletion request end to end: unlearn, evaluate, optionally retrain for comparison.

This is what the command line, the benchmarks and the dashboard call; it returns a
JSON-ready report and the new model, and never touches the input checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models import Checkpoint

from .audit.comparison import audit_removal
from .unlearning.baselines import retrain
from .unlearning.config import UnlearnConfig
from .data import DataBundle
from .audit.evaluation import evaluate
from .requests import ForgetRequest
from .unlearning.result import UnlearnResult
from .unlearning.unlearn import unlearn
from .audit.verdict import judge


STATIONARY_HEAD_MAX = 1e-3   # |grad F| of the head above this: warn (a polished head is ~1e-6)


def stationarity_of(checkpoint: Checkpoint, images, targets) -> dict:
    """|grad F(w*)| of the checkpoint (stored by training, else measured on the training
    ``images`` (n, C, H, W) and ``targets`` (n,)), the head's part, and a warning when the head
    is far from its optimum (``lcodec polish`` fixes that)."""
    from models.stationarity import head_module, objective_gradient_norms
    stored = checkpoint.metadata.get("stationarity")
    if stored is None:
        stored = objective_gradient_norms(checkpoint.model, images, targets,
                                          checkpoint.recipe.weight_decay)
    head = head_module(checkpoint.model)
    prefix = f"{head[0]}." if head else None
    head_norm = sum(v ** 2 for k, v in stored["per_parameter"].items()
                    if prefix and k.startswith(prefix)) ** 0.5
    out = {"grad_norm": stored["grad_norm"], "head_grad_norm": head_norm,
           "polished_head": stored.get("polished_head")}
    if head_norm > STATIONARY_HEAD_MAX:
        out["warning"] = (f"the model is far from a stationary point of its training objective "
                          f"(|grad F| = {stored['grad_norm']:.2g}, head {head_norm:.2g}): a removal's "
                          f"update then mixes in changes that would happen with nothing removed. "
                          f"Polish its head first (a few seconds): lcodec polish --model CHECKPOINT "
                          f"--save POLISHED.pt")
    return out


def held_out_for(bundle: DataBundle, request: ForgetRequest):
    """The held-out photos the step rule may read: the bundle's test split (None if empty)."""
    return bundle.test if len(bundle.test) else None


@dataclass
class RemovalOutcome:
    """The unlearned model, the engine's result, the retrained model (if compared) and the report."""
    model: nn.Module
    result: UnlearnResult
    retrained: nn.Module | None
    report: dict


def run_removal(checkpoint: Checkpoint, bundle: DataBundle, request: ForgetRequest,
                config: UnlearnConfig = UnlearnConfig(), *, compare_retrain: bool = False,
                on_progress: Callable[[dict], None] | None = None) -> RemovalOutcome:
    """Remove ``request`` from ``checkpoint.model``; report accuracies, timings and selection.

    Report keys: original, unlearned (and retrained) accuracies (see :func:`evaluate`),
    timings (probe_s, select_s, newton_s, unlearn_s, retrain_s), selected_slices,
    parameters_updated, parameter_share, sigma, epsilon, delta, request, settings, diagnostics;
    with ``compare_retrain`` also retrained, speedup_over_retrain and ``audit`` (see
    :func:`.audit.audit_removal`: membership inference, distances to the retrained model and
    gradient norms for the original, unlearned and retrained models).
    """
    recipe = checkpoint.recipe
    result = unlearn(checkpoint.model, request.forget, request.retain, config, on_progress,
                     weight_decay=recipe.weight_decay, recipe=recipe,
                     held_out=held_out_for(bundle, request))
    summary = result.summary()
    original, unlearned = evaluate(checkpoint.model, bundle, request), evaluate(result.model, bundle, request)
    report = {
        "dataset": bundle.name,
        "model": checkpoint.metadata.get("model"),
        "request": {"identity": request.identity, "forget_indices": request.forget_indices,
                    "description": request.description,
                    "sources": [request.forget.sources[i] for i in range(len(request.forget))]},
        "original": original,
        "unlearned": unlearned,
        "verdict": judge(original, unlearned, identity=request.identity, changed=result.changed,
                         step=result.diagnostics.get("step")).to_dict(),
        "guarantee": summary["guarantee"],
        "guarantee_text": summary["guarantee_text"],
        "guarantee_reasons": summary["guarantee_reasons"],
        "changed": summary["changed"],
        "stationarity": stationarity_of(checkpoint, torch.cat([request.forget.images, request.retain.images]),
                                        torch.cat([request.forget.targets, request.retain.targets])),
        "timings": {**summary["timings"], "retrain_s": None},
        "selected_slices": summary["selected_slices"],
        "parameters_updated": summary["parameters_updated"],
        "parameter_share": summary["parameter_share"],
        "sigma": summary["sigma"],
        "epsilon": config.epsilon if summary["guarantee"] == "certified" else None,
        "delta": config.delta if summary["guarantee"] == "certified" else None,
        "requested_epsilon": config.epsilon,
        "peak_memory_mb": summary["peak_memory_mb"],
        "settings": summary["settings"],
        "diagnostics": summary["diagnostics"],
    }
    retrained = None
    if compare_retrain:
        if on_progress is not None:
            on_progress({"phase": "retrain", "fraction": 0.0, "message": "retraining from scratch"})
        start = time.perf_counter()
        retrained = retrain(request.retain, recipe)
        report["timings"]["retrain_s"] = time.perf_counter() - start
        report["retrained"] = evaluate(retrained, bundle, request)
        report["speedup_over_retrain"] = report["timings"]["retrain_s"] / report["timings"]["unlearn_s"]
        if on_progress is not None:
            on_progress({"phase": "audit", "fraction": 0.0,
                         "message": "membership inference and distances to the retrained model"})
        report["audit"] = audit_removal(checkpoint.model, result.model, retrained, bundle, request,
                                        weight_decay=recipe.weight_decay, seed=config.seed)
    return RemovalOutcome(result.model, result, retrained, report)
