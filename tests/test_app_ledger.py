"""The dashboard's deletion ledger under Streamlit's AppTest harness: a committed removal is
recorded, the Ledger page shows it with the cumulative cost, and an unavailable ledger only
warns. One removal in all (the quick preset of Start here), so the module stays short."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from apptest import FORGET_ID, JOB_TIMEOUT_S, assert_clean, start_app
from lcodec_app import records
from lcodec_core.ledger import Ledger

PAGE = "views/ledger.py"


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory, trained_small_cnn):
    """The app's ledger, in a file of this module's own (restored afterwards)."""
    path = tmp_path_factory.mktemp("app_ledger") / "ledger.sqlite"
    previous, records.LEDGER_PATH = records.LEDGER_PATH, path
    yield path
    records.LEDGER_PATH = previous


@pytest.fixture(scope="module")
def removed(ledger_path) -> AppTest:
    """A session that removed person FORGET_ID from Start here."""
    at = start_app({"identity": str(FORGET_ID)})
    at.button(key="start_run").click().run()
    job = at.session_state["job"]
    assert job.wait(JOB_TIMEOUT_S) and job.error is None, repr(job.error)
    at.run()
    assert_clean(at)
    return at


def metric_value(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return values[0]


def test_ledger_page_renders_before_any_removal(ledger_path):
    at = start_app()
    at.switch_page(PAGE).run()
    assert_clean(at)
    assert at.title[0].value == "Deletion ledger"
    assert metric_value(at, "Removals behind this model") == "0"
    assert not at.warning


def test_a_committed_removal_is_recorded_with_its_lineage(removed, ledger_path):
    bench = removed.session_state["workbench"]
    removal = bench.history[-1]
    rows = Ledger(ledger_path).rows()
    assert len(rows) == 1
    row = rows[0]
    assert row.model_before == bench.base_hash and row.model_after == removal.hash_after
    assert row.lineage == bench.base_hash and row.model_path is None
    assert row.identity == FORGET_ID and row.forget_indices == removal.request.forget_indices
    assert row.method == removal.config.method and row.sigma == removal.result.sigma
    assert row.metrics["unlearned"]["forget_accuracy"] == removal.after["forget_accuracy"]
    assert removed.session_state["ledger_warning"] is None


def test_ledger_page_shows_the_removal_and_no_guarantee(removed, ledger_path):
    removed.switch_page(PAGE).run()
    assert_clean(removed)
    assert metric_value(removed, "Removals behind this model") == "1"
    assert metric_value(removed, "Cumulative epsilon") == "none"  # no noise: no guarantee
    table = removed.dataframe[0].value
    assert list(table["removed"]) == [f"identity {FORGET_ID} (8 photos)"]
    assert any("no guarantee: 1 of 1 removal" in m.value for m in removed.markdown)

    removed.switch_page("views/forget.py").run()                   # undo: the record stays,
    removed.button(key="forget_undo").click().run()                # the model has none behind it
    removed.switch_page(PAGE).run()
    assert_clean(removed)
    assert metric_value(removed, "Removals behind this model") == "0"
    assert len(removed.dataframe) == 2                            # lineage and all lineages


def test_an_unavailable_ledger_only_warns(removed, ledger_path, tmp_path, monkeypatch):
    bad = tmp_path / "not-a-ledger.sqlite"
    bad.write_text("this is not a database " * 100)
    monkeypatch.setattr(records, "LEDGER_PATH", bad)
    bench = removed.session_state["workbench"]
    removal = bench.history[-1] if bench.history else None
    if removal is not None:
        assert "not recorded" in records.record_removal(bench, removal)
    removed.switch_page(PAGE).run()
    assert_clean(removed)
    assert any("unavailable" in w.value for w in removed.warning)
    removed.switch_page("views/forget.py").run()                   # other pages still work
    assert_clean(removed)
