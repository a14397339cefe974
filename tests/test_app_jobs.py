"""What the job widgets say while a job runs and after it is stopped (no server needed)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

from lcodec_app.jobs import Job  # noqa: E402
from lcodec_app.state import stopped_message  # noqa: E402
from lcodec_app.widgets import latest_inner_event  # noqa: E402


def test_live_progress_follows_the_reference_retraining_not_the_last_probe():
    """The retraining's epochs carry no step number; they are newer than the last probe and
    must be what the page shows (it used to stay on 'probing 8 image(s)')."""
    events = [
        {"phase": "step", "row": {"step": 0}},
        {"phase": "probe", "step": 2, "steps": 2, "message": "probing 8 image(s)"},
        {"phase": "step", "row": {"step": 2}},
        {"phase": "retrain", "fraction": 0.25, "message": "retraining from scratch: epoch 5/20"},
    ]
    assert latest_inner_event(events)["message"].endswith("epoch 5/20")
    assert latest_inner_event(events[:2])["phase"] == "probe"
    assert latest_inner_event(events[:1]) is None


def run_until_stopped(kind: str, steps_before_stop: int) -> Job:
    reached = threading.Event()

    def work(report):
        report({"phase": "step", "row": {"step": 0}})
        for step in range(1, steps_before_stop + 1):
            report({"phase": "step", "row": {"step": step}})
        reached.set()
        while True:
            report({"phase": "probe", "message": "probing"})

    job = Job(kind, "Removing 4 one after another", work).start()
    assert reached.wait(5)
    job.stop()
    assert job.wait(5) and job.cancelled
    return job


def test_stop_confirmation_counts_the_live_removals_that_finished():
    message = stopped_message(run_until_stopped("live", 2))
    assert message.startswith("Stopped 'Removing 4 one after another' after ")
    assert "2 removals had finished" in message and "model is unchanged" in message
    assert "1 removal had finished and is" in stopped_message(run_until_stopped("live", 1))


def test_stop_confirmation_of_a_removal_says_nothing_changed():
    assert "nothing was changed" in stopped_message(run_until_stopped("unlearn", 0))
