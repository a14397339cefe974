"""Helpers for the dashboard's tests under Streamlit's AppTest harness (not a test module).

``import apptest`` also puts ``app/`` on ``sys.path`` so that tests can import ``lcodec_app``
as ``streamlit run`` would.
"""
from __future__ import annotations

import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP_DIR = Path(__file__).resolve().parents[1] / "app"
APP = APP_DIR / "streamlit_app.py"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

FORGET_ID, OTHER_ID = 5, 0  # identities the engine's default removes reliably
JOB_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120


def start_app(query: dict | None = None) -> AppTest:
    """A fresh browser session on the app (with URL ``query``), run once and clean."""
    at = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT_S)
    if query:
        at.query_params.update(query)
    at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def finish(at: AppTest) -> AppTest:
    """Wait for the session's running job, then rerun so the page commits and shows it."""
    job = wait_for_job(at)
    assert job.error is None, repr(job.error)
    at.run()
    assert_clean(at)
    return at


def wait_for_job(at: AppTest):
    """Wait for the session's running job (without requiring success); returns the job."""
    job = at.session_state["job"]
    assert job is not None, "no job was started"
    assert job.wait(JOB_TIMEOUT_S), f"{job.label} did not finish in {JOB_TIMEOUT_S} s"
    return job


def run_forget(at: AppTest, identity: int) -> None:
    """On the Forget page, choose ``identity`` and press Run (the job starts, not awaited)."""
    at.switch_page("views/forget.py").run()
    at.selectbox(key="forget_identity").set_value(identity).run()
    at.button(key="forget_run").click().run()
    assert_clean(at)
