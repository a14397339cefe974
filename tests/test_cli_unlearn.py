"""``python -m lcodec_core unlearn`` end to end on the cached default model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lcodec_core.paths
from lcodec_models import load_checkpoint, state_hash

CHECKOUT = lcodec_core.paths.CHECKOUT_DIR


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LCODEC_OFFLINE": "1"}   # LCODEC_HOME: the session's, with the cached model
    return subprocess.run([sys.executable, "-m", "lcodec_core", *args], cwd=CHECKOUT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def removal(trained_small_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "report.json"
    saved = out.with_name("unlearned.pt")
    result = run_cli("unlearn", "--dataset", "olivetti", "--forget-identity", "3", "--perturbations",
                     "20", "--json", str(out), "--save", str(saved))
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text()), saved


def test_report_has_the_documented_fields(removal):
    _, report, _ = removal
    for split in ("original", "unlearned"):
        assert set(report[split]) == {"retain_accuracy", "forget_accuracy", "test_accuracy",
                                      "forget_test_accuracy"}
    assert set(report["timings"]) >= {"probe_s", "select_s", "newton_s", "unlearn_s", "retrain_s"}
    assert report["selected_slices"] and {"module", "index", "score", "order"} <= set(report["selected_slices"][0])
    assert report["parameters_updated"] > 0 and report["sigma"] == 0.0
    assert report["settings"]["num_perturbations"] == 20 and report["settings"]["method"] == "lfoci"
    assert report["request"]["identity"] == 3 and len(report["request"]["forget_indices"]) == 8


def test_identity_is_forgotten_and_the_rest_kept(removal):
    _, report, _ = removal
    assert report["original"]["forget_accuracy"] == 1.0
    assert report["unlearned"]["forget_accuracy"] <= 0.25
    assert report["unlearned"]["retain_accuracy"] >= 0.99 * report["original"]["retain_accuracy"]


def test_report_has_the_default_step_guarantee_and_verdict(removal):
    """Engine v3 defaults: the head at the retained optimum (converged), no noise and so no
    guarantee, the attacks beside the accuracies, and a verdict read from both."""
    _, report, _ = removal
    settings = report["settings"]
    assert (settings["step_rule"], settings["feature_step"]) == ("optimum", False)
    step = report["diagnostics"]["step"]
    assert step["rule"] == "retained_optimum" and step["converged"] and step["head"] == "fc"
    assert step["null_control"]["ratio"] < 0.01
    assert report["attacks"]["unlearned"]["kind"] == "identity"
    assert report["attacks"]["unlearned"]["relearned"]["10"] <= report["attacks"]["before"]["relearned"]["10"]
    assert "newton" not in report["diagnostics"]
    assert report["guarantee"] == "none" and report["guarantee_reasons"]
    verdict = report["verdict"]
    assert {"status", "ok", "headline", "advice"} <= set(verdict)
    assert verdict["status"] in ("forgotten", "hidden", "unconfirmed", "still_recognised",
                                 "damaged", "unchanged")
    assert verdict["ok"] == (verdict["status"] == "forgotten")


def test_summary_on_stdout_progress_on_stderr(removal):
    result, _, _ = removal
    assert "forget_accuracy" in result.stdout and "Request: forget identity 3" in result.stdout
    assert "step: the head (fc" in result.stdout and "retained optimum" in result.stdout
    assert "relearned 10 steps" in result.stdout and "margin AUC" in result.stdout
    assert "guarantee: no noise, no guarantee" in result.stdout and "verdict: " in result.stdout
    assert "[  probe]" in result.stderr and "[ newton]" in result.stderr


def test_saved_model_loads_safely_and_the_cache_is_untouched(removal, trained_small_cnn):
    _, report, saved = removal
    checkpoint = load_checkpoint(saved)
    assert checkpoint.metadata["removed"]["identity"] == 3
    assert checkpoint.metadata["parent_hash"] == state_hash(trained_small_cnn[0].model)
    assert state_hash(checkpoint.model) != checkpoint.metadata["parent_hash"]


@pytest.mark.parametrize("args, message", [
    (["--forget-identity", "99"], "identity must be in [0, 40)"),
    (["--forget-index", "5000"], "training indices must be in [0, 320)"),
    (["--forget-identity", "1", "--perturbations", "2"], "num_perturbations (m) must be >= 3"),
    (["--forget-identity", "1", "--model", "nonexistent.pt"], "does not exist"),
])
def test_bad_requests_are_one_line_errors(trained_small_cnn, args, message):
    result = run_cli("unlearn", "--dataset", "olivetti", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_index_request_writes_strict_json(trained_small_cnn, tmp_path):
    out = tmp_path / "report.json"
    result = run_cli("unlearn", "--dataset", "olivetti", "--forget-index", "7", "--perturbations", "10",
                     "--json", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "NaN" not in text
    report = json.loads(text)
    assert report["unlearned"]["forget_test_accuracy"] is None   # no held-out images for an index request
    assert report["request"]["forget_indices"] == [7]
