"""Identity removal on Olivetti with the default small CNN: every identity, against retraining.

For each identity K: forget all 8 training images of K with the engine's default settings
(L-FOCI + damped block Newton), evaluate, and retrain from scratch on the retained data with
the checkpoint's recipe (same run, same machine) for the reference numbers and the speed-up.

    python bench/bench_unlearn.py                       # all 40 identities, seed 0
    python bench/bench_unlearn.py --identities 0 1 2 --seeds 0 1 2 3 4
    python bench/bench_unlearn.py --quick               # 5 identities

Prints a Markdown table (mean, spread, worst identity) and writes the per-run JSON lines to
``--out`` (default docs/results/unlearn_identities.jsonl).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcodec_core.config import UnlearnConfig  # noqa: E402
from lcodec_core.removal import run_removal  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(identities, seeds, method, out: Path) -> list[dict]:
    checkpoint, bundle = load_or_train("olivetti", "small_cnn")
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for identity in identities:
            request = make_request(bundle, identity=identity)
            retrained = None
            for seed in seeds:
                outcome = run_removal(checkpoint, bundle, request, UnlearnConfig(method=method, seed=seed),
                                      compare_retrain=retrained is None)
                report = outcome.report
                if retrained is None:
                    retrained = report["retrained"]
                    retrain_s = report["timings"]["retrain_s"]
                row = {
                    "identity": identity, "seed": seed, "method": method,
                    "original": report["original"], "unlearned": report["unlearned"],
                    "retrained": retrained, "unlearn_s": report["timings"]["unlearn_s"],
                    "timings": report["timings"], "retrain_s": retrain_s,
                    "slices": [f"{s['module']}[{s['index']}]" for s in report["selected_slices"]],
                    "parameters_updated": report["parameters_updated"],
                    "peak_memory_mb": report["peak_memory_mb"],
                    "newton_steps": report["diagnostics"].get("newton", {}).get("steps"),
                }
                rows.append(row)
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                u = row["unlearned"]
                print(f"identity {identity:2d} seed {seed}: forget {u['forget_accuracy']:.3f} "
                      f"held-out {u['forget_test_accuracy']:.3f} retain {u['retain_accuracy']:.3f} "
                      f"test {u['test_accuracy']:.3f} (retrained {retrained['test_accuracy']:.3f}) "
                      f"unlearn {row['unlearn_s']:.2f} s retrain {retrain_s:.2f} s "
                      f"slices {row['slices']}", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> str:
    def stat(values):
        mean = statistics.fmean(values)
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{mean:.3f} ± {spread:.3f} (min {min(values):.3f}, max {max(values):.3f})"

    forget = [r["unlearned"]["forget_accuracy"] for r in rows]
    held = [r["unlearned"]["forget_test_accuracy"] for r in rows]
    retain_ratio = [r["unlearned"]["retain_accuracy"] / r["original"]["retain_accuracy"] for r in rows]
    test_gap = [r["unlearned"]["test_accuracy"] - r["retrained"]["test_accuracy"] for r in rows]
    unlearn_s = [r["unlearn_s"] for r in rows]
    speedup = [r["retrain_s"] / r["unlearn_s"] for r in rows]
    params = [r["parameters_updated"] for r in rows]
    worst_forget = max(rows, key=lambda r: (r["unlearned"]["forget_accuracy"], r["unlearned"]["forget_test_accuracy"]))
    worst_test = min(rows, key=lambda r: r["unlearned"]["test_accuracy"] - r["retrained"]["test_accuracy"])
    ok = lambda flag: "met" if flag else "**missed**"  # noqa: E731
    lines = [
        "| quantity | mean ± sd (min, max) | target | verdict |",
        "|---|---|---|---|",
        f"| forget accuracy | {stat(forget)} | <= 0.05 every identity | {ok(max(forget) <= 0.05)} |",
        f"| held-out accuracy, forgotten identity | {stat(held)} | <= 0.10 every identity | {ok(max(held) <= 0.10)} |",
        f"| retained accuracy / original | {stat(retain_ratio)} | >= 0.99 | {ok(min(retain_ratio) >= 0.99)} |",
        f"| test accuracy - retrained's | {stat(test_gap)} | within ±0.02 | {ok(max(abs(g) for g in test_gap) <= 0.02)} |",
        f"| unlearn_s | {stat(unlearn_s)} | <= 2 s | {ok(max(unlearn_s) <= 2)} |",
        f"| speed-up over retraining | {stat(speedup)} | >= 10x | {ok(min(speedup) >= 10)} |",
        f"| parameters updated | {stat(params)} | | |",
        "",
        f"Runs: {len(rows)} ({len({r['identity'] for r in rows})} identities x "
        f"{len({r['seed'] for r in rows})} seeds). Worst forgetting: identity "
        f"{worst_forget['identity']} (seed {worst_forget['seed']}): forget "
        f"{worst_forget['unlearned']['forget_accuracy']:.3f}, held-out "
        f"{worst_forget['unlearned']['forget_test_accuracy']:.3f}, slices {worst_forget['slices']}. "
        f"Largest test-accuracy gap: identity {worst_test['identity']} "
        f"({worst_test['unlearned']['test_accuracy'] - worst_test['retrained']['test_accuracy']:+.3f}).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, nargs="+", default=list(range(40)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--method", default="lfoci")
    parser.add_argument("--quick", action="store_true", help="identities 0-4 only")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "unlearn_identities.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    identities = args.identities[:5] if args.quick else args.identities
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = run(identities, args.seeds, args.method, args.out)
    print(f"Olivetti identity removal, small CNN, method {args.method}; {started}; "
          f"{os.cpu_count()} CPU cores; load average at end {os.getloadavg()[0]:.1f}\n")
    print(summarise(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
