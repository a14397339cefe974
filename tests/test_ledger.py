"""The deletion ledger: schema, lineages, cumulative (epsilon, delta), concurrent writers,
crash safety of save_and_record (a subprocess killed at each step), and the CLI."""
from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

import lcodec_core.paths
from lcodec_core.ledger import (SCHEMA_VERSION, Ledger, LedgerError, RemovalEntry, privacy_cost,
                                write_and_record)

CHECKOUT = lcodec_core.paths.CHECKOUT_DIR


def h(char: str) -> str:
    """A fake 64-character model hash."""
    return char * 64


def entry(before: str, after: str, epsilon: float | None = None, delta: float = 1e-5,
          sigma: float | None = None, **extra) -> RemovalEntry:
    if sigma is None:
        sigma = 0.5 if epsilon is not None else 0.0
    return RemovalEntry(model_before=h(before), model_after=h(after), dataset="olivetti",
                        model_name="small_cnn", identity=3, forget_indices=[24, 25],
                        file_names=["olivettifaces.mat#24", "olivettifaces.mat#25"],
                        method="lfoci", settings={"seed": 0, "epsilon": epsilon}, sigma=sigma,
                        epsilon=epsilon, delta=delta if epsilon is not None else None,
                        metrics={"unlearned": {"forget_accuracy": 0.0,
                                               "forget_test_accuracy": math.nan}}, **extra)


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ledger.sqlite")


def test_schema_is_created_with_a_version_and_rows_round_trip(ledger):
    assert ledger.schema_version == SCHEMA_VERSION
    row = ledger.record(entry("a", "b", epsilon=1.0))
    assert row.id == 1 and row.time.endswith("+00:00") and row.status == "committed"
    assert row.forget_indices == [24, 25] and row.file_names[0] == "olivettifaces.mat#24"
    assert row.settings == {"seed": 0, "epsilon": 1.0} and row.model_path is None
    assert row.metrics["unlearned"]["forget_test_accuracy"] is None   # NaN is stored as null
    assert Ledger(ledger.path).rows() == [row]                       # reopening keeps it


def test_a_newer_schema_is_refused(ledger):
    with sqlite3.connect(ledger.path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="schema version"):
        Ledger(ledger.path)


def test_a_file_that_is_not_a_database_is_a_ledger_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not sqlite at all, just text " * 100)
    with pytest.raises(LedgerError, match="bad.sqlite"):
        Ledger(bad)


def test_lineage_is_inherited_along_a_chain_and_branches(ledger):
    first = ledger.record(entry("a", "b"))
    second = ledger.record(entry("b", "c"))
    branch = ledger.record(entry("b", "d"))           # an undo, then another removal
    other = ledger.record(entry("x", "y"))
    assert first.lineage == second.lineage == branch.lineage == h("a")
    assert other.lineage == h("x")
    assert [r.id for r in ledger.rows(lineage=h("a"))] == [1, 2, 3]
    assert [r.id for r in ledger.rows(lineage="aaaaaa")] == [1, 2, 3]   # a prefix
    assert [r.id for r in ledger.rows(model_hash=h("b"))] == [1, 2, 3]
    assert [r.id for r in ledger.ancestry(h("c"))] == [1, 2]
    assert [r.id for r in ledger.ancestry(h("d"))] == [1, 3]
    assert ledger.ancestry(h("a")) == [] and ledger.lineage_of(h("c")) == h("a")
    assert ledger.resolve_hash("cccccc") == h("c")
    with pytest.raises(ValueError, match="no model"):
        ledger.resolve_hash("123456")


