"""The engine never imports a UI library: importing every module of lcodec_core and models
in a fresh interpreter leaves streamlit and plotly out of ``sys.modules``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import lcodec_core.paths

UI_LIBRARIES = ("streamlit", "plotly")

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import lcodec_core, lcodec_core.cli, models
imported = []
for package in (lcodec_core, models):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
        imported.append(module.name)
ui = sorted(name for name in sys.modules
            if name.split(".")[0] in {ui_libraries})
print(json.dumps({{"imported": imported, "ui": ui}}))
"""


def test_engine_imports_no_ui_library(tmp_path):
    code = IMPORT_EVERYTHING.format(ui_libraries=repr(set(UI_LIBRARIES)))
    env = {**os.environ, "LCODEC_HOME": str(tmp_path), "LCODEC_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=lcodec_core.paths.CHECKOUT_DIR,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The walk really found the engine's modules (not an empty package by mistake).
    for module in ("lcodec_core.data", "lcodec_core.cli", "lcodec_core.zoo_cache",
                   "models.zoo", "models.training", "models.checkpoint"):
        assert module in report["imported"]
    assert report["ui"] == []
