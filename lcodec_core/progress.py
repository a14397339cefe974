"""Progress events: the one event type every long call reports, and the one adapter from
training epochs to it.

An event is a dict ``{"phase": str, "fraction": float in [0, 1], "message": str}`` (callers
may add keys, e.g. ``step`` in a sequence of removals). ``on_progress(event)`` is called
from the working thread; raising from it stops the work (the dashboard's Stop does that).
"""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[dict], None]


def emit(on_progress: ProgressFn | None, phase: str, fraction: float, message: str) -> None:
    """Send one event to ``on_progress`` (nothing when it is None)."""
    if on_progress is not None:
        on_progress({"phase": phase, "fraction": float(fraction), "message": message})


def training_progress(on_progress: ProgressFn | None, phase: str = "retrain",
                      doing: str = "retraining from scratch") -> ProgressFn | None:
    """The adapter from :func:`lcodec_models.train`'s epoch events ``{"epoch", "epochs", "loss"}`` to
    progress events: ``{"phase": phase, "fraction": epoch / epochs, "message": "<doing>: epoch
    3/30, loss 0.123"}``. None when ``on_progress`` is None."""
    if on_progress is None:
        return None

    def on_epoch(event: dict) -> None:
        emit(on_progress, phase, event["epoch"] / event["epochs"],
             f"{doing}: epoch {event['epoch']}/{event['epochs']}, loss {event['loss']:.3f}")
    return on_epoch
