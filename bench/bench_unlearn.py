"""Engine-default removals on Olivetti with the default small CNN, judged against retraining
in the same run (the targets of issue 11, "Engine v2").

Two regimes:
- **identities**: forget every training photo of one person; each identity is retrained once
  (the checkpoint's recipe) and removed with every seed;
- **scattered photos**: forget 4 training photos of 4 different people (``--draws`` random
  draws), each draw retrained.

For every run: forget accuracy, held-out accuracy of the forgotten person, retained accuracy
against the original, held-out accuracy of the others against the retrained model's, the
loss-attack MIA AUC against the retrained model's, the null-control ratio |d_0| / |d|, the
removal's wall time (``unlearn_s``, what the engine measures from the call to the new model),
the end-to-end time of ``remove`` (engine + evaluation), and the peak resident memory.

    python bench/bench_unlearn.py                                  # 40 identities x seeds 0 1 2, 10 draws
    python bench/bench_unlearn.py --identities 0 1 2 --seeds 0 --draws 2
    python bench/bench_unlearn.py --quick                          # 5 identities, 1 seed, 2 draws

Prints Markdown tables with each target met or missed (and by how much), and writes one JSON
line per run to ``--out`` (default docs/results/unlearn_v2.jsonl).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcodec_core.audit.comparison import membership_inference  # noqa: E402
from lcodec_core.unlearning.baselines import retrain  # noqa: E402
from lcodec_core.unlearning.block import warm_up  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.audit.evaluation import evaluate  # noqa: E402
from lcodec_core.unlearning.memory import PeakMemory  # noqa: E402
from lcodec_core.removal import remove  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _reference(checkpoint, bundle, request, seed):
    """Retrain on the request's retained data: (metrics, mia, seconds)."""
    start = time.perf_counter()
    model = retrain(request.retain, checkpoint.recipe)
    seconds = time.perf_counter() - start
    return evaluate(model, bundle, request), membership_inference(model, request, bundle.test, seed), seconds


def _removal_row(checkpoint, bundle, request, seed, reference, kind, label):
    metrics_r, mia_r, retrain_s = reference
    start = time.perf_counter()
    with PeakMemory() as peak:
        record = remove(checkpoint, bundle, request, UnlearnConfig(seed=seed))
    end_to_end = time.perf_counter() - start
    report = record.to_json()
    step = report["diagnostics"].get("step") or {}
    return {
        "kind": kind, "label": label, "seed": seed, "identity": request.identity,
        "forget_indices": request.forget_indices,
        "original": report["original"], "unlearned": report["unlearned"], "retrained": metrics_r,
        "mia_auc": membership_inference(record.model, request, bundle.test, seed)["mia_auc"],
        "mia_auc_retrained": mia_r["mia_auc"],
        "null_control_ratio": (step.get("null_control") or {}).get("ratio"),
        "rule": step.get("rule"), "target_met": step.get("target_met"),
        "guard_limited": step.get("guard_limited"), "damping": step.get("damping"),
        "curvature_effect": step.get("curvature_effect"),
        "verdict": report["verdict"]["status"], "guarantee": report["guarantee"],
        "unlearn_s": report["timings"]["unlearn_s"], "timings": report["timings"],
        "end_to_end_s": end_to_end, "retrain_s": retrain_s,
        "peak_memory_mb": peak.mb,
        "slices": [f"{s['module']}[{s['index']}]" for s in report["selected_slices"]],
        "parameters_updated": report["parameters_updated"],
        "load_average": os.getloadavg()[0],
    }


