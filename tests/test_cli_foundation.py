"""The command line as a user runs it: ``python -m lcodec_core info`` in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import lcodec_core.paths

CHECKOUT = lcodec_core.paths.CHECKOUT_DIR


def run_cli(*args: str, home) -> subprocess.CompletedProcess:
    """Run ``python -m lcodec_core ARGS`` from the checkout with LCODEC_HOME=home, offline."""
    env = {**os.environ, "LCODEC_HOME": str(home), "LCODEC_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lcodec_core", *args], cwd=CHECKOUT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_info_prints_the_dataset_as_json(tmp_path):
    result = run_cli("info", "--dataset", "olivetti", home=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == {"dataset": "olivetti", "classes": 40, "input_shape": [1, 64, 64],
                       "train": 320, "test": 80}
    assert "Traceback" not in result.stderr


def test_unknown_dataset_is_a_one_line_error(tmp_path):
    result = run_cli("info", "--dataset", "cifar", home=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lcodec: error: unknown dataset 'cifar'")
    assert "olivetti" in lines[0] and "mnist" in lines[0] and "folder:PATH" in lines[0]
