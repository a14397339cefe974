"""Peak memory of a block of work: resident set size on CPU, allocator peak on CUDA."""
from __future__ import annotations

import resource
from pathlib import Path

import torch


def _rss_peak_mb() -> float:
    """VmHWM (peak resident set) from /proc, or getrusage's ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.mb``.

    CPU: the process's peak resident memory during the block (the kernel's high-water mark is
    reset on entry through /proc/self/clear_refs where allowed; otherwise the process peak).
    CUDA: ``torch.cuda.max_memory_allocated`` during the block.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = _rss_peak_mb()
