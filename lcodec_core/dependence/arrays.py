"""The numpy / torch helper layer under L-CODEC, L-FOCI and the neighbour search.

Arrays stay numpy on the CPU (numpy's single-threaded kernels beat torch's threaded
ones for these memory-bound loops on a few busy cores) and torch on CUDA. Each helper
here takes either kind and answers in the same kind, on the same device, so the
algorithms above it are written once for both:

- moving data: ``host`` (to a numpy array), ``like`` / ``index_like`` (to wherever a
  reference array lives);
- building and combining: ``empty_index``, ``full_index``, ``arange``, ``concat``,
  ``where``, ``nonzero``, ``minimum``;
- reducing: ``min_rows`` ((min, first argmin) along axis 1), ``column_max``,
  ``sort_columns``, ``isfinite``, ``exact_sum`` (an integer sum as a Python int);
- sizing the work: ``BLOCK_ELEMENTS`` (elements per block) and ``cpu_workers``
  (threads worth using now).
"""

from __future__ import annotations

import os

import numpy as np
import torch

BLOCK_ELEMENTS = 1 << 23  # elements per (rows, m) or (rows, m, d) block: 64 MiB in float64


def cpu_workers() -> int:
    """Threads worth using now: this process's cores, or one when others keep them busy.

    On a shared machine whose load average already fills the cores, extra threads only
    wait for each other (measured: 1.5-4x slower); on an idle one they halve the time.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average
        busy = 0.0
    return cores if busy < cores - 0.5 else 1


def host(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def like(array, reference):
    """A host array (or a tensor) moved to wherever ``reference`` lives."""
    if isinstance(array, torch.Tensor):
        return array.to(reference.device) if isinstance(reference, torch.Tensor) else array.cpu().numpy()
    if isinstance(reference, torch.Tensor):
        array = np.ascontiguousarray(array)
        return torch.as_tensor(array if array.flags.writeable else array.copy(), device=reference.device)
    return array


def index_like(indices: np.ndarray, reference):
    return like(np.asarray(indices, dtype=np.int64), reference)


def empty_index(shape, reference):
    if isinstance(reference, torch.Tensor):
        return torch.empty(shape, dtype=torch.long, device=reference.device)
    return np.empty(shape, np.int64)


def full_index(shape, value: int, reference):
    if isinstance(reference, torch.Tensor):
        return torch.full(shape, value, dtype=torch.long, device=reference.device)
    return np.full(shape, value, np.int64)


def arange(n: int, reference):
    return torch.arange(n, device=reference.device) if isinstance(reference, torch.Tensor) else np.arange(n)


def concat(parts, axis: int = 0):
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def where(condition, a, b):
    if isinstance(condition, torch.Tensor):
        device = condition.device
        return torch.where(condition, torch.as_tensor(a, device=device), torch.as_tensor(b, device=device))
    return np.where(condition, a, b)


def nonzero(mask):
    return torch.nonzero(mask, as_tuple=True) if isinstance(mask, torch.Tensor) else np.nonzero(mask)


def minimum(a, b):
    return torch.minimum(a, b) if isinstance(a, torch.Tensor) else np.minimum(a, b)


def min_rows(array):
    """(min, first argmin) along axis 1."""
    if isinstance(array, torch.Tensor):
        at = torch.argmin(array, dim=1)
        return array.gather(1, at[:, None])[:, 0], at
    at = np.argmin(array, axis=1)
    return array[np.arange(array.shape[0]), at], at


def column_max(array):
    return array.max(0).values if isinstance(array, torch.Tensor) else array.max(0)


def sort_columns(array):
    return torch.sort(array, dim=0).values if isinstance(array, torch.Tensor) else np.sort(array, axis=0)


def isfinite(array):
    return torch.isfinite(array) if isinstance(array, torch.Tensor) else np.isfinite(array)


def exact_sum(values) -> int:
    """Sum of an integer array as a Python int, in chunks that cannot overflow int64."""
    values = host(values).astype(np.int64, copy=False).ravel()
    return sum(int(values[i : i + (1 << 16)].sum()) for i in range(0, values.size, 1 << 16))
