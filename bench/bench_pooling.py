"""Pooled against per-image probing for identity removal (issue 11, review finding).

Pooling every forget image's perturbations into one L-FOCI run may favour slices that tell the
images apart rather than what they share; the alternative runs L-FOCI per image and takes the
union. Both are run with the engine default otherwise, on the same identities and seed:

    python bench/bench_pooling.py                      # identities 0-9
    python bench/bench_pooling.py --identities 0 1 2

Prints a Markdown table (mean over identities) and one line per run on stderr.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcodec_core.unlearning.block import warm_up  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.removal import remove  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402

POOLINGS = ("pooled", "per_image")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    checkpoint, bundle = load_or_train("olivetti", "small_cnn")
    warm_up()
    rows = {p: [] for p in POOLINGS}
    load_start = os.getloadavg()[0]
    for identity in args.identities:
        request = make_request(bundle, identity=identity)
        for pooling in POOLINGS:
            report = remove(checkpoint, bundle, request,
                            UnlearnConfig(seed=args.seed, probe_pooling=pooling)).to_json()
            step = report["diagnostics"].get("step") or {}
            row = {"forget": report["unlearned"]["forget_accuracy"],
                   "held": report["unlearned"]["forget_test_accuracy"],
                   "test": report["unlearned"]["test_accuracy"],
                   "slices": len(report["selected_slices"]), "p": report["parameters_updated"],
                   "own_unit": any(s["module"] == "fc" and s["index"] == identity
                                   for s in report["selected_slices"]),
                   "target_met": bool(step.get("target_met")),
                   "seconds": report["timings"]["unlearn_s"],
                   "select_s": report["timings"]["select_s"]}
            rows[pooling].append(row)
            print(f"identity {identity:2d} {pooling:>9}: {row}", file=sys.stderr, flush=True)
    print(f"Pooled vs per-image probing, {len(args.identities)} identities, seed {args.seed}; "
          f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print("| pooling | forget acc | held-out acc (forgotten) | held-out others | slices | p | "
          "own fc unit picked | target met | select s | unlearn s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pooling in POOLINGS:
        r = rows[pooling]
        mean = lambda key: statistics.fmean(float(x[key]) for x in r)  # noqa: E731
        print(f"| {pooling} | {mean('forget'):.3f} | {mean('held'):.3f} | {mean('test'):.3f} | "
              f"{mean('slices'):.1f} | {mean('p'):.0f} | {sum(x['own_unit'] for x in r)}/{len(r)} | "
              f"{sum(x['target_met'] for x in r)}/{len(r)} | {mean('select_s'):.2f} | "
              f"{mean('seconds'):.2f} (max {max(x['seconds'] for x in r):.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
