"""Sessions that outlive their tab (lcodec_app.sessions): adopt on reload, cancel on close.

A fake clock and a fake "is this Streamlit session connected" stand in for the server, and a
real :class:`lcodec_app.jobs.Job` whose work waits for progress events stands in for a removal.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

from lcodec_app import sessions  # noqa: E402
from lcodec_app.jobs import Job  # noqa: E402
from lcodec_app.sessions import SessionStore  # noqa: E402


class Server:
    """Which Streamlit sessions are connected, and the time."""

    def __init__(self):
        self.active: set[str] = set()
        self.now = 1000.0

    def is_active(self, session_id: str) -> bool:
        return session_id in self.active

    def clock(self) -> float:
        return self.now


@pytest.fixture
def server():
    return Server()


@pytest.fixture
def store(server):
    return SessionStore(server.is_active, server.clock)


def looping_job() -> tuple[Job, threading.Event]:
    """A job that reports progress until stopped (or until ``finish`` is set)."""
    finish = threading.Event()

    def work(report):
        while not finish.wait(0.01):
            report({"phase": "probe", "fraction": 0.5})
        return "done"

    return Job("unlearn", "Removing person 03", work).start(), finish


def test_reload_adopts_the_closed_tabs_work_with_its_running_job(store, server):
    job, finish = looping_job()
    workbench = object()
    server.active = {"tab-1"}
    store.save("tok", "tab-1", {"workbench": workbench, "job": job})
    server.active = {"tab-2"}              # the reload: tab-1's session is gone, tab-2 is new
    restored = store.adopt("tok", "tab-2")
    assert restored["workbench"] is workbench and restored["job"] is job
    server.now += 10 * sessions.CANCEL_AFTER_S
    assert store.sweep() == []             # tab-2 holds it now: nothing is cancelled
    assert not job.stop_requested
    finish.set()
    assert job.wait(5) and job.result == "done"


def test_a_shared_link_does_not_hand_a_live_tabs_work_to_another(store, server):
    server.active = {"tab-1", "tab-2"}
    store.save("tok", "tab-1", {"workbench": "mine"})
    assert store.adopt("tok", "tab-2") is None
    assert store.knows("tok")              # known, so the page does not claim it was lost


def test_unknown_token_is_not_adopted(store):
    assert store.adopt("never-issued", "tab-1") is None
    assert not store.knows("never-issued")


def test_closed_tabs_job_is_cancelled_after_the_grace_period_then_forgotten(store, server):
    job, finish = looping_job()
    server.active = {"tab-1"}
    store.save("tok", "tab-1", {"job": job})
    server.active = set()                  # the tab closed
    assert store.sweep() == []             # first seen gone now
    server.now += sessions.CANCEL_AFTER_S - 1
    assert store.sweep() == [] and not job.stop_requested
    server.now += 2
    assert store.sweep() == ["Removing person 03"]
    assert job.wait(5) and job.cancelled   # stopped at its next progress event
    assert store.sweep() == []             # not stopped twice
    server.now += sessions.FORGET_AFTER_S
    store.sweep()
    assert not store.knows("tok") and len(store) == 0
    finish.set()


def test_tab_that_comes_back_before_the_grace_period_keeps_its_job(store, server):
    job, finish = looping_job()
    server.active = {"tab-1"}
    store.save("tok", "tab-1", {"job": job})
    server.active = set()
    store.sweep()
    server.now += sessions.CANCEL_AFTER_S / 2
    server.active = {"tab-1"}              # reconnected (a network blip)
    store.sweep()
    server.now += 10 * sessions.CANCEL_AFTER_S
    assert store.sweep() == [] and not job.stop_requested
    finish.set()
    assert job.wait(5) and job.result == "done"


def test_saved_values_are_a_new_dict_holding_the_same_objects(store, server):
    server.active = {"tab-1"}
    values = {"workbench": ["history"]}
    store.save("tok", "tab-1", values)
    values["workbench"] = "replaced later by the page"
    server.active = set()
    assert store.adopt("tok", "tab-2") == {"workbench": ["history"]}
