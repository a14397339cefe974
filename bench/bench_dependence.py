"""Benchmark L-CODEC and L-FOCI against a dense float32 all-pairs implementation.

The baseline is written in the style of the paper authors' code: ``torch.cdist`` over
all pairs in float32, the diagonal masked, ``argmin``; for FOCI one such search per
candidate column per step. Both run in the same process, on the same data, so the
ratios are measured, not quoted. Our numbers are the public ``codec``/``foci``.

    python bench/bench_dependence.py                 # CPU: the sizes of issue 3
    python bench/bench_dependence.py --quick         # smaller repeat counts; FOCI baseline sampled
    python bench/bench_dependence.py --device cuda   # GPU: codec m = 1e4 and 1e5, foci m = 1e4, D = 5000
    python bench/bench_dependence.py --write-docs    # also replace our section of docs/BENCHMARKS.md
    python bench/bench_dependence.py --tiny          # seconds: every case at toy sizes (checks the script)

The cases: codec at m = 1e4 (target >= 20x the baseline) and m = 1e5 (< 1 s); foci at
m = 1000, D = 1000 (< 1 s, >= 10x); and foci at ResNet scale, m = 1000 probe rows and
D = 4800 candidate slices (ResNet-18 has 4,800 channels and units: target <= 2 s). The
three targets are printed together at the end of the run.

Peak memory: the largest numpy heap of one call of ours (tracemalloc), the analytic size
of the baseline's float32 distance matrices, the process's peak RSS, and on CUDA
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcodec_core.dependence import codec, foci  # noqa: E402
from lcodec_core.dependence.ranks import max_ranks  # noqa: E402

SECTION = "## L-CODEC and L-FOCI"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


# ---------------------------------------------------------------- the dense baseline
def dense_nearest(points: torch.Tensor) -> torch.Tensor:
    """All-pairs float32 distances, diagonal masked, argmin: (m, d) -> (m,)."""
    dist = torch.cdist(points, points)  # (m, m) float32
    dist.fill_diagonal_(float("inf"))
    return dist.argmin(dim=1)


def dense_codec(y: np.ndarray, z: np.ndarray, x: np.ndarray, device: str) -> float:
    """T(Y, Z | X) with two dense float32 searches (no jitter, lowest-index ties)."""
    rank = torch.as_tensor(max_ranks(y)[0], device=device)
    xs = torch.as_tensor(x, dtype=torch.float32, device=device)
    joint = torch.as_tensor(np.column_stack([x, z]), dtype=torch.float32, device=device)
    near, match = dense_nearest(xs), dense_nearest(joint)
    base = torch.minimum(rank, rank[near])
    return float((torch.minimum(rank, rank[match]) - base).sum() / (rank - base).sum())


def dense_foci_seconds(y, features, selected, device: str, sample: int | None) -> tuple[float, int]:
    """Time of scoring every candidate with its own dense search, along ``selected``.

    Returns (seconds, searches). With ``sample`` only that many candidates per step
    are searched and the time is scaled to all of them.
    """
    rank = torch.as_tensor(max_ranks(y)[0], device=device)
    columns = torch.as_tensor(features, dtype=torch.float32, device=device)
    columns = (columns - columns.mean(0)) / columns.std(0)
    n_features = columns.shape[1]
    total, searches = 0.0, 0
    for step in range(len(selected)):
        chosen = selected[:step]
        candidates = [j for j in range(n_features) if j not in chosen]
        timed = candidates if sample is None else candidates[:sample]
        _sync(device)
        start = time.perf_counter()
        for j in timed:
            found = dense_nearest(columns[:, chosen + [j]])
            torch.minimum(rank, rank[found]).sum().item()
        _sync(device)
        total += (time.perf_counter() - start) * len(candidates) / len(timed)
        searches += len(candidates)
    return total, searches


# ---------------------------------------------------------------- measuring
def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of ``fn()`` after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def fastest_threads(measure, device: str):
    """Run a baseline measurement with torch's default threads and with one; keep the faster.

    On a busy CPU torch's thread pool can slow small kernels many times over; the
    baseline gets whichever setting serves it better, so the ratios are not inflated.
    """
    if device == "cuda":
        return measure()
    default = torch.get_num_threads()
    results = [measure()]
    torch.set_num_threads(1)
    try:
        results.append(measure())
    finally:
        torch.set_num_threads(default)
    return min(results, key=lambda result: result[0])


def numpy_peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:,.0f} KiB"


def seconds(value: float) -> str:
    return f"{value * 1e3:,.0f} ms" if value < 10 else f"{value:,.1f} s"


# ---------------------------------------------------------------- cases
def codec_data(m: int, dx: int, dz: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, z = rng.standard_normal((m, dx)), rng.standard_normal((m, dz))
    y = np.sin(2 * z[:, 0]) + x[:, 0] * x[:, 1] + 0.3 * rng.standard_normal(m)
    return y, z, x


def foci_data(m: int, n_features: int, seed: int = 0):
    """Y depends on columns 0..4 (U(0, 1) features): five steps of real selection."""
    features = np.random.default_rng(seed).uniform(0.0, 1.0, (m, n_features))
    y = (
        features[:, 0] * features[:, 1]
        + np.sin(features[:, 0] * features[:, 2])
        + features[:, 3]
        + features[:, 4] ** 2
    )
    return y, features


SIZES = {  # (codec m, codec large m, foci (m, D), ResNet-scale foci (m, D)) by mode
    "cpu": (10_000, 100_000, (1000, 1000), (1000, 4800)),
    "cuda": (10_000, 100_000, (10_000, 5000), (1000, 4800)),
    "tiny": (2000, 5000, (300, 100), (300, 480)),
}


def run(args) -> list[dict]:
    device = args.device
    repeats = 1 if args.tiny else 3 if (args.quick or device == "cuda") else 5
    rows = []
    move = (lambda a: torch.as_tensor(a, device=device)) if device == "cuda" else (lambda a: a)
    codec_m, codec_large_m, foci_size, resnet_size = SIZES["tiny" if args.tiny else device]

    # codec at m = 1e4 against the dense baseline
    m = codec_m
    y, z, x = codec_data(m, 4, 1)
    ours_wall, ours_cpu = timed(lambda: codec(move(y), move(z), move(x), rng=0), repeats, device)
    dense_wall, dense_cpu = fastest_threads(lambda: timed(lambda: dense_codec(y, z, x, device), max(1, repeats // 2), device), device)
    progress(f"codec m={m} done")
    rows.append(
        dict(
            case=f"codec T(Y,Z\\|X), m={m:.0e}, dx=4, dz=1".replace("e+0", "e"),
            ours=seconds(ours_wall),
            ours_cpu=seconds(ours_cpu),
            dense=seconds(dense_wall),
            ratio=dense_wall / ours_wall,
            target=">= 20x faster" if device == "cpu" else "(CPU target)",
            met=dense_wall / ours_wall >= 20 if device == "cpu" else None,
            memory=f"ours {mib(numpy_peak_bytes(lambda: codec(y, z, x, rng=0)))}; dense {mib(2 * 4 * m * m)}",
        )
    )

    # codec at m = 1e5: the dense baseline would need (1e5)^2 float32 = 37 GiB per search
    m = codec_large_m
    y, z, x = codec_data(m, 4, 1)
    ours_wall, ours_cpu = timed(lambda: codec(move(y), move(z), move(x), rng=0), max(1, repeats // 2), device)
    progress(f"codec m={m} done")
    rows.append(
        dict(
            case=f"codec T(Y,Z\\|X), m={m:.0e}, dx=4, dz=1".replace("e+0", "e"),
            ours=seconds(ours_wall),
            ours_cpu=seconds(ours_cpu),
            dense=f"cannot run: {mib(4 * m * m)} per distance matrix",
            ratio=None,
            target="< 1 s" if device == "cpu" else "(CPU target)",
            met=ours_wall < 1.0 if device == "cpu" else None,
            memory=f"ours {mib(numpy_peak_bytes(lambda: codec(y, z, x, rng=0))) if device == 'cpu' else 'see CUDA peak'}",
        )
    )

    # foci, up to 5 steps; then at ResNet scale (4,800 candidate slices), baseline sampled
    for (m, n_features), limit, sample in (
        (foci_size, 1.0, 64 if (args.quick or args.tiny or device == "cuda") else None),
        (resnet_size, 2.0, 64),
    ):
        rows.append(foci_case(m, n_features, limit, sample, repeats, device, move, resnet_scale=limit == 2.0))
    return rows


def foci_case(m: int, n_features: int, limit: float, sample: int | None, repeats: int, device: str, move,
              *, resnet_scale: bool) -> dict:
    """One foci row: ours (5 steps) against one dense search per candidate per step."""
    y, features = foci_data(m, n_features)
    result = foci(move(y), move(features), max_features=5, rng=0)
    progress(f"foci m={m} D={n_features} first run done: {result}")
    ours_wall, ours_cpu = timed(lambda: foci(move(y), move(features), max_features=5, rng=0), repeats, device)
    progress("foci timed")
    dense_wall, searches = fastest_threads(lambda: dense_foci_seconds(y, features, result.selected, device, sample), device)
    memory = "see CUDA peak" if device == "cuda" else mib(numpy_peak_bytes(lambda: foci(y, features, max_features=5, rng=0)))
    target = f"<= {limit:g} s" if resnet_scale else f"< {limit:g} s and >= 10x faster"
    met = ours_wall <= limit if resnet_scale else (ours_wall < limit and dense_wall / ours_wall >= 10)
    return dict(
        case=f"foci{', ResNet scale' if resnet_scale else ''}, m={m}, D={n_features}, {len(result.selected)} steps"
        f" (selected {result.selected})",
        ours=seconds(ours_wall),
        ours_cpu=seconds(ours_cpu),
        ours_s=ours_wall,
        limit_s=limit,
        dense=seconds(dense_wall)
        + f" ({searches} dense searches" + (f", timed on {sample} per step, scaled)" if sample else ")"),
        ratio=dense_wall / ours_wall,
        target=target if device == "cpu" else "(CPU target)",
        met=met if device == "cpu" else None,
        memory=f"ours {memory}; dense {mib(4 * m * m)} per search",
    )


def verdicts(rows: list[dict]) -> list[str]:
    """The three targets of issue 14 in one line each: met or missed, and by how much."""
    lines = []
    codec_row = rows[0]
    gap = codec_row["ratio"] / 20
    lines.append(
        f"codec {codec_row['case'].split(', ', 1)[1]}: {codec_row['ratio']:.1f}x the dense baseline (target >= 20x): "
        + (f"met, {gap:.2f}x the target" if gap >= 1 else f"missed by {(1 - gap) * 100:.0f}% ({codec_row['ratio']:.1f}x of 20x)")
    )
    for row in rows[2:]:
        over = row["ours_s"] / row["limit_s"]
        lines.append(
            f"{row['case'].split(' (selected')[0]}: {seconds(row['ours_s'])} wall (target {row['target']}): "
            + (f"met, {over * 100:.0f}% of the limit" if over <= 1 else f"missed by {(over - 1) * 100:.0f}% ({seconds(row['ours_s'])} vs {row['limit_s']:g} s)")
        )
    return lines


def machine(device: str) -> str:
    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} CPU cores"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name(0)}"
    return text


INTRO = (
    "Ours: `lcodec_core.codec` / `lcodec_core.foci` (exact float64 neighbours, jittered ties). Baseline: a dense"
    " float32 all-pairs implementation in the style of the paper authors' code (`torch.cdist`, diagonal masked,"
    " `argmin`; for FOCI one such search per candidate per step), timed in the same run on the same data."
    " Written by `bench/bench_dependence.py --write-docs`; each subsection is one run. 'met' judges wall"
    " time: where the load average exceeds the cores (other sessions' work), wall time runs well above CPU"
    " time, so read both columns; the run pinned to 2 idle cores of the device machine is the"
    " uncontended reference."
)


def markdown(rows: list[dict], args, started: datetime.datetime, load: tuple[float, float, float]) -> str:
    command = "python bench/bench_dependence.py" + (" --quick" if args.quick else "") + (" --tiny" if args.tiny else "") + (
        " --device cuda" if args.device == "cuda" else ""
    )
    lines = [
        f"### {args.label or args.device.upper()}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine(args.device)}; load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        " (1/5/15 min; other work shared the cores)",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, numpy {np.__version__}",
        "- Baseline: dense float32 all-pairs `torch.cdist`, diagonal masked, `argmin` (the paper code's style),"
        " timed in the same run on the same data, with torch's default threads and with one thread, the faster"
        " kept. Times are medians of repeated calls after a warm-up; 'CPU' is process time (all threads).",
        "",
        "| case | ours (wall) | ours (CPU) | dense baseline | speed-up | target | met | peak memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:,.1f}x"
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(
            f"| {row['case']} | {row['ours']} | {row['ours_cpu']} | {row['dense']} | {ratio} | {row['target']} | {met} | {row['memory']} |"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = f"Peak RSS of the whole benchmark process: {mib(rss)}."
    if args.device == "cuda":
        extra += f" Peak CUDA memory allocated: {mib(torch.cuda.max_memory_allocated())}."
    end = os.getloadavg()
    lines += ["", extra, "", f"Targets (load average at the end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f}):", ""]
    lines += [f"- {line}" for line in verdicts(rows)] + [""]
    return "\n".join(lines)


def write_section(text: str, path: Path = DOCS) -> None:
    """Put ``text`` (a '### ' subsection) into our '## ' section of ``path``.

    Only our section changes: it is created at the end if missing, and a subsection
    with the same heading is replaced (up to the next '### ' or '## ' heading).
    """
    lines = (path.read_text() if path.exists() else "# Benchmarks\n").splitlines()
    if SECTION not in lines:
        lines += ["", SECTION, "", INTRO, ""]
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start:end]
    block = text.rstrip("\n").splitlines()
    if block[0] in section:
        first = section.index(block[0])
        last = next((i for i in range(first + 1, len(section)) if section[i].startswith(("### ", "## "))), len(section))
        section = section[:first] + block + [""] + section[last:]
    else:
        section = [*section, *([""] if section[-1] else []), *block, ""]
    lines = lines[:start] + section + lines[end:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; FOCI baseline timed on a sample")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, one repeat: checks that every case runs")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--write-docs", action="store_true", help=f"put the table into '{SECTION}' of docs/BENCHMARKS.md")
    parser.add_argument("--label", help="subsection heading (default: CPU or CUDA)")
    args = parser.parse_args(argv)
    if args.tiny and args.write_docs:
        parser.error("--tiny only checks that the cases run; its times do not belong in docs/BENCHMARKS.md")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    text = markdown(run(args), args, started, load)
    print(text)
    if args.write_docs:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
