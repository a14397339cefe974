"""One record of a removal (issue 12): the command line's --json, the dashboard's download and
the ledger rows of the same removal agree, and a retrained reference makes a new record."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

import apptest  # noqa: F401  (puts app/ on sys.path)
from lcodec_app import records, report, work
from lcodec_app.workbench import ModelKey, SharedBase, Workbench
from lcodec_core import RemovalRecord, UnlearnConfig, compare_with_retraining, make_request, remove
from lcodec_core.cli import main as cli_main
from lcodec_core.ledger import Ledger
from lcodec_core.unlearning.block import warm_up
from lcodec_models import state_hash

IDENTITY = 6
# What legitimately differs between two runs of the same removal: clocks and memory.
RUN_DEPENDENT = {"timings", "peak_memory_mb", "speedup_over_retrain"}


def run_job(work_fn):
    from lcodec_app.jobs import Job
    job = Job("test", "test", work_fn).start()
    assert job.wait(600) and job.error is None, repr(job.error)
    return job.result


def comparable(record_json: dict) -> dict:
    """The record without its run-dependent fields (diagnostics keep only the step's numbers)."""
    out = {k: v for k, v in record_json.items() if k not in RUN_DEPENDENT | {"ledger", "saved_to"}}
    out["diagnostics"] = {k: v for k, v in record_json["diagnostics"].items() if not k.endswith("_s")}
    return out


@pytest.fixture(scope="module")
def same_removal(trained_small_cnn, tmp_path_factory):
    """Identity 6 removed by the command line (in process) and by the dashboard's job, each
    recorded in its own ledger."""
    checkpoint, bundle = trained_small_cnn
    folder = tmp_path_factory.mktemp("record")
    warm_up()
    cli_json, cli_ledger = folder / "cli.json", folder / "cli.sqlite"
    assert cli_main(["unlearn", "--dataset", "olivetti", "--forget-identity", str(IDENTITY),
                     "--json", str(cli_json), "--ledger", str(cli_ledger)]) == 0
    shared = SharedBase(ModelKey(), checkpoint, bundle, state_hash(checkpoint.model))
    bench = Workbench.from_base(shared)
    request = make_request(bundle, identity=IDENTITY)
    removal = run_job(work.removal_work(bench, request, UnlearnConfig()))
    bench.push(removal)
    app_ledger = folder / "app.sqlite"
    previous, records.LEDGER_PATH = records.LEDGER_PATH, app_ledger
    try:
        assert records.record_removal(removal) is None
    finally:
        records.LEDGER_PATH = previous
    return {"cli": json.loads(cli_json.read_text()), "cli_ledger": Ledger(cli_ledger).rows(),
            "bench": bench, "removal": removal, "app_ledger": Ledger(app_ledger).rows()}


def test_the_cli_json_and_the_dashboard_download_agree(same_removal):
    cli = same_removal["cli"]
    download = json.loads(report.report_json(same_removal["bench"]))["removals"][0]
    assert set(cli) - {"ledger"} == set(download)
    assert comparable(cli) == comparable(download)
    assert cli["verdict"]["status"] == "forgotten" and cli["unlearned"]["forget_accuracy"] == 0.0
    assert cli["request"]["who"] == download["request"]["who"] == f"person {IDENTITY:02d}"


def test_the_ledger_rows_of_both_agree_with_the_record(same_removal):
    (cli_row,), (app_row,) = same_removal["cli_ledger"], same_removal["app_ledger"]
    record = same_removal["removal"].to_json()
    skip = {"id", "time", "metrics"}
    assert ({k: v for k, v in cli_row.to_dict().items() if k not in skip}
            == {k: v for k, v in app_row.to_dict().items() if k not in skip})
    for row in (cli_row, app_row):
        assert (row.model_before, row.model_after) == (record["model_hash_before"],
                                                       record["model_hash_after"])
        for key in ("original", "before", "unlearned", "verdict", "guarantee"):
            assert row.metrics[key] == record[key], key


def test_the_record_is_frozen_and_a_reference_makes_a_new_one(trained_small_cnn):
    checkpoint, bundle = trained_small_cnn
    request = make_request(bundle, indices=[0, 1])
    before = copy.deepcopy(checkpoint.model.state_dict())
    record = remove(checkpoint, bundle, request, UnlearnConfig(num_perturbations=10))
    assert isinstance(record, RemovalRecord) and record.retrained is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.retrained = {}
    compared = compare_with_retraining(record, checkpoint.model, checkpoint.recipe, bundle)
    assert compared is not record and record.retrained is None and record.audit is None
    assert compared.retrained is not None and compared.retrain_s > 0 and compared.audit
    out = compared.to_json()
    json.dumps(out, allow_nan=False)                       # strict JSON: no NaN anywhere
    assert out["unlearned"]["forget_test_accuracy"] is None   # photos, not a person: no held-out
    assert out["request"]["who"] == "2 photos"
    assert out["speedup_over_retrain"] == pytest.approx(compared.retrain_s / out["timings"]["unlearn_s"])
    assert all(checkpoint.model.state_dict()[k].equal(v) for k, v in before.items())
