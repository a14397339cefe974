"""MNIST logistic regression: single images removed one after another (paper Fig. 5 left, Fig. 6).

Each method removes the same random sequence of training images, one at a time, each from its
own model (the output of its previous removal):
- lfoci: L-FOCI-selected rows + one Newton step on the retained objective restricted to them
  (the paper's Algorithm 1: ``newton_steps=1``; CG on exact Hessian-vector products, the
  engine's default 20 iterations / relative tolerance 0.1, Armijo backtracking);
- random: the same single block Newton step on as many randomly drawn rows as L-FOCI selects
  for that image (config method "random"; the paper's "random selection of the same size");
- full-newton: one exact Newton step on all 7,850 parameters (config method "full-newton",
  CG on exact Hessian-vector products, ``--full-cg-iterations`` iterations, tolerance 1e-10).
  At the first removal of every seed the same step is also solved tightly (500 iterations) and
  the relative distance between the two is recorded ("cg_check" rows), so the shortcut is
  measured, not assumed;
- retrain: L-BFGS from scratch on the retained data (the checkpoint's recipe) every
  ``--retrain-every`` removals (and after the last).
After every removal: retained ("residual") and test accuracy, the removed sample's loss-gradient
norm |grad_w l(w, z_u)| (Fig. 5's "sample gradient norm"), |grad F_r(w)| on the retained data
(Fig. 6's "residual gradient") and seconds. At retraining points also the retrained model's
numbers and the relative weight distance |w - w_retrained| / |w_retrained|.

    python bench/bench_mnist_newton.py                       # 100 removals, seeds 0 1 2, retrain every 20
    python bench/bench_mnist_newton.py --quick               # 20 removals, seed 0
    python bench/bench_mnist_newton.py --summary-only        # tables and plots from the JSONL
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (print_results, COLORS, RESULTS, JsonlWriter, band_traces, fmt, load, mean_sd, quick_suffix,  # noqa: E402
                          read_jsonl, save_figure, setup)
from lcodec_core.audit.comparison import gradient_norm, weight_distance  # noqa: E402
from lcodec_core.unlearning.baselines import retrain  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.sequence import remove_in_sequence  # noqa: E402
from lcodec_core.unlearning.unlearn import unlearn  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402
from lcodec_models import accuracy  # noqa: E402

NAME = "mnist_sequential"
METHODS = ("lfoci", "random", "full-newton")


# Fig. 5/6 measure the Newton step itself: one exact step on the retained objective (the
# engine's step_rule "newton" with an exact solver), not the default per-request step rule.
NEWTON = dict(step_rule="newton", solver="auto", rhs="retain_gradient", newton_steps=1)


def configs(full_cg_iterations: int) -> dict[str, UnlearnConfig]:
    return {
        "lfoci": UnlearnConfig(method="lfoci", **NEWTON),
        "random": UnlearnConfig(method="random", **NEWTON),
        "full-newton": UnlearnConfig(method="full-newton", **{**NEWTON, "solver": "cg"},
                                     cg_iterations=full_cg_iterations, cg_tolerance=1e-10),
    }


def run_seed(seed: int, args, checkpoint, bundle, writer: JsonlWriter) -> None:
    recipe = checkpoint.recipe
    lam = recipe.weight_decay
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(seed))
    to_remove = order[:args.removals].tolist()
    settings = configs(args.full_cg_iterations)
    models = {name: checkpoint.model for name in METHODS}
    # one sequence of removals per method, advanced in lockstep (step 1 of each, then step 2, ...)
    sequences = {name: remove_in_sequence(
        checkpoint.model, bundle, [{"indices": [index]} for index in to_remove],
        lambda step, name=name: settings[name].with_(seed=seed * 100_003 + step), weight_decay=lam)
        for name in METHODS}
    for step, index in enumerate(to_remove, start=1):
        sample = bundle.train.subset([index])
        for name in METHODS:
            done = next(sequences[name])
            request, result, seconds = done.request, done.result, done.seconds
            if name == "full-newton" and step <= args.check_steps:
                tight = unlearn(models[name], request.forget, request.retain,
                                settings[name].with_(seed=seed * 100_003 + step, cg_iterations=500),
                                weight_decay=lam)
                writer.write({"kind": "cg_check", "seed": seed, "step": step,
                              "cg_iterations": args.full_cg_iterations, "tight_iterations": 500,
                              "relative_distance_to_tight": weight_distance(result.model, tight.model),
                              "grad_norm_after": gradient_norm(result.model, request.retain, lam),
                              "tight_grad_norm_after": gradient_norm(tight.model, request.retain, lam)})
            models[name] = result.model
            writer.write({
                "kind": "removal", "seed": seed, "step": step, "index": index, "method": name,
                "retain_accuracy": accuracy(result.model, request.retain.images, request.retain.targets),
                "test_accuracy": accuracy(result.model, bundle.test.images, bundle.test.targets),
                "sample_grad_norm": gradient_norm(result.model, sample, 0.0),
                "retain_grad_norm": gradient_norm(result.model, request.retain, lam),
                "unlearn_s": seconds, "parameters_updated": result.parameters_updated,
                "slices": [s.index for s in result.selected_slices] if name != "full-newton" else "all",
            })
        if step % args.retrain_every and step != len(to_remove):
            continue
        tick = time.perf_counter()
        reference = retrain(request.retain, recipe)
        retrain_s = time.perf_counter() - tick
        removed = bundle.train.subset(to_remove[:step])
        row = {"kind": "checkpoint", "seed": seed, "step": step, "retrain_s": retrain_s, "load": load()}
        for name, model in [*models.items(), ("retrain", reference)]:
            row[name] = {
                "test_accuracy": accuracy(model, bundle.test.images, bundle.test.targets),
                "retain_accuracy": accuracy(model, request.retain.images, request.retain.targets),
                "removed_accuracy": accuracy(model, removed.images, removed.targets),
                "retain_grad_norm": gradient_norm(model, request.retain, lam),
                "relative_distance_to_retrained": weight_distance(model, reference),
            }
        writer.write(row)
        print(f"seed {seed} {step:4d} removals: " + "; ".join(
            f"{n} acc {row[n]['test_accuracy']:.4f} |gF_r| {row[n]['retain_grad_norm']:.1e} "
            f"dist {row[n]['relative_distance_to_retrained']:.1e}" for n in [*METHODS, "retrain"])
            + f" (load {load()})", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tables and plots
def complete_rows(path: Path) -> tuple[dict, list[dict]]:
    """(header, rows) of the seeds that reached the last removal (an interrupted seed is left out)."""
    header, rows = read_jsonl(path)
    last = header.get("removals") or max(r["step"] for r in rows if r["kind"] == "removal")
    done = {r["seed"] for r in rows if r["kind"] == "checkpoint" and r["step"] == last}
    return header, [r for r in rows if r["seed"] in done]


def summarise(path: Path) -> str:
    header, rows = complete_rows(path)
    removals = [r for r in rows if r["kind"] == "removal"]
    checkpoints = [r for r in rows if r["kind"] == "checkpoint"]
    checks = [r for r in rows if r["kind"] == "cg_check"]
    seeds = sorted({r["seed"] for r in removals})
    last = max(r["step"] for r in removals)
    lines = [f"Command: `{header.get('command')}`; {header.get('date')}; {header.get('nproc')} cores "
             f"({header.get('cpu')}); load at start {header.get('load_average')}; seeds {seeds}; "
             f"{last} sequential single-image removals.", "",
             "Fig. 5 (left): per removal, mean ± sd over seeds (sample gradient norm averaged over "
             "all removals of a seed first).", "",
             "| method | retained acc after last | test acc after last | sample grad norm (mean over removals) "
             "| parameters updated | s / removal |", "|---|---|---|---|---|---|"]
    for name in METHODS:
        mine = [r for r in removals if r["method"] == name]
        final = [r for r in mine if r["step"] == last]
        per_seed_grad = [mean_sd([r["sample_grad_norm"] for r in mine if r["seed"] == s])[0] for s in seeds]
        per_seed_time = [mean_sd([r["unlearn_s"] for r in mine if r["seed"] == s])[0] for s in seeds]
        lines.append(f"| {name} | {fmt([r['retain_accuracy'] for r in final], 4)} | "
                     f"{fmt([r['test_accuracy'] for r in final], 4)} | {fmt(per_seed_grad, 3)} | "
                     f"{fmt([r['parameters_updated'] for r in mine], 0)} | {fmt(per_seed_time, 2)} |")
    wins = []
    for s in seeds:
        by = {(r["method"], r["step"]): r["sample_grad_norm"] for r in removals if r["seed"] == s}
        steps = sorted({r["step"] for r in removals if r["seed"] == s})
        wins += [by[("lfoci", t)] > by[("random", t)] for t in steps]
    lines += ["", f"L-FOCI's sample gradient norm above random's in {sum(wins)} of {len(wins)} removals "
              f"({100 * sum(wins) / max(len(wins), 1):.0f}%)."]
    if checks:
        lines.append(f"Full-newton shortcut check ({checks[0]['cg_iterations']} vs 500 CG iterations, first "
                     f"removal of each seed): relative distance {fmt([c['relative_distance_to_tight'] for c in checks], 2, True)}; "
                     f"|grad F_r| after {fmt([c['grad_norm_after'] for c in checks], 2, True)} vs tight "
                     f"{fmt([c['tight_grad_norm_after'] for c in checks], 2, True)}.")
    lines += ["", "Fig. 6: at each retraining point, mean ± sd over seeds.", "",
              "| removals | method | test acc | \\|grad F_r\\| | rel. distance to retrained |", "|---|---|---|---|---|"]
    for step in sorted({c["step"] for c in checkpoints}):
        here = [c for c in checkpoints if c["step"] == step]
        for name in [*METHODS, "retrain"]:
            lines.append(f"| {step} | {name} | {fmt([c[name]['test_accuracy'] for c in here], 4)} | "
                         f"{fmt([c[name]['retain_grad_norm'] for c in here], 2, True)} | "
                         f"{fmt([c[name]['relative_distance_to_retrained'] for c in here], 2, True)} |")
    lines.append(f"\nOne retraining: {fmt([c['retrain_s'] for c in checkpoints], 2)} s.")
    return "\n".join(lines)


def plot(path: Path) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _, rows = complete_rows(path)
    removals = [r for r in rows if r["kind"] == "removal"]
    checkpoints = [r for r in rows if r["kind"] == "checkpoint"]
    seeds = sorted({r["seed"] for r in removals})
    steps = sorted({r["step"] for r in removals})
    written = []

    fig = make_subplots(rows=1, cols=2, subplot_titles=("retained (residual) and test accuracy",
                                                        "removed samples' gradient norm, running mean"))
    for name in METHODS:
        table = {(r["seed"], r["step"]): dict(r) for r in removals if r["method"] == name}
        for s in seeds:  # running mean of the per-sample norm (single samples vary over 3 decades)
            total = 0.0
            for t in steps:
                if (s, t) in table:
                    total += table[(s, t)]["sample_grad_norm"]
                    table[(s, t)]["sample_grad_norm"] = total / t
        for key, dash, col in (("retain_accuracy", None, 1), ("test_accuracy", "dot", 1), ("sample_grad_norm", None, 2)):
            stats = [mean_sd([table[(s, t)][key] for s in seeds if (s, t) in table]) for t in steps]
            label = name if key != "test_accuracy" else f"{name} (test)"
            for trace in band_traces(go, steps, [m for m, _ in stats], [d for _, d in stats], label,
                                     COLORS[name], dash=dash, showlegend=col == 1, legendgroup=label):
                fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="images removed")
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="|grad l(w, z)|", type="log", row=1, col=2)
    fig.update_layout(title=f"MNIST logistic regression: sequential removals (mean ± sd, {len(seeds)} seeds)")
    written += save_figure(fig, "mnist_fig5" + quick_suffix(path))

    fig = make_subplots(rows=1, cols=2, subplot_titles=("test (validation) accuracy", "|grad F_r(w)| on retained data"))
    points = sorted({c["step"] for c in checkpoints})
    for name in [*METHODS, "retrain"]:
        for key, col in (("test_accuracy", 1), ("retain_grad_norm", 2)):
            stats = [mean_sd([c[name][key] for c in checkpoints if c["step"] == t]) for t in points]
            for trace in band_traces(go, points, [m for m, _ in stats], [d for _, d in stats], name,
                                     COLORS[name], dash="dash" if name == "retrain" else None,
                                     showlegend=col == 1, legendgroup=name):
                fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="images removed")
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="gradient norm", type="log", row=1, col=2)
    fig.update_layout(title=f"MNIST: unlearning vs retraining from scratch (mean ± sd, {len(seeds)} seeds)")
    written += save_figure(fig, "mnist_fig6" + quick_suffix(path))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--removals", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--retrain-every", type=int, default=20)
    parser.add_argument("--full-cg-iterations", type=int, default=50)
    parser.add_argument("--check-steps", type=int, default=1, help="removals per seed checked against a 500-iteration solve")
    parser.add_argument("--quick", action="store_true", help="20 removals, seed 0, retrain every 10")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summary-only", action="store_true", help="tables and plots from --out, no run")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.removals, args.seeds, args.retrain_every = 20, [0], 10
    out = args.out or RESULTS / (f"{NAME}_quick.jsonl" if args.quick else f"{NAME}.jsonl")
    setup()
    if not args.summary_only:
        checkpoint, bundle = load_or_train("mnist", "logreg")
        header = {"experiment": "mnist_sequential", "removals": args.removals, "seeds": args.seeds,
                  "retrain_every": args.retrain_every, "full_cg_iterations": args.full_cg_iterations,
                  "n_train": len(bundle.train), "recipe": checkpoint.metadata["recipe"],
                  "configs": {k: v.to_dict() for k, v in configs(args.full_cg_iterations).items()}}
        with JsonlWriter(out, header) as writer:
            for seed in args.seeds:
                run_seed(seed, args, checkpoint, bundle, writer)
    print_results(out, summarise, plot, draw=not args.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