def run(identities, seeds, draws, out: Path) -> list[dict]:
    checkpoint, bundle = load_or_train("olivetti", "small_cnn")
    print(f"warm-up (first torch.func.vmap in this process): {warm_up():.2f} s", file=sys.stderr)
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        def keep(row):
            rows.append(row)
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            u, r = row["unlearned"], row["retrained"]
            print(f"{row['label']:>28} seed {row['seed']}: forget {u['forget_accuracy']:.3f} "
                  f"(retrained {r['forget_accuracy']:.3f}) held-out {u['forget_test_accuracy']:.3f} "
                  f"retain {u['retain_accuracy']:.3f} test {u['test_accuracy']:.3f} "
                  f"(retrained {r['test_accuracy']:.3f}) mia {row['mia_auc']:.3f} "
                  f"(retrained {row['mia_auc_retrained']:.3f}) {row['unlearn_s']:.2f} s "
                  f"[{row['rule']}, target {'met' if row['target_met'] else 'missed'}] "
                  f"load {row['load_average']:.1f}", file=sys.stderr, flush=True)

        for identity in identities:
            request = make_request(bundle, identity=identity)
            reference = _reference(checkpoint, bundle, request, 0)
            for seed in seeds:
                keep(_removal_row(checkpoint, bundle, request, seed, reference, "identity",
                                  f"identity {identity}"))
        picker = random.Random(0)
        for draw in range(draws):
            people = picker.sample(range(bundle.num_classes), 4)
            indices = [picker.choice(bundle.train.indices_of(p)) for p in people]
            request = make_request(bundle, indices=indices)
            reference = _reference(checkpoint, bundle, request, 0)
            keep(_removal_row(checkpoint, bundle, request, 0, reference, "scattered",
                              f"draw {draw}: {indices}"))
    return rows


def _child_peak_mb(command: list[str]) -> float:
    """Peak resident memory (MB) of ``command`` run as a child process."""
    done = subprocess.run(["/usr/bin/time", "-f", "%M"] + command, check=True,
                          capture_output=True, text=True, cwd=ROOT)
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def cli_peak_memory_mb(identities) -> tuple[float, float]:
    """(peak, baseline) resident memory in MB: ``lcodec unlearn --forget-identity K`` as its
    own process (the maximum over ``identities``; the model comes from the LCODEC_HOME cache),
    and a process that only imports torch. Their difference is what the removal itself
    (data, model, probing, curvature, step) adds."""
    baseline = _child_peak_mb([sys.executable, "-c", "import torch"])
    with tempfile.TemporaryDirectory() as folder:
        peak = max(_child_peak_mb([sys.executable, "-m", "lcodec_core", "unlearn", "--forget-identity",
                                   str(identity), "--ledger", str(Path(folder) / "ledger.sqlite")])
                   for identity in identities)
    return peak, baseline


def _stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f} (min {min(values):.3f}, max {max(values):.3f})"


def _verdict(worst: float, limit: float, larger_is_worse: bool = True) -> str:
    """'met' or '**missed** by X' for the worst value against the limit."""
    miss = worst - limit if larger_is_worse else limit - worst
    return "met" if miss <= 1e-12 else f"**missed** by {miss:.3g}"


def summarise_identities(rows: list[dict]) -> str:
    forget = [r["unlearned"]["forget_accuracy"] for r in rows]
    held = [r["unlearned"]["forget_test_accuracy"] for r in rows]
    retain_ratio = [r["unlearned"]["retain_accuracy"] / r["original"]["retain_accuracy"] for r in rows]
    test_gap = [abs(r["unlearned"]["test_accuracy"] - r["retrained"]["test_accuracy"]) for r in rows]
    mia_gap = [abs(r["mia_auc"] - r["mia_auc_retrained"]) for r in rows]
    control = [r["null_control_ratio"] for r in rows]
    seconds = [r["unlearn_s"] for r in rows]
    end_to_end = [r["end_to_end_s"] for r in rows]
    speedup = [r["retrain_s"] / r["unlearn_s"] for r in rows]
    memory = [r["peak_memory_mb"] for r in rows]
    cli_memory, baseline = rows[0]["cli_peak_memory_mb"], rows[0]["import_torch_memory_mb"]
    met = sum(r["target_met"] for r in rows)
    lines = [
        "| quantity | mean ± sd (min, max) | target | verdict |",
        "|---|---|---|---|",
        f"| forget accuracy | {_stat(forget)} | <= 0.05 every run | {_verdict(max(forget), 0.05)} |",
        f"| held-out accuracy of the forgotten person | {_stat(held)} | <= 0.10 every run | {_verdict(max(held), 0.10)} |",
        f"| retained accuracy / original | {_stat(retain_ratio)} | >= 0.99 | {_verdict(min(retain_ratio), 0.99, False)} |",
        f"| abs(held-out others - retrained's) | {_stat(test_gap)} | <= 0.02 | {_verdict(max(test_gap), 0.02)} |",
        f"| abs(MIA AUC - retrained's) | {_stat(mia_gap)} | <= 0.05 | {_verdict(max(mia_gap), 0.05)} |",
        f"| null-control ratio | {_stat(control)} | <= 0.1 | {_verdict(max(c for c in control if c is not None), 0.1)} |",
        f"| unlearn_s (engine) | {_stat(seconds)} | <= 2 s every run | {_verdict(max(seconds), 2.0)} |",
        f"| end to end (engine + evaluation) | {_stat(end_to_end)} | | |",
        f"| speed-up over retraining | {_stat(speedup)} | median >= 10x | "
        f"{_verdict(statistics.median(speedup), 10, False)} (median {statistics.median(speedup):.1f}x) |",
        f"| peak memory of `lcodec unlearn` minus `import torch` alone (MB) | {cli_memory - baseline:.0f} "
        f"({cli_memory:.0f} - {baseline:.0f}) | <= 1024 | {_verdict(cli_memory - baseline, 1024)}; the "
        f"whole process {_verdict(cli_memory, 1024)} |",
        f"| peak resident memory of this benchmark process during a removal (MB; includes the "
        f"retrained models' allocator cache) | {_stat(memory)} | | |",
        "",
        f"Runs: {len(rows)} ({len({r['identity'] for r in rows})} identities x "
        f"{len({r['seed'] for r in rows})} seeds); step target met in {met}; verdict 'forgotten' in "
        f"{sum(r['verdict'] == 'forgotten' for r in rows)}.",
    ]
    return "\n".join(lines)