def test_cumulative_cost_sums_epsilons_and_deltas(ledger):
    ledger.record(entry("a", "b", epsilon=1.0, delta=1e-5))
    ledger.record(entry("b", "c", epsilon=0.5, delta=2e-5))
    cost = ledger.lineage_cost(h("a"))
    assert cost.removals == 2 and cost.unnoised == 0 and cost.has_guarantee
    assert cost.epsilon == pytest.approx(1.5) and cost.delta == pytest.approx(3e-5)
    assert ledger.model_cost(h("b")).epsilon == pytest.approx(1.0)
    assert "epsilon 1.5" in cost.describe()
    assert privacy_cost([]).epsilon == 0.0 and privacy_cost([]).has_guarantee


def test_a_removal_without_noise_means_no_guarantee_never_zero(ledger):
    ledger.record(entry("a", "b", epsilon=1.0))
    ledger.record(entry("b", "c"))                                  # no noise
    ledger.record(entry("c", "d", epsilon=2.0, sigma=0.0))          # epsilon asked, no noise added
    cost = ledger.lineage_cost(h("a"))
    assert cost.epsilon == math.inf and cost.unnoised == 2 and not cost.has_guarantee
    assert cost.delta == pytest.approx(1e-5)
    assert cost.to_dict()["epsilon"] is None and cost.to_dict()["has_guarantee"] is False
    assert "no guarantee" in cost.describe() and "2 of 3" in cost.describe()
    assert ledger.model_cost(h("b")).has_guarantee                  # before the un-noised one
    assert ledger.lineages()[h("a")] == cost


def test_concurrent_writers_from_threads(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path)
    errors = []

    def writer(worker: int) -> None:
        try:
            ledger = Ledger(path)
            for step in range(10):
                ledger.record(entry("a", f"{worker}", epsilon=0.1))
        except Exception as error:   # reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = Ledger(path).rows()
    assert len(rows) == 60 and len({r.id for r in rows}) == 60
    assert Ledger(path).lineage_cost(h("a")).epsilon == pytest.approx(6.0)


