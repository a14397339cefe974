"""Background jobs: long work (unlearning, retraining, a stream of removals) runs on a thread.

The page stays responsive while a job runs: the script starts the job and returns, and a
fragment polls ``Job.latest`` / ``Job.events`` to draw progress. The worker never calls
Streamlit; it only reports plain dicts through ``Job.report``, which is also the engine's
``on_progress`` callback. ``Job.stop()`` makes the next report raise :class:`Cancelled`, so
a stop request takes effect at the engine's next progress event.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job's worker when the user asked it to stop."""


class Job:
    """Run ``work(report)`` on a daemon thread and keep its progress, result or error.

    Parameters
    ----------
    kind : what the job does ("unlearn", "retrain", "live"); pages pick the jobs they draw.
    label : one line for the user ("Removing person 03").
    work : callable receiving ``report(event: dict)``; its return value becomes ``result``.
    payload : anything the page needs afterwards to commit the result (request, settings).
    """

    def __init__(self, kind: str, label: str, work: Callable[[Callable[[dict], None]], Any],
                 payload: dict | None = None):
        self.kind = kind
        self.label = label
        self.payload = dict(payload or {})
        self.events: list[dict] = []
        self.latest: dict[str, dict] = {}   # last event per phase
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_s = 0.0
        self.finished_s: float | None = None
        self._work = work
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"lcodec-{kind}", daemon=True)

    def start(self) -> "Job":
        self.started_s = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._work(self.report)
        except BaseException as error:  # reported to the page, which shows it
            if not isinstance(error, Cancelled):
                log.exception("job %s failed", self.label)
            self.error = error
        finally:
            self.finished_s = time.perf_counter()

    def report(self, event: dict) -> None:
        """Record a progress event (called from the worker); raise Cancelled after stop()."""
        if self._stop.is_set():
            raise Cancelled(f"{self.label}: stopped")
        with self._lock:
            self.events.append(dict(event))
            self.latest[event.get("phase", "")] = dict(event)

    def stop(self) -> None:
        """Ask the worker to stop at its next progress report."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (for tests and scripts); True if it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> tuple[list[dict], dict[str, dict]]:
        """Copies of the events and the latest event per phase, safe to draw."""
        with self._lock:
            return list(self.events), dict(self.latest)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.finished_s is not None and not self._thread.is_alive()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    @property
    def elapsed_s(self) -> float:
        end = self.finished_s if self.finished_s is not None else time.perf_counter()
        return end - self.started_s if self.started_s else 0.0