def summarise_scattered(rows: list[dict]) -> str:
    forget_gap = [abs(r["unlearned"]["forget_accuracy"] - r["retrained"]["forget_accuracy"]) for r in rows]
    test_gap = [abs(r["unlearned"]["test_accuracy"] - r["retrained"]["test_accuracy"]) for r in rows]
    mia_gap = [abs(r["mia_auc"] - r["mia_auc_retrained"]) for r in rows]
    seconds = [r["unlearn_s"] for r in rows]
    lines = [
        "| quantity | mean ± sd (min, max) | target | verdict |",
        "|---|---|---|---|",
        f"| abs(forget accuracy - retrained's) | {_stat(forget_gap)} | <= 0.25 | {_verdict(max(forget_gap), 0.25)} |",
        f"| abs(held-out accuracy - retrained's) | {_stat(test_gap)} | <= 0.02 | {_verdict(max(test_gap), 0.02)} |",
        f"| abs(MIA AUC - retrained's) | {_stat(mia_gap)} | <= 0.1 | {_verdict(max(mia_gap), 0.1)} |",
        f"| unlearn_s (engine) | {_stat(seconds)} | <= 2 s | {_verdict(max(seconds), 2.0)} |",
        "",
        f"Draws: {len(rows)}; forget accuracy unlearned {_stat([r['unlearned']['forget_accuracy'] for r in rows])}, "
        f"retrained {_stat([r['retrained']['forget_accuracy'] for r in rows])}; step target met in "
        f"{sum(r['target_met'] for r in rows)}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, nargs="+", default=list(range(40)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=10, help="random draws of 4 scattered photos")
    parser.add_argument("--quick", action="store_true", help="identities 0-4, seed 0, 2 draws")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "unlearn_v2.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    identities = args.identities[:5] if args.quick else args.identities
    seeds = args.seeds[:1] if args.quick else args.seeds
    draws = min(args.draws, 2) if args.quick else args.draws
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()[0]
    rows = run(identities, seeds, draws, args.out)
    memory_mb, baseline_mb = cli_peak_memory_mb(identities[:3])
    for row in rows:
        row["cli_peak_memory_mb"], row["import_torch_memory_mb"] = memory_mb, baseline_mb
    print(f"Olivetti, small CNN, engine default (UnlearnConfig()); {started}; {os.cpu_count()} CPU "
          f"cores; load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    identity_rows = [r for r in rows if r["kind"] == "identity"]
    scattered_rows = [r for r in rows if r["kind"] == "scattered"]
    if identity_rows:
        print("### Whole identities\n\n" + summarise_identities(identity_rows) + "\n")
    if scattered_rows:
        print("### 4 scattered photos of 4 people\n\n" + summarise_scattered(scattered_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
