"""Shared test set-up: an isolated LCODEC_HOME, offline mode, two CPU threads, cached data/models.

Session fixtures other test files rely on (keep the names stable):
- ``olivetti``: ``load_dataset('olivetti')`` (seed 0), loaded once.
- ``mnist``: ``load_dataset('mnist')`` (seed 0), loaded once.
- ``trained_small_cnn``: ``(checkpoint, bundle)`` from ``load_or_train('olivetti')``; trained
  once per session into the temporary LCODEC_HOME (about 15 s on two cores).
Treat all three as read-only: they are shared by every test in the session.
"""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(2)

LCODEC_ENV_VARS = ("LCODEC_HOME", "LCODEC_OFFLINE")


@pytest.fixture(scope="session", autouse=True)
def lcodec_env(tmp_path_factory):
    """Point LCODEC_HOME at a fresh temporary directory and forbid downloads, for the session.

    Set in ``os.environ`` directly (not monkeypatch, which is function-scoped) because lcodec
    reads these variables at call time. Previous values are restored afterwards.
    """
    previous = {name: os.environ.get(name) for name in LCODEC_ENV_VARS}
    home = tmp_path_factory.mktemp("lcodec_home")
    os.environ["LCODEC_HOME"] = str(home)
    os.environ["LCODEC_OFFLINE"] = "1"
    yield home
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def olivetti(lcodec_env):
    """Olivetti faces (from ../shared/data), split with seed 0: 320 train / 80 test."""
    from lcodec_core import load_dataset
    return load_dataset("olivetti")


@pytest.fixture(scope="session")
def mnist(lcodec_env):
    """The MNIST test set (from ../shared/data), split with seed 0: 8000 train / 2000 test."""
    from lcodec_core import load_dataset
    return load_dataset("mnist")


@pytest.fixture(scope="session")
def trained_small_cnn(lcodec_env, olivetti):
    """The default demo model, ``(checkpoint, bundle)``, trained and cached once per session."""
    from lcodec_core.zoo_cache import load_or_train
    return load_or_train("olivetti", bundle=olivetti)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-tensor tests: faster than two on busy cores
    (OpenMP spinning), restored afterwards. Use with ``pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
