"""Sessions that outlive their browser tab: restore after a reload, cancel after a close.

Streamlit forgets a session's state when its tab reloads or closes, but a job thread keeps
running. This module keeps, per server, what a session owns (its workbench, running job,
finished jobs) under a token that the page writes into its URL (``?session=...``):

- **Reload**: the new Streamlit session finds the token in its URL and *adopts* what the old
  one owned, including a job that is still running, whose result it then commits as usual.
  A token the server does not know (it restarted, or the entry expired) is reported, so the
  page can say plainly that the earlier work is lost.
- **Close**: a session whose Streamlit session is no longer active and has not been adopted
  within :data:`CANCEL_AFTER_S` gets its running job stopped (the job raises ``Cancelled`` at
  its next progress event, so no model changes); the entry is dropped after
  :data:`FORGET_AFTER_S`.

A token is only adopted from a session that is no longer active, so a shared link never
hands one person's work to another tab: that tab starts afresh with a token of its own.
Nothing here imports Streamlit; ``is_active`` (a function of a Streamlit session id) is given
by the caller, which keeps the logic testable without a server.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

CANCEL_AFTER_S = 30.0         # a closed tab's job runs on this long, in case the tab reloads
FORGET_AFTER_S = 30 * 60.0    # a closed tab's models are kept this long for a reload


@dataclass
class Parked:
    """What one browser tab owns, kept by the server (the same objects, not copies)."""
    owner: str                          # Streamlit session id of the tab that holds it now
    values: dict[str, Any]              # session-state entries (workbench, job, finished, ...)
    seen_s: float = field(default_factory=time.monotonic)
    gone_since_s: float | None = None   # when its owner was first seen inactive


class SessionStore:
    """Token -> :class:`Parked`, shared by all sessions of one server (thread-safe).

    ``is_active(session_id) -> bool`` says whether a Streamlit session is still connected.
    ``clock`` is ``time.monotonic`` (replaceable in tests).
    """

    def __init__(self, is_active: Callable[[str], bool], clock: Callable[[], float] = time.monotonic):
        self._is_active = is_active
        self._clock = clock
        self._entries: dict[str, Parked] = {}
        self._lock = threading.Lock()

    @staticmethod
    def new_token() -> str:
        return secrets.token_urlsafe(9)

    def save(self, token: str, owner: str, values: dict[str, Any]) -> None:
        """Record what session ``owner`` holds under ``token`` (called on every script run)."""
        with self._lock:
            self._entries[token] = Parked(owner, dict(values), self._clock())

    def adopt(self, token: str, owner: str) -> dict[str, Any] | None:
        """What ``token`` held, handed to session ``owner``, if its previous session is gone.

        Returns None when the token is unknown, or when another live session still holds it
        (a shared link): the caller then starts afresh under a new token.
        """
        with self._lock:
            parked = self._entries.get(token)
            if parked is None or (parked.owner != owner and self._is_active(parked.owner)):
                return None
            parked.owner, parked.gone_since_s, parked.seen_s = owner, None, self._clock()
            return dict(parked.values)

    def knows(self, token: str) -> bool:
        with self._lock:
            return token in self._entries

    def sweep(self) -> list[str]:
        """Stop the jobs of sessions closed for CANCEL_AFTER_S, drop those closed for
        FORGET_AFTER_S. Returns the labels of the jobs it stopped."""
        now, stopped = self._clock(), []
        with self._lock:
            for token, parked in list(self._entries.items()):
                if self._is_active(parked.owner):
                    parked.gone_since_s = None
                    continue
                if parked.gone_since_s is None:
                    parked.gone_since_s = now
                gone_for = now - parked.gone_since_s
                job = parked.values.get("job")
                if gone_for >= CANCEL_AFTER_S and job is not None and not job.done \
                        and not job.stop_requested:
                    job.stop()
                    stopped.append(job.label)
                if gone_for >= FORGET_AFTER_S:
                    del self._entries[token]
        return stopped

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def start_sweeper(store: SessionStore, every_s: float = 5.0,
                  on_stop: Callable[[list[str]], None] | None = None) -> threading.Thread:
    """A daemon thread that calls ``store.sweep()`` every ``every_s`` seconds."""
    def loop() -> None:
        while True:
            time.sleep(every_s)
            stopped = store.sweep()
            if stopped and on_stop is not None:
                on_stop(stopped)

    thread = threading.Thread(target=loop, name="lcodec-session-sweeper", daemon=True)
    thread.start()
    return thread
