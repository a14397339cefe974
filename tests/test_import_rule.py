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
import lcodec_core, lcodec_core.cli, lcodec_models
imported = []
for package in (lcodec_core, lcodec_models):
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
                   "lcodec_models.zoo", "lcodec_models.training", "lcodec_models.checkpoint"):
        assert module in report["imported"]
    assert report["ui"] == []


def test_the_zoo_is_installed_as_lcodec_models_and_no_models_package(tmp_path):
    """The zoo folder models/ is installed under the name lcodec_models (pyproject's
    package-dir), so a user's own ``models`` package is never shadowed: outside the checkout
    ``import models`` finds nothing of ours."""
    code = ("import importlib.util, json, lcodec_models; "
            "print(json.dumps([lcodec_models.__file__, importlib.util.find_spec('models') is None]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    path, no_models = json.loads(result.stdout.strip().splitlines()[-1])
    assert path.endswith(os.path.join("models", "__init__.py")) and no_models


def test_pyproject_lists_every_package_folder():
    """pyproject's explicit package list (needed for the lcodec_models mapping) names every
    folder of lcodec_core that holds an __init__.py."""
    import tomllib
    root = lcodec_core.paths.CHECKOUT_DIR
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(root).parts) for p in (root / "lcodec_core").rglob("__init__.py")}
    assert folders | {"lcodec_models"} == listed
