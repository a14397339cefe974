"""Input checks shared by L-CODEC and L-FOCI: validation, device choice, exact rescaling.

Every check raises ``ValueError`` naming the input and the reason. Predictor blocks
come back as float64 of shape (m, d): numpy arrays on the CPU, or torch tensors on the
device of a CUDA tensor input (``compute_device``). Rescaling is by powers of two
only, so it changes no neighbour and no tie.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .arrays import host, isfinite, like
from .neighbor_index import BACKENDS

_TORCH_ON_CPU = False  # tests set this to run the CUDA code path (torch tensors) on the CPU
SAFE_MAGNITUDE = 2.0**500  # beyond this (or below its inverse) rescale by a power of two


def as_generator(rng) -> np.random.Generator:
    """``rng`` as a numpy Generator: None or an int seed makes a fresh one."""
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is one of ``BACKENDS``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def response_values(y) -> np.ndarray:
    """y as a host array of its own real dtype, shape (m,), checked."""
    values = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"y must hold real numbers, got dtype {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"y must have shape (m,), got shape {values.shape}")
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    m = values.shape[0]
    if m < 3:
        raise ValueError(f"y has {m} rows; CODEC needs at least 3")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"y contains NaN or infinite values (first at row {bad})")
    if (values == values[0]).all():
        raise ValueError(f"y is constant (every value equals {values[0]!r}); dependence on it is undefined (0/0)")
    return values


def compute_device(*inputs) -> torch.device | None:
    """Where the work runs: the CUDA device of a CUDA tensor input, else None (numpy)."""
    for value in inputs:
        if isinstance(value, torch.Tensor) and value.is_cuda:
            return value.device
    return torch.device("cpu") if _TORCH_ON_CPU else None


def design_matrix(name: str, value, m: int, device, *, allow_empty: bool = False, matrix_only: bool = False):
    """A predictor block as float64, shape (m, d): numpy (device None) or torch on ``device``."""
    if matrix_only and len(np.shape(value)) != 2:
        raise ValueError(f"{name} must have shape (m, D), got shape {tuple(np.shape(value))}")
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
        array = value.detach().to(torch.float64)
        array = array.cpu().numpy() if device is None else array.to(device)
    else:
        raw = np.asarray(value)
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold real numbers, got dtype {raw.dtype}")
        array = raw.astype(np.float64)
        if device is not None:
            array = torch.from_numpy(array).to(device)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (m,) or (m, d), got shape {tuple(array.shape)}")
    if array.shape[0] != m:
        raise ValueError(f"{name} has {array.shape[0]} rows but y has {m}; they must match row for row")
    if array.shape[1] == 0 and not allow_empty:
        raise ValueError(f"{name} has no columns; it needs at least one")
    finite = host(isfinite(array).all(1))
    if not finite.all():
        raise ValueError(f"{name} contains NaN or infinite values (first in row {int(np.flatnonzero(~finite)[0])})")
    return array


def rescale_if_extreme(points):
    """Multiply by a power of two (exact) when magnitudes risk overflow or underflow."""
    biggest = float(host(abs(points).max()))
    if biggest == 0.0 or 1.0 / SAFE_MAGNITUDE <= biggest <= SAFE_MAGNITUDE:
        return points
    return times_power_of_two(points, -math.ceil(math.log2(biggest)))


def times_power_of_two(points, exponent):
    """points * 2**exponent, exactly (in two halves, so that no factor overflows)."""
    exponent = np.asarray(exponent, dtype=np.float64)
    half = np.floor(exponent / 2)
    for part in (half, exponent - half):
        points = points * like(np.exp2(part), points)
    return points
