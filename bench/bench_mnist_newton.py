"""MNIST logistic regression: 100 single images removed one after another (paper Fig. 5 / 6).

Methods, each applied sequentially to its own model:
- full-newton: the exact Newton step on all parameters (CG to a tight tolerance), the check
  that the Newton machinery is right: it must land near the retrained model;
- lfoci: L-FOCI-selected rows + damped block Newton (the engine's default);
- retrain: L-BFGS from scratch on the retained data (same recipe) every ``--retrain-every``.
Reported per checkpoint: test accuracy, retained gradient norm |grad F_r(w)|, the forgotten
samples' gradient norm, and the relative weight distance |w - w_retrained| / |w_retrained|.

    python bench/bench_mnist_newton.py                 # 100 removals, retrain every 10
    python bench/bench_mnist_newton.py --removals 20 --retrain-every 10   # quick
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcodec_core.baselines import retrain  # noqa: E402
from lcodec_core.config import UnlearnConfig  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.unlearn import unlearn  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402
from models import Recipe, accuracy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "full-newton": UnlearnConfig(method="full-newton", solver="cg", newton_steps=1,
                                 cg_iterations=500, cg_tolerance=1e-10),
    "lfoci": UnlearnConfig(method="lfoci"),
}


def gradient_norm(model, images, targets, lam) -> float:
    """|grad of mean CE + (lam/2)|w|^2| over the given data."""
    params = list(model.parameters())
    loss = F.cross_entropy(model(images), targets) + 0.5 * lam * sum(p.pow(2).sum() for p in params)
    grads = torch.autograd.grad(loss, params)
    return float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--removals", type=int, default=100)
    parser.add_argument("--retrain-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "mnist_sequential.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    checkpoint, bundle = load_or_train("mnist", "logreg")
    recipe = Recipe.from_dict(checkpoint.metadata["recipe"])
    lam = recipe.weight_decay
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(args.seed))
    to_remove = order[:args.removals].tolist()
    models = {name: checkpoint.model for name in CONFIGS}
    seconds = {name: 0.0 for name in CONFIGS}
    retrain_seconds = 0.0
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with args.out.open("w") as handle:
        for step, index in enumerate(to_remove, start=1):
            request = make_request(bundle, indices=[index], already_removed=to_remove[:step - 1])
            for name, config in CONFIGS.items():
                tick = time.perf_counter()
                result = unlearn(models[name], request.forget, request.retain, config, weight_decay=lam)
                seconds[name] += time.perf_counter() - tick
                models[name] = result.model
            if step % args.retrain_every and step != len(to_remove):
                continue
            tick = time.perf_counter()
            reference = retrain(request.retain, recipe)
            retrain_seconds = time.perf_counter() - tick
            removed = bundle.train.subset(to_remove[:step])
            row = {"removals": step, "retrain_s": retrain_seconds}
            for name, model in [*models.items(), ("retrain", reference)]:
                row[name] = {
                    "test_accuracy": accuracy(model, bundle.test.images, bundle.test.targets),
                    "removed_accuracy": accuracy(model, removed.images, removed.targets),
                    "retain_grad_norm": gradient_norm(model, request.retain.images, request.retain.targets, lam),
                    "removed_grad_norm": gradient_norm(model, removed.images, removed.targets, lam),
                    "relative_distance_to_retrained": float((flat(model) - flat(reference)).norm()
                                                            / flat(reference).norm()),
                    "cumulative_unlearn_s": seconds.get(name),
                }
            rows.append(row)
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            print(f"{step:4d} removals: " + "; ".join(
                f"{n} acc {row[n]['test_accuracy']:.4f} |gF_r| {row[n]['retain_grad_norm']:.2e} "
                f"dist {row[n]['relative_distance_to_retrained']:.2e}" for n in [*CONFIGS, "retrain"]),
                file=sys.stderr, flush=True)
    last = rows[-1]
    print(f"MNIST logistic regression (n = {len(bundle.train)}, lam = {lam}), {args.removals} sequential "
          f"single-image removals, seed {args.seed}; {started}; {os.cpu_count()} CPU cores\n")
    print("| removals | method | test acc | removed acc | grad norm F_r | removed grad norm | rel. distance to retrained |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for name in [*CONFIGS, "retrain"]:
            r = row[name]
            print(f"| {row['removals']} | {name} | {r['test_accuracy']:.4f} | {r['removed_accuracy']:.3f} | "
                  f"{r['retain_grad_norm']:.2e} | {r['removed_grad_norm']:.2e} | "
                  f"{r['relative_distance_to_retrained']:.2e} |")
    print(f"\nSeconds per removal: " + ", ".join(f"{n} {seconds[n] / args.removals:.3f}" for n in CONFIGS)
          + f"; one retrain {last['retrain_s']:.2f}")
    worst = max(r["full-newton"]["relative_distance_to_retrained"] for r in rows)
    print(f"Full-model Newton: largest relative distance to the retrained model {worst:.2e} "
          f"(target < 1e-2: {'met' if worst < 1e-2 else 'missed'}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
