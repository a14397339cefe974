"""The work functions that the dashboard's jobs run: the adapter between its pages and lcodec_core.

Each ``*_work`` function is built in the script thread (where it takes its own deep copy of
any model it needs, so hooks set by the engine or Captum never touch a model the page is
drawing) and returns ``work(report)`` for :class:`lcodec_app.jobs.Job`. ``report`` is passed
to the engine as ``on_progress``.

Every removal runs with the engine's own settings unless the user changed them
(``UnlearnConfig()``, the same default as the command line), and hands the engine the
bundle's held-out photos (``held_out=``): the step rule reads them as the loss level of
never-seen photos and guards other people's held-out accuracy with them.

Removals take :data:`ENGINE_LOCK` in turn; a session waiting for another one says so in its
progress. (An earlier engine used forward-mode autodiff, whose process-global dual levels made
concurrent removals fail; the engine now uses double backward, but on a small machine two
Newton solves at once would each run at half speed with twice the peak memory, so removals
stay serialised.)
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from lcodec_core.unlearning.config import UnlearnConfig
from lcodec_core.data import DataBundle
from lcodec_core.requests import ForgetRequest
from lcodec_core.progress import training_progress
from lcodec_core.removal import compare_with_retraining, held_out_for, remove
from lcodec_core.sequence import remove_in_sequence
from lcodec_core.unlearning.baselines import retrain
from lcodec_models import accuracy

from .workbench import Removal, Workbench

Report = Callable[[dict], None]
UNLEARN_PHASES = ("probe", "select", "newton", "noise")
ENGINE_LOCK = threading.Lock()  # one unlearn() at a time in this process (see above)


def unlearn_fn():
    """The engine's ``unlearn`` (imported late so the app starts even while it is edited)."""
    from lcodec_core.unlearning.unlearn import unlearn
    return unlearn


@contextmanager
def engine_turn(report: Report):
    """Hold :data:`ENGINE_LOCK`, reporting while another session's removal holds it."""
    while not ENGINE_LOCK.acquire(timeout=0.5):
        report({"phase": "probe", "fraction": 0.0,
                "message": "waiting for another session's removal to finish"})
    try:
        yield
    finally:
        ENGINE_LOCK.release()


def locked_unlearn(model, forget, retain, config: UnlearnConfig, report: Report, **options):
    """``unlearn`` under :data:`ENGINE_LOCK` (same arguments as ``unlearn``).

    Raises what ``unlearn`` raises, e.g. ``HarmfulNoiseError`` (nothing was changed then).
    """
    unlearn = unlearn_fn()
    with engine_turn(report):
        return unlearn(model, forget, retain, config, report, **options)


def removal_work(workbench: Workbench, request: ForgetRequest, config: UnlearnConfig):
    """Work that removes ``request`` from the session's current model with
    :func:`lcodec_core.removal.remove` (the command line's call); returns its record."""
    checkpoint = workbench.current_checkpoint(own_copy=True)
    original = copy.deepcopy(workbench.original)
    bundle, hash_before = workbench.bundle, workbench.current_hash

    def work(report: Report) -> Removal:
        report({"phase": "probe", "fraction": 0.0, "message": "measuring accuracy before"})
        before = workbench.metrics(checkpoint.model, hash_before, request)
        original_metrics = workbench.metrics(original, workbench.base_hash, request)
        return remove(checkpoint, bundle, request, config, on_progress=report,
                      original=original_metrics, before=before, hash_before=hash_before,
                      engine=locked_unlearn)

    return work


def retrain_work(workbench: Workbench, removal: Removal):
    """Work that adds the retrained reference to ``removal`` with
    :func:`lcodec_core.removal.compare_with_retraining` (the command line's call): the
    architecture retrained from scratch on the retained data, and the audit. Returns the new
    record (the session swaps it in with :meth:`Workbench.with_reference`)."""
    original, recipe, bundle = workbench.original, workbench.recipe, workbench.bundle

    def work(report: Report) -> Removal:
        return compare_with_retraining(removal, original, recipe, bundle, on_progress=report)

    return work


