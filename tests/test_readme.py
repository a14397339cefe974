"""The README's Python example runs as written, and says what it claims (issue 12: the
README's example imports from one place)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_example_imports_only_from_lcodec_core():
    imports = [line for line in python_example().splitlines() if line.startswith(("from", "import"))]
    assert imports and all(line.startswith("from lcodec_core import ") for line in imports), imports


def test_python_example_runs_and_forgets(trained_small_cnn):
    namespace: dict = {}
    exec(compile(python_example(), str(README), "exec"), namespace)
    result, checkpoint = namespace["result"], namespace["checkpoint"]
    assert result.model is not checkpoint.model
    assert result.diagnostics["step"]["null_control"]["ratio"] < 0.01
    after = namespace["evaluate"](result.model, namespace["bundle"], namespace["request"])
    assert after["forget_accuracy"] == 0.0
    assert after["retain_accuracy"] >= 0.98
