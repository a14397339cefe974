"""The dashboard's deletion ledger under Streamlit's AppTest harness: a committed removal is
recorded with its guarantee and verdict, the Ledger page shows it with its outcome and the
cumulative cost, a removal the engine refuses (harmful noise) is not recorded, and an
unavailable ledger only warns. One committed removal in all (Start here, the engine's default)
and one refused one, so the module stays short."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from apptest import FORGET_ID, JOB_TIMEOUT_S, OTHER_ID, assert_clean, start_app, wait_for_job
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
    # No noise: no guarantee, so no (epsilon, delta) is recorded; the verdict goes with it.
    assert row.metrics["guarantee"] == removal.result.guarantee == "none"
    assert row.epsilon is None and row.delta is None and not row.noised
    assert row.metrics["verdict"] == removal.verdict.to_dict()
    assert row.metrics["verdict"]["status"] == "forgotten"
    assert removed.session_state["ledger_warning"] is None


def test_only_a_certified_removal_records_an_epsilon(removed):
    """Heuristic noise has a sigma but no (epsilon, delta) in the ledger."""
    import dataclasses

    from lcodec_app.records import entry_for
    bench = removed.session_state["workbench"]
    removal = bench.history[-1]
    noised = removal.config.with_(epsilon=5.0, delta=1e-6)
    for guarantee, epsilon, delta in (("heuristic", None, None), ("certified", 5.0, 1e-6)):
        result = dataclasses.replace(removal.result, config=noised, sigma=0.5, guarantee=guarantee)
        entry = entry_for(dataclasses.replace(removal, config=noised, result=result))
        assert (entry.epsilon, entry.delta, entry.metrics["guarantee"]) == (epsilon, delta, guarantee)
        assert entry.sigma == 0.5


def test_harmful_noise_is_refused_with_an_error_and_no_record(removed, ledger_path):
    """epsilon = 0.01 on the default model: the engine refuses the noise; the page says so as
    an error (no success banner, no crash), and nothing is committed or recorded."""
    from lcodec_core.unlearning.unlearn import HarmfulNoiseError
    at = start_app({"identity": str(OTHER_ID)})
    at.switch_page("views/forget.py").run()
    at.toggle(key="forget_noise").set_value(True).run()
    at.number_input(key="forget_eps").set_value(0.01).run()
    assert_clean(at)
    warning = next(w.value for w in at.warning if "This noise is large" in w.value)
    assert "Keep a wrecked model anyway" in warning
    rows_before = len(Ledger(ledger_path).rows())
    at.button(key="forget_run").click().run()
    job = wait_for_job(at)
    assert isinstance(job.error, HarmfulNoiseError)
    at.run()
    assert not at.exception
    assert not at.success
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "was refused, and nothing was removed" in errors[0], errors
    assert "epsilon=0.01" in errors[0]
    bench = at.session_state["workbench"]
    assert not bench.history and bench.current_hash == bench.base_hash
    assert len(Ledger(ledger_path).rows()) == rows_before
    at.switch_page(PAGE).run()
    assert metric_value(at, "Removals behind this model") == "0"


def test_ledger_page_shows_the_removal_and_no_guarantee(removed, ledger_path):
    removed.switch_page(PAGE).run()
    assert_clean(removed)
    assert metric_value(removed, "Removals behind this model") == "1"
    assert metric_value(removed, "Cumulative epsilon") == "no guarantee"  # no noise
    table = removed.dataframe[0].value
    assert list(table["removed"]) == [f"person {FORGET_ID:02d} (8 photos)"]
    assert list(table.columns[:6]) == ["id", "time (UTC)", "removed", "method", "outcome",
                                       "guarantee"]
    removal = removed.session_state["workbench"].history[-1]
    forgotten = removal.after["forget_accuracy"]
    relearned = removal.attacks["unlearned"]["relearned"]["10"]
    assert list(table["outcome"]) == [f"forgotten, {forgotten:.1%} recognised, "
                                      f"{relearned:.0%} back after 10 relearning steps"]
    assert list(table["guarantee"]) == ["no noise, no guarantee"]
    assert list(table["epsilon"]) == ["no guarantee"]
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
