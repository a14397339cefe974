"""Where lcodec keeps its caches, checkpoints and ledger, and where it looks for data.

Everything lcodec writes lives under ``LCODEC_HOME`` (default ``~/.cache/lcodec``).
Data sets are looked for, in order, in an explicit ``root``, ``$LCODEC_DATA_DIR``,
``$LCODEC_HOME`` (and ``$LCODEC_HOME/data``), then ``../shared/data`` beside the checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def lcodec_home() -> Path:
    """The directory for caches, checkpoints and the ledger (``$LCODEC_HOME`` or ``~/.cache/lcodec``)."""
    home = os.environ.get("LCODEC_HOME")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "lcodec"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Cached zoo checkpoints: ``$LCODEC_HOME/models``."""
    path = lcodec_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_search_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for data files, in priority order (duplicates removed)."""
    candidates: list[Path] = []
    if root is not None:
        candidates.append(Path(root).expanduser())
    if os.environ.get("LCODEC_DATA_DIR"):
        candidates.append(Path(os.environ["LCODEC_DATA_DIR"]).expanduser())
    home = Path(os.environ["LCODEC_HOME"]).expanduser() if os.environ.get("LCODEC_HOME") else (
        Path.home() / ".cache" / "lcodec")
    candidates += [home, home / "data", CHECKOUT_DIR.parent / "shared" / "data"]
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def download_dir() -> Path:
    """Where online downloads are stored: ``$LCODEC_HOME/data``."""
    path = lcodec_home() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path
