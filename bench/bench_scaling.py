"""L-CODEC / L-FOCI against the dense all-pairs implementation: time as m grows (paper Fig. 3).

Same estimators and baseline as ``bench_dependence.py`` (ours: ``lcodec_core.dependence.codec`` / ``foci``,
exact float64 neighbours with jittered ties; dense: float32 ``torch.cdist``, diagonal masked,
``argmin``, one search per candidate per FOCI step), on the same synthetic data, one torch
thread, median of repeated calls after a warm-up, several data seeds:
- codec T(Y, Z | X), dx = 4, dz = 1, for m in ``--codec-m`` (the dense baseline only up to
  ``--dense-max-m``: it holds an m x m float32 matrix, 3.6 GiB at m = 3e4);
- foci on D = ``--foci-d`` candidate columns, 5 steps, for m in ``--foci-m`` (the dense FOCI
  time is measured on 16 candidates per step and scaled to all of them).

    python bench/bench_scaling.py              # seeds 0 1 2
    python bench/bench_scaling.py --quick      # smaller m, seed 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_dependence import codec_data, dense_codec, dense_foci_seconds, foci_data, timed  # noqa: E402
from bench.common import print_results, quick_suffix, RESULTS, JsonlWriter, fmt, load, mean_sd, read_jsonl, save_figure, setup  # noqa: E402
from lcodec_core.dependence import codec, foci  # noqa: E402

NAME = "dependence_scaling"


def run(args, writer: JsonlWriter) -> None:
    for seed in args.seeds:
        for m in args.codec_m:
            y, z, x = codec_data(m, 4, 1, seed=seed)
            repeats = 3 if m <= 10_000 else 1
            ours, ours_cpu = timed(lambda: codec(y, z, x, rng=seed), repeats, "cpu")
            dense = dense_cpu = None
            if m <= args.dense_max_m:
                dense, dense_cpu = timed(lambda: dense_codec(y, z, x, "cpu"), 1 if m > 5000 else 3, "cpu")
            row = {"kind": "codec", "seed": seed, "m": m, "ours_s": ours, "ours_cpu_s": ours_cpu,
                   "dense_s": dense, "dense_cpu_s": dense_cpu, "load": load()}
            writer.write(row)
            print(f"codec seed {seed} m {m}: ours {ours:.4f} s dense {dense} (load {row['load']})",
                  file=sys.stderr, flush=True)
        for m in args.foci_m:
            y, features = foci_data(m, args.foci_d, seed=seed)
            result = foci(y, features, max_features=5, rng=seed)
            ours, ours_cpu = timed(lambda: foci(y, features, max_features=5, rng=seed), 1, "cpu")
            dense, searches = dense_foci_seconds(y, features, result.selected, "cpu", 16)
            row = {"kind": "foci", "seed": seed, "m": m, "features": args.foci_d, "selected": result.selected,
                   "ours_s": ours, "ours_cpu_s": ours_cpu, "dense_s": dense, "dense_searches": searches,
                   "load": load()}
            writer.write(row)
            print(f"foci seed {seed} m {m}: ours {ours:.3f} s dense {dense:.3f} s (load {row['load']})",
                  file=sys.stderr, flush=True)


def summarise(path: Path) -> str:
    header, rows = read_jsonl(path)
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Command: `{header.get('command')}`; {header.get('date')}; {header.get('nproc')} cores "
             f"({header.get('cpu')}), 1 torch thread; load at start {header.get('load_average')}; "
             f"data seeds {seeds}.", "",
             "| estimator | m | ours (s) | dense baseline (s) | speed-up |", "|---|---|---|---|---|"]
    for kind in ("codec", "foci"):
        for m in sorted({r["m"] for r in rows if r["kind"] == kind}):
            here = [r for r in rows if r["kind"] == kind and r["m"] == m]
            dense = [r["dense_s"] for r in here if r["dense_s"] is not None]
            ratio = [r["dense_s"] / r["ours_s"] for r in here if r["dense_s"] is not None]
            what = "codec T(Y,Z\\|X), dx=4" if kind == "codec" else f"foci, D={here[0]['features']}, 5 steps"
            lines.append(f"| {what} | {m:,} | {fmt([r['ours_s'] for r in here], 4)} | "
                         f"{fmt(dense, 4) if dense else 'not run (memory)'} | "
                         f"{fmt(ratio, 1) + 'x' if ratio else 'n/a'} |")
    return "\n".join(lines)


def plot(path: Path) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _, rows = read_jsonl(path)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("codec T(Y, Z | X), dx = 4, dz = 1",
                                                        "foci, 5 steps"))
    for col, kind in ((1, "codec"), (2, "foci")):
        for key, name, color in (("ours_s", "L-CODEC (ours)", "#1f77b4"), ("dense_s", "dense all-pairs", "#d62728")):
            ms = sorted({r["m"] for r in rows if r["kind"] == kind and r[key] is not None})
            stats = [mean_sd([r[key] for r in rows if r["kind"] == kind and r["m"] == m]) for m in ms]
            fig.add_trace(go.Scatter(x=ms, y=[s[0] for s in stats], name=name, legendgroup=name,
                                     showlegend=col == 1, mode="lines+markers", line=dict(color=color),
                                     error_y=dict(type="data", array=[s[1] for s in stats], visible=True)),
                          row=1, col=col)
    fig.update_xaxes(title_text="m (samples)", type="log")
    fig.update_yaxes(title_text="seconds", type="log")
    fig.update_layout(title="Dependence estimation time vs m (one CPU thread, mean ± sd over seeds)")
    return save_figure(fig, "dependence_scaling" + quick_suffix(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--codec-m", type=int, nargs="+", default=[1000, 3000, 10_000, 20_000, 100_000])
    parser.add_argument("--dense-max-m", type=int, default=20_000)
    parser.add_argument("--foci-m", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--foci-d", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="m up to 1e4 (codec) / 1000 (foci), seed 0")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.codec_m, args.foci_m = [0], [1000, 3000, 10_000], [250, 500, 1000]
    out = args.out or RESULTS / (f"{NAME}_quick.jsonl" if args.quick else f"{NAME}.jsonl")
    setup()
    if not args.summary_only:
        header = {"experiment": NAME, "seeds": args.seeds, "codec_m": args.codec_m, "foci_m": args.foci_m,
                  "foci_d": args.foci_d, "dense_max_m": args.dense_max_m}
        with JsonlWriter(out, header) as writer:
            run(args, writer)
    print_results(out, summarise, plot, draw=not args.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
