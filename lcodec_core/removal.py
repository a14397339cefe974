"""One deletion request end to end: the public calls that the command line, the dashboard
and the benchmarks share.

- :func:`remove`: unlearn, evaluate before and after, judge: a :class:`RemovalRecord`;
- :func:`compare_with_retraining`: the same record with a retrained reference and its audit;
- :func:`lcodec_core.sequence.remove_in_sequence`: removals one after another.

None of them touches the input checkpoint.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from lcodec_models import Checkpoint, Recipe, state_hash

from .audit.attacks import RELEARN_PROTOCOL, request_attacks
from .audit.comparison import audit_removal
from .unlearning.baselines import retrain
from .unlearning.config import UnlearnConfig
from .data import DataBundle
from .audit.evaluation import evaluate
from .progress import ProgressFn, emit, training_progress
from .holdout import split_held_out
from .requests import ForgetRequest
from .record import RemovalRecord
from .unlearning.unlearn import unlearn


STATIONARY_HEAD_MAX = 1e-3   # |grad F| of the head above this: warn (a polished head is ~1e-6)


def stationarity_of(checkpoint: Checkpoint, images, targets) -> dict:
    """|grad F(w*)| of the checkpoint (stored by training, else measured on the training
    ``images`` (n, C, H, W) and ``targets`` (n,)), the head's part, and a warning when the head
    is far from its optimum (``lcodec polish`` fixes that)."""
    from lcodec_models.stationarity import head_module, objective_gradient_norms
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


def who_is_removed(bundle: DataBundle, request: ForgetRequest) -> str:
    """How a verdict names what a request removes: the class's name ("person 05") for an
    identity, else the photo count ("3 photos")."""
    if request.identity is not None:
        return str(bundle.classes[request.identity])
    count = len(request.forget_indices)
    return f"{count} photo{'s' if count != 1 else ''}"


def held_out_for(bundle: DataBundle):
    """The held-out photos a step rule or its guard may read: the calibration half of the
    bundle's test split (:func:`lcodec_core.holdout.split_held_out`; None if empty). The
    report half is left to the audit."""
    calibration = split_held_out(bundle.test).calibration
    return bundle.test.subset(calibration) if calibration else None


def remove(checkpoint: Checkpoint, bundle: DataBundle, request: ForgetRequest,
           config: UnlearnConfig = UnlearnConfig(), *,
           on_progress: ProgressFn | None = None, original: dict | None = None,
           before: dict | None = None, hash_before: str | None = None, who: str | None = None,
           engine: Callable | None = None, with_attacks: bool = True) -> RemovalRecord:
    """Remove ``request`` from ``checkpoint.model``: the one removal path of every caller.

    Runs the engine (:func:`lcodec_core.unlearning.unlearn.unlearn`, with the checkpoint's
    recipe as the source of lam and the bundle's held-out photos for the step rule), evaluates
    the model before and after on the request, and returns a frozen :class:`RemovalRecord`
    whose verdict is read from those numbers. ``checkpoint.model`` is never modified.

    Parameters
    ----------
    checkpoint : the model to remove from and its metadata (recipe, model name).
    bundle, request : the data set and what to forget (:func:`lcodec_core.make_request`).
    config : the engine's settings; the default is the one default of the CLI and dashboard.
    on_progress : called with ``{"phase", "fraction", "message"}`` events; raising stops.
    original : accuracies of the run's root model on ``request`` when the removal starts
        from a model that already had removals (the dashboard's session); default ``before``.
    before, hash_before : already known accuracies / state hash of ``checkpoint.model``
        (computed when None).
    who : how the verdict names what was removed; default :func:`who_is_removed`.
    engine : the ``unlearn`` callable to run (the dashboard passes one that takes its lock).
        One with a ``remove_and_evaluate`` method (``lcodec unlearn --workers W``:
        :func:`lcodec_core.parallel.removal_engine`) also runs the evaluation, on its workers.
    with_attacks : run the attacks of :mod:`lcodec_core.audit.attacks` on the model before and
        after (the verdict reads them); about 0.5 s on the default model.
    """
    remove_fn = engine if engine is not None else unlearn
    who = who or who_is_removed(bundle, request)
    recipe = checkpoint.recipe      # lam comes from here (config.weight_decay overrides it)
    if hash_before is None:
        hash_before = checkpoint.state_hash()
    options = {"recipe": recipe, "held_out": held_out_for(bundle)}
    if hasattr(remove_fn, "remove_and_evaluate"):   # W processes: they classify too, each a share
        result, measured, after = remove_fn.remove_and_evaluate(
            checkpoint.model, bundle, request, config, on_progress, before_needed=before is None,
            **options)
        before = measured if before is None else before
    else:
        if before is None:
            before = evaluate(checkpoint.model, bundle, request)
        result = remove_fn(checkpoint.model, request.forget, request.retain, config, on_progress,
                           **options)
        after = evaluate(result.model, bundle, request)
    training = (torch.cat([request.forget.images, request.retain.images]),
                torch.cat([request.forget.targets, request.retain.targets]))
    attacks = removal_attacks(checkpoint.model, result.model, bundle, request) if with_attacks else None
    return RemovalRecord(
        request=request, config=config, result=result,
        original=dict(before if original is None else original), before=dict(before),
        after=after, hash_before=hash_before,
        hash_after=state_hash(result.model), dataset=bundle.name,
        model_name=checkpoint.metadata.get("model"),
        stationarity=stationarity_of(checkpoint, *training), who=who, attacks=attacks)


def removal_attacks(before_model: nn.Module, unlearned: nn.Module, bundle: DataBundle,
                    request: ForgetRequest) -> dict:
    """:func:`lcodec_core.audit.attacks.request_attacks` on the model before and after, with
    the relearning protocol and the held-out split the audit judges with."""
    split = split_held_out(bundle.test)
    return {"before": request_attacks(before_model, bundle, request),
            "unlearned": request_attacks(unlearned, bundle, request),
            "relearn_protocol": dict(RELEARN_PROTOCOL), "held_out": split.to_dict()}


def compare_with_retraining(record: RemovalRecord, original_model: nn.Module, recipe: Recipe,
                            bundle: DataBundle, *,
                            on_progress: ProgressFn | None = None) -> RemovalRecord:
    """The record with a reference: the architecture retrained from scratch on the retained
    data with ``recipe`` (:func:`lcodec_core.unlearning.baselines.retrain`), its accuracies,
    its training time and :func:`lcodec_core.audit.comparison.audit_removal` of the run's
    ``original_model``, the unlearned model and the retrained one. Returns a new record.
    """
    request = record.request
    emit(on_progress, "retrain", 0.0, "retraining from scratch")
    start = time.perf_counter()
    retrained = retrain(request.retain, recipe, on_progress=training_progress(on_progress))
    retrain_s = time.perf_counter() - start
    emit(on_progress, "audit", 1.0, "membership inference and distances to the retrained model")
    audit = audit_removal(original_model, record.model, retrained, bundle, request,
                          weight_decay=recipe.weight_decay, seed=record.config.seed)
    attacks = request_attacks(retrained, bundle, request) if record.attacks is not None else None
    return record.with_reference(evaluate(retrained, bundle, request), retrain_s, audit, attacks)
