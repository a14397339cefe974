"""Olivetti: one person's training images removed one by one, swept over epsilon (paper Fig. 7 left).

For each epsilon in ``--epsilons`` (``none`` = no noise, no guarantee) and each seed, start from
the trained small CNN and remove the 8 training images of ``--identity`` one at a time (the
order drawn from the seed), each with the engine's default L-FOCI + block Newton removal and
N(0, sigma^2) on the selected block, sigma from (epsilon, delta = 1e-5) with the true n and k = 1
(lcodec_core/unlearning/noise.py). After every removal: "scrubbed" accuracy (the person's images removed
so far), the person's held-out accuracy, "residual" accuracy (retained training images) and
test accuracy on the other people, sigma and seconds. A removal that the engine refuses (for
example a constant loss after noise destroyed the model) is recorded with its error and the
model is kept as it was.

    python bench/bench_epsilon.py          # identity 6, seeds 0 1 2 for 1e-5 1e-3 0.1 1; no noise: seed 0
    python bench/bench_epsilon.py --quick  # seed 0, the four epsilons only
    python bench/bench_epsilon.py --summary-only
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_results, quick_suffix, COLORS, RESULTS, JsonlWriter, band_traces, fmt, load, mean_sd, read_jsonl, save_figure, setup  # noqa: E402,F401
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.sequence import remove_in_sequence  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402
from lcodec_models import accuracy  # noqa: E402

NAME = "olivetti_epsilon"
EPSILON_DASH = {"none": None, "1e-05": None, "0.001": "dash", "0.1": "dot", "1.0": "dashdot"}
EPSILON_COLORS = {"none": "#7f7f7f", "1e-05": "#d62728", "0.001": "#ff7f0e", "0.1": "#2ca02c", "1.0": "#1f77b4"}


def parse_epsilon(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def label(epsilon: float | None) -> str:
    return "none" if epsilon is None else repr(float(epsilon))


def run_sequence(checkpoint, bundle, identity: int, epsilon: float | None, seed: int, writer) -> None:
    recipe = checkpoint.recipe
    train, test = bundle.train, bundle.test
    person = train.indices_of(identity)
    order = [person[i] for i in torch.randperm(len(person), generator=torch.Generator().manual_seed(seed)).tolist()]
    others = test.targets != identity
    held_out = test.subset(torch.nonzero(~others).flatten().tolist())
    # Fig. 7 measures what the certified noise does, so a wrecked model is kept on purpose
    steps = remove_in_sequence(
        checkpoint.model, bundle, [{"indices": [index]} for index in order],
        lambda step: UnlearnConfig(epsilon=epsilon, seed=seed * 1009 + step, allow_harmful_noise=True),
        weight_decay=recipe.weight_decay, catch=(ValueError, FloatingPointError, RuntimeError))
    for done, index in zip(steps, order):
        step, model, request, result = done.step, done.model, done.request, done.result
        row = {"kind": "removal", "identity": identity, "epsilon": label(epsilon), "seed": seed,
               "step": step, "index": index}
        if result is not None:
            row.update(sigma=result.sigma, slices=[f"{s.module}[{s.index}]" for s in result.selected_slices],
                       parameters_updated=result.parameters_updated, error=None)
        else:
            row.update(sigma=None, slices=[], parameters_updated=0,
                       error=f"{type(done.error).__name__}: {done.error}")
        row["unlearn_s"] = done.seconds
        scrubbed = train.subset(order[:step])
        row.update(
            scrubbed_accuracy=accuracy(model, scrubbed.images, scrubbed.targets),
            identity_test_accuracy=accuracy(model, held_out.images, held_out.targets),
            residual_accuracy=accuracy(model, request.retain.images, request.retain.targets),
            test_accuracy=accuracy(model, test.images[others], test.targets[others]),
            load=load(),
        )
        writer.write(row)
        print(f"eps {label(epsilon):>6} seed {seed} step {step}: scrubbed {row['scrubbed_accuracy']:.3f} "
              f"residual {row['residual_accuracy']:.3f} test {row['test_accuracy']:.3f} "
              f"sigma {row['sigma'] if row['sigma'] is None else format(row['sigma'], '.3g')} "
              f"{row['unlearn_s']:.1f} s {row['slices']}{' ' + row['error'] if row['error'] else ''}",
              file=sys.stderr, flush=True)


def summarise(path: Path) -> str:
    header, rows = read_jsonl(path)
    rows = [r for r in rows if r["kind"] == "removal"]
    seeds = sorted({r["seed"] for r in rows})
    epsilons = list(dict.fromkeys(r["epsilon"] for r in rows))
    lines = [f"Command: `{header.get('command')}`; {header.get('date')}; {header.get('nproc')} cores "
             f"({header.get('cpu')}); load at start {header.get('load_average')}; identity "
             f"{header.get('identity')}; seeds {seeds}.", "",
             "| epsilon | sigma | scrubbed acc after 1 / 4 / 8 | held-out acc of the person after 8 "
             "| residual acc after 1 / 4 / 8 | test acc (others) after 8 | s / removal | refused |",
             "|---|---|---|---|---|---|---|---|"]
    for eps in epsilons:
        mine = [r for r in rows if r["epsilon"] == eps]
        at = lambda t, key: fmt([r[key] for r in mine if r["step"] == t], 3)  # noqa: E731
        sigmas = [r["sigma"] for r in mine if r["sigma"] is not None]
        sigma = "0" if eps == "none" else (f"{min(sigmas):.3g}" if sigmas else "n/a")
        last = max(r["step"] for r in mine)
        lines.append(f"| {eps} | {sigma} | {at(1, 'scrubbed_accuracy')} / {at(4, 'scrubbed_accuracy')} / "
                     f"{at(last, 'scrubbed_accuracy')} | {at(last, 'identity_test_accuracy')} | "
                     f"{at(1, 'residual_accuracy')} / {at(4, 'residual_accuracy')} / {at(last, 'residual_accuracy')} | "
                     f"{at(last, 'test_accuracy')} | {fmt([r['unlearn_s'] for r in mine], 2)} | "
                     f"{sum(1 for r in mine if r['error'])} of {len(mine)} |")
    errors = sorted({r["error"].split(";")[0] for r in rows if r["error"]})
    if errors:
        lines += ["", "Refusals: " + "; ".join(errors[:3])]
    return "\n".join(lines)


def plot(path: Path) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    header, rows = read_jsonl(path)
    rows = [r for r in rows if r["kind"] == "removal"]
    seeds = sorted({r["seed"] for r in rows})
    fig = make_subplots(rows=1, cols=2, subplot_titles=("scrubbed accuracy (removed images)",
                                                        "residual accuracy (retained images)"))
    for eps in dict.fromkeys(r["epsilon"] for r in rows):
        mine = {(r["seed"], r["step"]): r for r in rows if r["epsilon"] == eps}
        steps = sorted({t for _, t in mine})
        for key, col in (("scrubbed_accuracy", 1), ("residual_accuracy", 2)):
            stats = [mean_sd([mine[(s, t)][key] for s in seeds if (s, t) in mine]) for t in steps]
            name = f"epsilon {eps}"
            for trace in band_traces(go, steps, [m for m, _ in stats], [d for _, d in stats], name,
                                     EPSILON_COLORS.get(eps, "#000000"), dash=EPSILON_DASH.get(eps),
                                     showlegend=col == 1, legendgroup=name):
                fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="images of the person removed")
    fig.update_yaxes(title_text="accuracy", range=[-0.05, 1.05])
    fig.update_layout(title=f"Olivetti, identity {header.get('identity')}: removals one by one, "
                            f"noise for (epsilon, 1e-5) (mean ± sd, {len(seeds)} seeds; "
                            f"coinciding lines are drawn dashed)")
    return save_figure(fig, "olivetti_epsilon" + quick_suffix(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", nargs="+", default=["none", "1e-5", "1e-3", "0.1", "1"])
    parser.add_argument("--none-seeds", type=int, nargs="+", default=[0],
                        help="seeds of the no-noise reference (epsilon none); its conv-layer removals take minutes")
    parser.add_argument("--quick", action="store_true", help="seed 0, the four epsilons without the no-noise reference")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epsilons = [0], [e for e in args.epsilons if e.lower() != "none"]
    out = args.out or RESULTS / (f"{NAME}_quick.jsonl" if args.quick else f"{NAME}.jsonl")
    setup()
    if not args.summary_only:
        checkpoint, bundle = load_or_train("olivetti", "small_cnn")
        epsilons = [parse_epsilon(e) for e in args.epsilons]
        header = {"experiment": NAME, "identity": args.identity, "seeds": args.seeds,
                  "epsilons": [label(e) for e in epsilons], "none_seeds": args.none_seeds, "delta": UnlearnConfig().delta,
                  "n_train": len(bundle.train), "recipe": checkpoint.metadata["recipe"],
                  "config": UnlearnConfig().to_dict()}
        with JsonlWriter(out, header) as writer:
            for epsilon in epsilons:
                for seed in (args.none_seeds if epsilon is None else args.seeds):
                    run_sequence(checkpoint, bundle, args.identity, epsilon, seed, writer)
    print_results(out, summarise, plot, draw=not args.no_plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