def cumulative_metrics(model: nn.Module, bundle: DataBundle, removed: list[int],
                       identities: list[int]) -> dict[str, float]:
    """Accuracy after a stream of removals.

    ``forget_accuracy``: every removed training image so far; ``retain_accuracy``: the rest
    of the training set; ``test_accuracy``: held-out images of identities not removed;
    ``forget_test_accuracy``: held-out images of removed identities (nan if none).
    """
    train_set, test = bundle.train, bundle.test
    removed_mask = torch.zeros(len(train_set), dtype=torch.bool)
    removed_mask[list(removed)] = True
    gone = torch.isin(test.targets, torch.as_tensor(list(identities), dtype=torch.long))
    return {
        "forget_accuracy": accuracy(model, train_set.images[removed_mask],
                                    train_set.targets[removed_mask]),
        "retain_accuracy": accuracy(model, train_set.images[~removed_mask],
                                    train_set.targets[~removed_mask]),
        "test_accuracy": accuracy(model, test.images[~gone], test.targets[~gone]),
        "forget_test_accuracy": accuracy(model, test.images[gone], test.targets[gone]),
    }


def live_work(workbench: Workbench, targets: list[dict], config: UnlearnConfig,
              reference: str = "final"):
    """Work that removes ``targets`` one after another, reporting accuracy after each.

    ``targets``: dicts ``{"identity": k}`` or ``{"indices": [...]}``. ``reference``: "none",
    "final" (retrain once on what is left at the end) or "each" (retrain after every removal).
    Each finished step is reported as ``{"phase": "step", "row": {...}}``; a retrained
    reference as ``{"phase": "reference", "row": {...}}``. Returns the final model and rows.
    """
    start_model = copy.deepcopy(workbench.current)
    bundle, weight_decay = workbench.bundle, workbench.weight_decay
    already = list(workbench.removed_indices)
    already_identities = list(workbench.removed_identities)
    recipe = workbench.recipe

    def retrained_row(step: int, removed: list[int], identities: list[int], report: Report):
        keep = sorted(set(range(len(bundle.train))) - set(removed))
        retrained = retrain(bundle.train.subset(keep), recipe, on_progress=training_progress(report))
        return {"step": step, **cumulative_metrics(retrained, bundle, removed, identities)}

    def work(report: Report) -> dict:
        rows = [{"step": 0, "removed": "(none)", "seconds": 0.0,
                 **cumulative_metrics(start_model, bundle, already, already_identities)}]
        report({"phase": "step", "fraction": 0.0, "row": rows[0], "message": "starting point"})
        model, removed, identities = start_model, list(already), list(already_identities)
        for done in remove_in_sequence(start_model, bundle, targets, config,
                                       weight_decay=weight_decay, held_out=held_out_for(bundle),
                                       already_removed=already,
                                       already_identities=already_identities,
                                       on_progress=report, remove=locked_unlearn):
            model, removed, identities = done.model, list(done.removed), list(done.identities)
            row = {"step": done.step, "removed": done.request.description,
                   "seconds": done.seconds, **cumulative_metrics(model, bundle, removed, identities)}
            rows.append(row)
            report({"phase": "step", "fraction": done.step / len(targets), "row": row,
                    "message": f"removed {done.request.description}"})
            if reference == "each":
                report({"phase": "reference",
                        "row": retrained_row(done.step, removed, identities, report)})
        if reference == "final" and targets:
            report({"phase": "reference",
                    "row": retrained_row(len(targets), removed, identities, report)})
        return {"model": model, "rows": rows, "removed": removed}

    return work


def noise_preview(workbench: Workbench, config: UnlearnConfig, forget_count: int,
                  retain_count: int) -> tuple[float, float]:
    """(sigma the engine would add for ``config``, median absolute weight of the session's
    model), before any run: sigma from :func:`lcodec_core.unlearning.noise.noise_sigma` with the same
    n = forget + retain, k and lam as ``unlearn``; 0.0 without noise or with nothing to forget.
    """
    from lcodec_core.unlearning.noise import noise_sigma
    weights = torch.cat([p.detach().abs().flatten() for p in workbench.current.parameters()])
    median = float(weights.median())
    if config.epsilon is None or forget_count < 1 or retain_count < 1:
        return 0.0, median
    sigma = noise_sigma(epsilon=config.epsilon, delta=config.delta,
                        n=forget_count + retain_count, k=forget_count,
                        weight_decay=config.objective_weight_decay(recipe=workbench.recipe),
                        hessian_lipschitz=config.hessian_lipschitz,
                        loss_lipschitz=config.loss_lipschitz)
    return sigma, median
