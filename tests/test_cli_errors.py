"""CLI errors (issue 7): a bad invocation exits non-zero with exactly one line on stderr,
starting ``lcodec: error:``, and no traceback. Each case runs the real console entry point
(``python -m lcodec_core``) in a subprocess, with the test session's LCODEC_HOME.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class WritesMarker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lcodec_core", *args], cwd=ROOT, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lcodec: error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cached_model(trained_small_cnn):
    """The default model is cached in LCODEC_HOME, so the CLI loads it instead of training."""
    return trained_small_cnn


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    result = run_cli("unlearn", "--model", str(missing), "--forget-identity", "1")
    assert_one_error_line(result, "does not exist")


def test_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(WritesMarker(str(marker))))
    result = run_cli("unlearn", "--model", str(evil), "--forget-identity", "1")
    assert_one_error_line(result, "not a safe lcodec checkpoint", "Nothing in it was executed")
    assert not marker.exists()


def test_unknown_dataset():
    assert_one_error_line(run_cli("info", "--dataset", "cifar"), "unknown dataset 'cifar'", "olivetti")
    assert_one_error_line(run_cli("unlearn", "--dataset", "cifar", "--forget-identity", "1"),
                          "cifar")


def test_identity_out_of_range(cached_model):
    result = run_cli("unlearn", "--forget-identity", "99")
    assert_one_error_line(result, "identity must be in [0, 40); got 99")


def test_forget_index_out_of_range(cached_model):
    result = run_cli("unlearn", "--forget-index", "3", "100000")
    assert_one_error_line(result, "training indices must be in [0, 320); got [100000]")


def test_fewer_than_three_perturbations():
    result = run_cli("unlearn", "--forget-identity", "1", "--perturbations", "2")
    assert_one_error_line(result, "num_perturbations (m) must be >= 3; got 2")


def test_newton_step_rule_with_the_fisher_solver():
    result = run_cli("unlearn", "--forget-identity", "1", "--step-rule", "newton", "--solver", "fisher")
    assert_one_error_line(result, "step_rule 'newton'", "solver 'auto', 'explicit' or 'cg'")


def test_forget_index_that_is_not_a_number():
    assert_one_error_line(run_cli("unlearn", "--forget-index", "abc"))


def test_save_over_the_original_checkpoint_is_refused(trained_small_cnn, tmp_path):
    from lcodec_models import Recipe
    from lcodec_core.zoo_cache import cache_path
    checkpoint, _ = trained_small_cnn
    original = tmp_path / "model.pt"
    checkpoint.save(original)
    before = original.read_bytes()
    assert_one_error_line(run_cli("unlearn", "--model", str(original), "--forget-identity", "3",
                                  "--save", str(original)), "never overwritten")
    assert original.read_bytes() == before
    cached = cache_path("olivetti", Recipe.from_dict(checkpoint.metadata["recipe"]), 0)
    cached_before = cached.read_bytes()
    assert_one_error_line(run_cli("unlearn", "--forget-identity", "3", "--save", str(cached)),
                          "never overwritten")
    assert cached.read_bytes() == cached_before
