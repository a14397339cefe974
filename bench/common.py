"""Helpers shared by the benchmarks: threads and seeds, machine description, JSONL, statistics, plots.

Every experiment writes one JSON object per line to ``docs/results/<name>.jsonl`` (the first
line is a ``{"kind": "run", ...}`` header with the command, machine, load and date) and its
figures to ``docs/img/<name>.{html,png}``. PNG export needs ``kaleido`` and a Chromium; when it
fails the HTML is still written and a warning is printed.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import shlex
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
IMAGES = ROOT / "docs" / "img"


def setup(seed: int = 0, threads: int = 1) -> None:
    """One torch thread (the development machine's 2 cores are shared) and seeded generators."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def load() -> str:
    """The 1/5/15-minute load averages, as `uptime` prints them."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def machine() -> dict:
    """What a result needs to be read against: cores, CPU, load, date, library versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": cores, "cpu": cpu_model(), "load_average": load(),
        "torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def command_line() -> str:
    """The command that is running, as one would type it from the repository root."""
    argv = list(sys.argv)
    try:
        script = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        script = argv[0]
    if script.endswith("__main__.py"):
        script = "-m " + str(Path(script).parent).replace("/", ".")
    return "python " + " ".join([script, *map(shlex.quote, argv[1:])])


class JsonlWriter:
    """Append-as-you-go JSONL: a header line first, then one line per measurement (flushed)."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("w")
        self.write({"kind": "run", "command": command_line(), **machine(), **header})

    def write(self, row: dict) -> None:
        self.handle.write(json.dumps(row, default=_jsonable) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def read_jsonl(path: Path) -> tuple[dict, list[dict]]:
    """(header, rows) of a file written by :class:`JsonlWriter`."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    header = lines[0] if lines and lines[0].get("kind") == "run" else {}
    return header, lines[1:] if header else lines


def mean_sd(values) -> tuple[float, float]:
    """Mean and population standard deviation, ignoring None and NaN (nan, nan when empty)."""
    values = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def fmt(values, digits: int = 3, sci: bool = False) -> str:
    """'mean ± sd' of ``values`` for a Markdown table."""
    mean, sd = mean_sd(values)
    if not np.isfinite(mean):
        return "n/a"
    form = f"{{:.{digits}e}}" if sci else f"{{:.{digits}f}}"
    return f"{form.format(mean)} ± {form.format(sd)}"


def quick_suffix(path: Path) -> str:
    """'_quick' for the results of a --quick run (their figures must not replace the full run's)."""
    return "_quick" if Path(path).stem.endswith("_quick") else ""


def save_figure(fig, name: str, width: int = 900, height: int = 500) -> list[Path]:
    """Write ``docs/img/<name>.html`` and, when kaleido can, ``docs/img/<name>.png``."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    fig.update_layout(width=width, height=height, template="plotly_white",
                      margin=dict(l=60, r=20, t=60, b=50))
    html = IMAGES / f"{name}.html"
    fig.write_html(html, include_plotlyjs="cdn")
    written = [html]
    png = IMAGES / f"{name}.png"
    try:
        fig.write_image(png, width=width, height=height)
        written.append(png)
    except Exception as error:  # kaleido missing, or no browser for it
        warnings.warn(f"PNG export of {name} failed ({type(error).__name__}: {error}); wrote {html} only")
    return written


def band_traces(go, x, mean, sd, name: str, color: str, dash: str | None = None, showlegend=True, legendgroup=None, yaxis=None):
    """A mean line with a shaded ±sd band (two plotly traces plus the line)."""
    x = list(x)
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    rgba = _rgba(color, 0.18)
    common = dict(legendgroup=legendgroup or name, hoverinfo="skip", showlegend=False)
    if yaxis:
        common["yaxis"] = yaxis
    upper = go.Scatter(x=x, y=mean + sd, mode="lines", line=dict(width=0), **common)
    lower = go.Scatter(x=x, y=mean - sd, mode="lines", line=dict(width=0), fill="tonexty",
                       fillcolor=rgba, **common)
    line_kw = dict(x=x, y=mean, mode="lines+markers", name=name, legendgroup=legendgroup or name,
                   line=dict(color=color, dash=dash), marker=dict(size=4), showlegend=showlegend)
    if yaxis:
        line_kw["yaxis"] = yaxis
    return [upper, lower, go.Scatter(**line_kw)]


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


COLORS = {"lfoci": "#1f77b4", "random": "#ff7f0e", "full-newton": "#2ca02c", "retrain": "#7f7f7f",
          "top1": "#9467bd", "all": "#8c564b", "finetune": "#e377c2", "negrad": "#d62728",
          "original": "#17becf"}


def print_results(out: Path, summarise, plot, *, draw: bool = True) -> None:
    """Print an experiment's tables from its JSONL ``out`` and, with ``draw``, write its figures."""
    print(summarise(out))
    if draw:
        print("figures: " + ", ".join(str(p) for p in plot(out)))