def test_write_and_record_commits_both_and_keeps_nothing_else(ledger, tmp_path):
    final = tmp_path / "models" / "unlearned.pt"
    row = write_and_record(b"model bytes", final, entry("a", "b"), ledger)
    assert final.read_bytes() == b"model bytes" and row.model_path == str(final)
    assert ledger.verify_files() == {row.id: "ok"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["unlearned.pt"]
    final.write_bytes(b"something else")
    assert ledger.verify_files() == {row.id: "changed"}
    final.unlink()
    assert ledger.verify_files() == {row.id: "missing"}
    assert len(ledger.rows()) == 1           # the removal stays on the record


def test_a_failed_write_leaves_neither_and_the_old_file(ledger, tmp_path, monkeypatch):
    final = tmp_path / "unlearned.pt"
    final.write_bytes(b"the previous model")

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_and_record(b"new model", final, entry("a", "b"), ledger)
    monkeypatch.undo()
    assert final.read_bytes() == b"the previous model"
    assert ledger.rows() == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "ledger.sqlite", "unlearned.pt"]


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from lcodec_core import ledger as L
    from lcodec_core.ledger import files
    path, final, step = sys.argv[1:4]

    def crash(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    files._step_hook = crash
    e = L.RemovalEntry(model_before="a" * 64, model_after="b" * 64, epsilon=1.0, delta=1e-5,
                       sigma=0.5)
    L.write_and_record(b"new model " * 1000, final, e, L.Ledger(path))
""")


@pytest.mark.parametrize("step, saved", [("row_pending", False), ("temp_written", False),
                                         ("renamed", True), ("committed", True)])
def test_a_process_killed_at_each_step_leaves_both_or_neither(tmp_path, step, saved):
    path, final = tmp_path / "ledger.sqlite", tmp_path / "out" / "unlearned.pt"
    final.parent.mkdir()
    final.write_bytes(b"the previous model")
    Ledger(path)
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path), str(final), step],
                            cwd=CHECKOUT, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr               # it was killed there
    with sqlite3.connect(path) as connection:                   # as the kill left it
        pending = connection.execute("SELECT status FROM removals").fetchall()
    assert pending == [("committed" if step == "committed" else "pending",)]

    ledger = Ledger(path)                                       # opening reconciles
    rows = ledger.rows()
    assert sorted(p.name for p in final.parent.iterdir()) == ["unlearned.pt"]   # no temp file
    if saved:
        assert final.read_bytes() == b"new model " * 1000
        assert len(rows) == 1 and rows[0].model_path == str(final)
        assert ledger.verify_files() == {rows[0].id: "ok"}
    else:
        assert final.read_bytes() == b"the previous model"     # the old file is kept
        assert rows == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM removals WHERE status = 'pending'"
                                  ).fetchone() == (0,)


def test_a_pending_save_of_a_live_process_is_left_alone(ledger, tmp_path):
    seen = {}

    def look(name):
        if name == "temp_written":          # another opener reconciles meanwhile
            seen["report"] = Ledger(ledger.path).reconcile()

    from lcodec_core.ledger import files as module
    module._step_hook = look
    try:
        row = write_and_record(b"bytes", tmp_path / "m.pt", entry("a", "b"), ledger)
    finally:
        module._step_hook = None
    assert seen["report"].rolled_back == [] and seen["report"].committed == []
    assert ledger.rows() == [row]


# Command line ---------------------------------------------------------------------------------

def run_cli(*args: str, home=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LCODEC_OFFLINE": "1"}
    if home is not None:
        env["LCODEC_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "lcodec_core", *args], cwd=CHECKOUT, env=env,
                          capture_output=True, text=True, timeout=900)


def cli_main(capsys, *args: str) -> tuple[int, str, str]:
    """``lcodec`` in this process (fast): (exit status, stdout, stderr)."""
    from lcodec_core.cli import main
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_ledger_prints_removals_and_cumulative_cost(tmp_path, capsys):
    ledger = Ledger(tmp_path / "ledger.sqlite")   # in LCODEC_HOME=tmp_path: the default path
    ledger.record(entry("a", "b", epsilon=1.0))
    ledger.record(entry("b", "c", epsilon=0.5))
    ledger.record(entry("x", "y"))
    table = run_cli("ledger", home=tmp_path)       # once as a real `python -m lcodec_core`
    assert table.returncode == 0, table.stderr
    assert "3 removal(s)" in table.stdout and "identity 3 (2 images)" in table.stdout
    assert "epsilon 1.5, delta 2e-05 over 2 removals" in table.stdout
    assert "no guarantee: 1 of 1 removal ran without noise" in table.stdout
    status, out, _ = cli_main(capsys, "ledger", "--json", "--lineage", "aaaaaaaa",
                              "--ledger", str(ledger.path))
    one = json.loads(out)
    assert status == 0 and [r["id"] for r in one["removals"]] == [1, 2]
    assert one["lineages"][h("a")]["epsilon"] == pytest.approx(1.5)
    status, out, _ = cli_main(capsys, "ledger", "--json", "--model-hash", "bbbbbbb",
                              "--ledger", str(ledger.path))
    model = json.loads(out)
    assert model["model_cost"]["epsilon"] == 1.0 and len(model["removals"]) == 1
    status, out, _ = cli_main(capsys, "ledger", "--ledger", str(tmp_path / "empty.sqlite"))
    assert status == 0 and "No removals recorded" in out


def test_cli_ledger_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database " * 100)
    for args, message in ((["--ledger", str(bad)], "file is not a database"),
                          (["--ledger", str(tmp_path / "l.sqlite"), "--lineage", "zz"], "hex"),
                          (["--ledger", str(tmp_path / "l.sqlite"), "--model-hash", "abcdef"],
                           "matches no model")):
        status, _, err = cli_main(capsys, "ledger", *args)
        assert status == 2 and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_unlearn_records_every_run(trained_small_cnn, tmp_path, capsys):
    from lcodec_models import load_checkpoint, state_hash
    path, saved = tmp_path / "ledger.sqlite", tmp_path / "unlearned.pt"
    fast = ["--dataset", "olivetti", "--method", "negrad", "--ledger", str(path)]
    first = run_cli("unlearn", *fast, "--forget-index", "7", "--save", str(saved))
    assert first.returncode == 0, first.stderr
    assert "ledger: removal 1 recorded" in first.stdout
    status, _, err = cli_main(capsys, "unlearn", *fast, "--model", str(saved),  # in-process: faster
                              "--forget-index", "9", "--epsilon", "1", "--allow-harmful-noise")
    assert status == 0, err
    ledger = Ledger(path)
    rows = ledger.rows()
    base = state_hash(trained_small_cnn[0].model)
    saved_hash = state_hash(load_checkpoint(saved).model)
    assert [r.forget_indices for r in rows] == [[7], [9]]
    assert rows[0].model_before == base and rows[0].model_after == saved_hash
    assert rows[0].model_path == str(saved) and ledger.verify_files() == {rows[0].id: "ok"}
    assert rows[1].model_before == saved_hash and rows[1].model_path is None
    assert rows[0].lineage == rows[1].lineage == base             # the saved model's lineage
    assert rows[0].method == "negrad" and rows[1].sigma > 0
    # noise on a network is heuristic: no epsilon is recorded for it (only certified removals)
    assert rows[1].epsilon is None and rows[1].metrics["guarantee"] == "heuristic"
    assert not ledger.lineage_cost(base).has_guarantee             # the first had no noise
    assert ledger.model_cost(rows[1].model_after).unnoised == 2


# One privacy rule and one row layout for the command line and the dashboard -------------------

BEFORE = {"retain_accuracy": 1.0, "forget_accuracy": 1.0, "test_accuracy": 0.9,
          "forget_test_accuracy": 0.8}
AFTER = {"retain_accuracy": 0.98, "forget_accuracy": 0.0, "test_accuracy": 0.88,
         "forget_test_accuracy": 0.05}
TIMINGS = {"unlearn_s": 1.5, "retrain_s": None}


def app_removal(before: str, after: str, guarantee: str, epsilon: float | None = None,
                delta: float = 1e-5):
    """A dashboard removal record of identity 3 (its request stood in, its engine result
    without a model)."""
    from types import SimpleNamespace

    import apptest  # noqa: F401  (puts app/ on sys.path)
    from lcodec_app.workbench import Removal
    from lcodec_core.unlearning.config import UnlearnConfig
    from lcodec_core.unlearning.result import UnlearnResult
    request = SimpleNamespace(identity=3, forget_indices=[24, 25], description="identity 3",
                              retain_indices=list(range(10)),
                              forget=SimpleNamespace(sources=["olivettifaces.mat#24",
                                                              "olivettifaces.mat#25"]))
    config = UnlearnConfig(epsilon=epsilon, delta=delta)
    result = UnlearnResult(model=None, config=config, guarantee=guarantee,
                           sigma=0.5 if epsilon is not None else 0.0, timings=dict(TIMINGS),
                           diagnostics={"changed": guarantee != "unchanged"})
    return Removal(request, config, result, original=dict(BEFORE), before=dict(BEFORE),
                   after=dict(AFTER), hash_before=h(before), hash_after=h(after),
                   dataset="olivetti", model_name="small_cnn", who="person 03")


def app_bench(removals: list):
    import apptest  # noqa: F401  (puts app/ on sys.path)
    from lcodec_app.workbench import ModelKey, Workbench
    return Workbench(ModelKey("olivetti", "small_cnn"), h("a"), None, {}, None, list(removals))


@pytest.mark.parametrize("steps, expected", [
    ([("b", "certified", 1.0, 1e-5), ("c", "certified", 0.5, 2e-5)], (1.5, 3e-5)),
    ([("b", "certified", 1.0, 1e-5), ("c", "heuristic", 2.0, 1e-5),
      ("d", "certified", 0.5, 2e-5)], (None, 3e-5)),
    ([("b", "certified", 1.0, 1e-5), ("b", "unchanged", 1.0, 1e-5)], (None, 1e-5)),
    ([("a", "unchanged", None, 1e-5), ("b", "certified", 1.0, 1e-5)], (None, 1e-5)),
    ([("b", "none", None, 1e-5), ("c", "certified", 1.0, 1e-5)], (None, 1e-5)),
], ids=["certified", "heuristic-among-certified", "unchanged-after-certified",
        "unchanged-at-root", "no-noise"])
def test_the_ledger_and_the_dashboard_spend_the_same_privacy(ledger, steps, expected):
    """The Ledger page's model cost, the dashboard's Workbench.privacy_spent and the one rule
    agree; an unchanged removal (model_after == model_before) removed nothing, so it voids
    the guarantee even after a certified removal of the same model."""
    import apptest  # noqa: F401  (puts app/ on sys.path)
    from lcodec_app.records import entry_for
    from lcodec_core.ledger import privacy_spent
    removals, current = [], "a"
    for after, guarantee, epsilon, delta in steps:
        removals.append(app_removal(current, after, guarantee, epsilon, delta))
        current = after
    bench = app_bench(removals)
    for removal in removals:
        ledger.record(entry_for(removal))
    spent = bench.privacy_spent()
    cost = ledger.model_cost(bench.current_hash)
    assert spent[0] == pytest.approx(expected[0]) and spent[1] == pytest.approx(expected[1])
    assert (cost.epsilon if cost.has_guarantee else None, cost.delta) == pytest.approx(spent)
    assert cost == ledger.lineage_cost(h("a"))          # one path: the whole lineage
    assert cost.removals == len(steps)
    labels = [(r.result.guarantee, r.config.epsilon, r.config.delta) for r in removals]
    assert privacy_spent(labels) == spent


def test_a_label_decides_over_a_stored_epsilon_and_unlabelled_rows_read_as_before(ledger):
    """Rows recorded before guarantee labels count as they did (epsilon with noise: certified);
    a labelled row counts by its label."""
    legacy = ledger.record(entry("a", "b", epsilon=1.0))
    assert legacy.guarantee == "certified" and legacy.noised
    import dataclasses
    heuristic = entry("b", "c", epsilon=1.0)   # written by hand: removal_entry would drop epsilon
    labelled = ledger.record(dataclasses.replace(heuristic, metrics={"guarantee": "heuristic"}))
    assert labelled.guarantee == "heuristic" and not labelled.noised
    assert not ledger.model_cost(h("c")).has_guarantee
    assert ledger.model_cost(h("b")).epsilon == 1.0


def test_a_ledger_row_is_the_removal_records_json(ledger):
    """The command line and the dashboard both record entry_from_record(record.to_json()):
    the row holds the record's accuracies, verdict and guarantee, and an (epsilon, delta)
    only when the removal is certified."""
    import apptest  # noqa: F401  (puts app/ on sys.path)
    from lcodec_app.records import entry_for
    from lcodec_core.ledger import METRIC_KEYS, entry_from_record
    for guarantee, epsilon in (("certified", 1.0), ("heuristic", 1.0), ("none", None)):
        removal = app_removal("a", "b", guarantee, epsilon)
        record = removal.to_json()
        row = ledger.record(entry_from_record(record))
        assert entry_for(removal) == entry_from_record(record)
        assert set(row.metrics) == set(METRIC_KEYS)
        for key in ("original", "before", "unlearned", "retrained", "verdict", "guarantee"):
            assert row.metrics[key] == record[key], key
        assert (row.model_before, row.model_after) == (record["model_hash_before"],
                                                       record["model_hash_after"])
        assert row.settings == record["settings"] and row.sigma == record["sigma"]
        assert (row.epsilon, row.noised) == ((1.0, True) if guarantee == "certified" else (None, False))
