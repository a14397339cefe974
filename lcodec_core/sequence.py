"""Removals one after another: the one loop behind the dashboard's Live accuracy and the
sequential-removal benchmarks (the paper's Fig. 5-7 experiments).

Each request is built against everything removed before it (``make_request(...,
already_removed=...)``), so a photo is never forgotten twice nor kept in the retained set
after its removal, and each removal starts from the model the previous one returned.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from torch import nn

from .unlearning.config import UnlearnConfig
from .data import DataBundle, ImageDataset
from .requests import ForgetRequest, make_request
from .unlearning.result import UnlearnResult


@dataclass(frozen=True)
class SequenceStep:
    """One removal of a sequence.

    ``step``: 1-based position; ``result``: the engine's result (None when the removal raised
    one of the exceptions the caller asked to catch, then in ``error``); ``model``: the model
    after this step (the previous one when it failed); ``removed`` / ``identities``: every
    training index / whole identity removed so far, this step included (a failed step's
    request counts as removed: the sequence goes on without it).
    """
    step: int
    request: ForgetRequest
    result: UnlearnResult | None
    error: BaseException | None
    seconds: float
    model: nn.Module
    removed: tuple[int, ...]
    identities: tuple[int, ...]


def remove_in_sequence(model: nn.Module, bundle: DataBundle, targets: Iterable[dict],
                       config: UnlearnConfig | Callable[[int], UnlearnConfig], *,
                       weight_decay: float, held_out: ImageDataset | None = None,
                       already_removed: Iterable[int] = (), already_identities: Iterable[int] = (),
                       on_progress: Callable[[dict], None] | None = None,
                       catch: tuple[type[BaseException], ...] = (),
                       remove: Callable | None = None) -> Iterator[SequenceStep]:
    """Remove ``targets`` from ``model`` one after another, yielding each step as it ends.

    ``targets``: dicts ``{"identity": k}`` or ``{"indices": [...]}`` (keywords of
    :func:`make_request`). ``config``: one config, or ``step -> config`` (e.g. a seed per
    step). ``on_progress`` receives the engine's events with ``step`` added. ``remove`` is
    :func:`lcodec_core.unlearning.unlearn.unlearn` unless given (the dashboard passes its locked call);
    it is called as ``remove(model, forget, retain, config, on_progress, weight_decay=,
    held_out=)``. ``model`` is never modified.
    """
    if remove is None:
        from .unlearning.unlearn import unlearn as remove
    targets = list(targets)
    removed, identities = list(already_removed), list(already_identities)
    for step, target in enumerate(targets, start=1):
        request = make_request(bundle, already_removed=removed, **target)
        step_config = config(step) if callable(config) else config

        def progress(event: dict, step: int = step) -> None:
            if on_progress is not None:
                on_progress({**event, "step": step, "steps": len(targets)})

        tick = time.perf_counter()
        result, error = None, None
        try:
            result = remove(model, request.forget, request.retain, step_config, progress,
                            weight_decay=weight_decay, held_out=held_out)
            model = result.model
        except catch as caught:
            error = caught
        removed += request.forget_indices
        if request.identity is not None:
            identities.append(request.identity)
        yield SequenceStep(step, request, result, error, time.perf_counter() - tick, model,
                           tuple(removed), tuple(identities))
