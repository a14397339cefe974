"""Every engine method on the same identity-removal task, one audit table (issue 5, experiment 5).

For each identity in ``--identities`` remove all 8 training images of that person from the
default Olivetti small CNN with each of the engine's methods (``UnlearnConfig.method``):
lfoci, random (as many slices as L-FOCI), top1, full-newton (every slice; "all" runs the same
computation in this engine; here one Newton step, the paper's full-Hessian baseline, because
the engine's default 5 damped steps over all 35k weights take minutes on 2 cores), finetune,
negrad, and retrain (from scratch, the checkpoint's
recipe: the reference every other model is compared with). Each result is audited with
``lcodec_core.audit.comparison.audit_removal`` (accuracies, loss-attack MIA AUC, confidence-SVC
MIA-efficacy, KL / L1 to the retrained model's outputs, relative weight distance) and timed.
Methods whose result depends on the seed (lfoci, random, top1, finetune, negrad) run for every
seed; full-newton and retrain are deterministic and run once per identity.

    python bench/bench_baselines.py                    # identities 6 24, seeds 0 1
    python bench/bench_baselines.py --quick            # identity 6, seed 0
    python bench/bench_baselines.py --summary-only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_results, quick_suffix, RESULTS, JsonlWriter, fmt, load, read_jsonl, save_figure, setup  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.unlearning.unlearn import unlearn  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402
from lcodec_models import Recipe  # noqa: E402

NAME = "olivetti_baselines"
SEEDED = ("lfoci", "random", "top1", "finetune", "negrad")
DETERMINISTIC = ("full-newton",)
# settings that differ from UnlearnConfig()'s defaults: "full Newton, 1 step" is the classic
# single exact Newton step on every parameter (CG on Hessian-vector products)
OVERRIDES = {"full-newton": {"step_rule": "newton", "solver": "auto", "rhs": "retain_gradient",
                             "newton_steps": 1}}
ORDER = ("original", "lfoci", "random", "top1", "full-newton", "finetune", "negrad", "retrain")


def run(args, writer: JsonlWriter) -> None:
    from lcodec_core.audit.comparison import audit_removal

    checkpoint, bundle = load_or_train("olivetti", "small_cnn")
    recipe = Recipe.from_dict(checkpoint.metadata["recipe"])
    lam = recipe.weight_decay
    for identity in args.identities:
        request = make_request(bundle, identity=identity)
        tick = time.perf_counter()
        reference = unlearn(checkpoint.model, request.forget, request.retain, UnlearnConfig(method="retrain"),
                            weight_decay=lam, recipe=recipe)
        retrain_s = time.perf_counter() - tick
        runs = [("retrain", 0, reference, retrain_s)]
        for method in [m for m in args.methods if m != "retrain"]:
            for seed in (args.seeds if method in SEEDED else args.seeds[:1]):
                tick = time.perf_counter()
                result = unlearn(checkpoint.model, request.forget, request.retain,
                                 UnlearnConfig(method=method, seed=seed, **OVERRIDES.get(method, {})),
                                 weight_decay=lam, recipe=recipe)
                runs.append((method, seed, result, time.perf_counter() - tick))
        for method, seed, result, seconds in runs:
            audit = audit_removal(checkpoint.model, result.model, reference.model, bundle, request,
                                  weight_decay=lam, seed=seed)
            row = {"kind": "method", "identity": identity, "method": method, "seed": seed,
                   "seconds": seconds, "retrain_s": retrain_s, "speedup": retrain_s / seconds,
                   "parameters_updated": result.parameters_updated, "parameter_share": result.parameter_share,
                   "slices": [f"{s.module}[{s.index}]" for s in result.selected_slices][:12],
                   "audit": audit, "load": load()}
            writer.write(row)
            u = audit["unlearned"]
            print(f"identity {identity} {method:>11} seed {seed}: forget {u['forget_accuracy']:.3f} "
                  f"test {u['test_accuracy']:.3f} mia_auc {u['mia_auc']:.3f} eff {u['mia_efficacy']:.3f} "
                  f"{seconds:.1f} s (load {row['load']})", file=sys.stderr, flush=True)


def _entries(rows, method):
    """The audit entries of ``method`` (original: the 'original' entry of the retrain rows)."""
    if method == "original":
        return [r["audit"]["original"] for r in rows if r["method"] == "retrain"]
    return [r["audit"]["unlearned"] for r in rows if r["method"] == method]


def summarise(path: Path) -> str:
    header, rows = read_jsonl(path)
    rows = [r for r in rows if r["kind"] == "method"]
    identities = sorted({r["identity"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Command: `{header.get('command')}`; {header.get('date')}; {header.get('nproc')} cores "
             f"({header.get('cpu')}); load at start {header.get('load_average')}; identities {identities}; "
             f"seeds {seeds} (full-newton and retrain: once per identity).", "",
             "| method | runs | forget acc | held-out acc (person) | retain acc | test acc (others) | MIA AUC "
             "| MIA efficacy | KL to retrained (forget / test) | weight distance | seconds | speed-up vs retrain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    methods = [m for m in ORDER if m == "original" or any(r["method"] == m for r in rows)]
    for method in methods:
        entries = _entries(rows, method)
        mine = [r for r in rows if r["method"] == method]
        kl = (f"{fmt([e['kl_to_retrained']['forget'] for e in entries], 3)} / "
              f"{fmt([e['kl_to_retrained']['test'] for e in entries], 3)}") if method != "retrain" else "0 (reference)"
        wd = fmt([e["weight_distance"] for e in entries], 3) if method != "retrain" else "0"
        secs = fmt([r["seconds"] for r in mine], 2) if method != "original" else "-"
        speed = fmt([r["speedup"] for r in mine], 1) if method not in ("original", "retrain") else "-"
        lines.append(
            f"| {method} | {len(entries)} | {fmt([e['forget_accuracy'] for e in entries])} | "
            f"{fmt([e['forget_test_accuracy'] for e in entries])} | {fmt([e['retain_accuracy'] for e in entries])} | "
            f"{fmt([e['test_accuracy'] for e in entries])} | {fmt([e['mia_auc'] for e in entries])} | "
            f"{fmt([e['mia_efficacy'] for e in entries])} | {kl} | {wd} | {secs} | {speed} |")
    return "\n".join(lines)


def plot(path: Path) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from bench.common import COLORS, mean_sd

    _, rows = read_jsonl(path)
    rows = [r for r in rows if r["kind"] == "method"]
    methods = [m for m in ORDER if m == "original" or any(r["method"] == m for r in rows)]
    panels = (("forget_accuracy", "forget accuracy"), ("test_accuracy", "test accuracy (others)"),
              ("mia_efficacy", "MIA efficacy"))
    fig = make_subplots(rows=1, cols=len(panels) + 1,
                        subplot_titles=[t for _, t in panels] + ["seconds (log)"])
    for col, (key, _) in enumerate(panels, start=1):
        stats = [mean_sd([e[key] for e in _entries(rows, m)]) for m in methods]
        fig.add_trace(go.Bar(x=methods, y=[s[0] for s in stats], error_y=dict(array=[s[1] for s in stats]),
                             marker_color=[COLORS.get(m, "#333333") for m in methods], showlegend=False),
                      row=1, col=col)
    timed = [m for m in methods if m != "original"]
    stats = [mean_sd([r["seconds"] for r in rows if r["method"] == m]) for m in timed]
    fig.add_trace(go.Bar(x=timed, y=[s[0] for s in stats], error_y=dict(array=[s[1] for s in stats]),
                         marker_color=[COLORS.get(m, "#333333") for m in timed], showlegend=False),
                  row=1, col=len(panels) + 1)
    fig.update_yaxes(type="log", row=1, col=len(panels) + 1)
    fig.update_xaxes(tickangle=-45)
    fig.update_layout(title="Olivetti identity removal: every engine method vs retraining (mean ± sd)")
    return save_figure(fig, "olivetti_baselines" + quick_suffix(path), width=1100, height=480)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, nargs="+", default=[6, 24])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=[m for m in ORDER if m != "original"])
    parser.add_argument("--quick", action="store_true", help="identity 6, seed 0")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.identities, args.seeds = [6], [0]
    out = args.out or RESULTS / (f"{NAME}_quick.jsonl" if args.quick else f"{NAME}.jsonl")
    setup()
    if not args.summary_only:
        header = {"experiment": NAME, "identities": args.identities, "seeds": args.seeds,
                  "methods": args.methods, "config": UnlearnConfig().to_dict(), "overrides": OVERRIDES}
        with JsonlWriter(out, header) as writer:
            run(args, writer)
    print_results(out, summarise, plot, draw=not args.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
