"""ResNet-18 identity removal with the engine default, judged against retraining in the same
run (issue 14, "Scale").

Prepares (or loads from LCODEC_HOME) the zoo's ResNet-18 checkpoint for the data set, then for
each identity of a fixed random sample: removes every training photo of that person with
``UnlearnConfig()`` through :func:`lcodec_core.removal.remove` (the one removal path of the
CLI and the dashboard), retrains the architecture from scratch on the retained photos with
the checkpoint's recipe, and audits the removal as ``bench/bench_unlearn.py`` does for the
small CNN: forget accuracy, held-out accuracy of the person, retained accuracy against the
original, held-out accuracy of the others against the retrained model's, the loss-attack MIA
AUC against the retrained model's, the null-control ratio |d_0| / |d|, the engine's time
(``unlearn_s``), the end-to-end time of ``remove`` (engine + evaluation), the speed-up over
retraining and the peak resident memory (RSS) of the removal. Unless ``--no-seed-control``,
each identity is retrained a second time with the next seed: the two retrainings' spread on
the others' held-out photos is the control for "within 2 points of the retrained model".

    python bench/bench_resnet.py                       # 10 identities (seed 0), CPU
    python bench/bench_resnet.py --quick               # 3 identities
    python bench/bench_resnet.py --device cuda
    python bench/bench_resnet.py --dataset folder:PATH # any image folder, one subfolder per person
    python bench/bench_resnet.py --write-docs          # also (re)write its section of docs/BENCHMARKS.md

Prints a Markdown table with each target met or missed (and by how much) and writes one JSON
line per identity to ``--out`` (default docs/results/resnet18.jsonl).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import random
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcodec_core.audit.attacks import request_attacks  # noqa: E402
from lcodec_core.audit.comparison import membership_inference  # noqa: E402
from lcodec_core.audit.evaluation import evaluate  # noqa: E402
from lcodec_core.removal import remove  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.unlearning.block import warm_up  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.unlearning.memory import PeakMemory  # noqa: E402
from lcodec_core.zoo_cache import cache_path, load_or_train  # noqa: E402
from lcodec_models import default_recipe, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## ResNet-18 identity removal (issue 14)"
TARGETS = {          # the engine issue's quality targets, and issue 14's cost targets
    "forget_accuracy": 0.05, "forget_test_accuracy": 0.10, "retain_ratio": 0.99,
    "test_gap": 0.02, "mia_gap": 0.05, "null_control": 0.1,
    "unlearn_s": 30.0, "speedup": 20.0, "peak_memory_mb": 4096.0,
}


def prepare(dataset: str, device: str) -> tuple:
    """(checkpoint on ``device``, bundle, info): the cached ResNet-18, trained first if absent."""
    recipe = default_recipe(dataset, "resnet18")
    cached = cache_path(dataset, recipe).exists()
    start = time.perf_counter()
    checkpoint, bundle = load_or_train(dataset, "resnet18", recipe=recipe)
    info = {"cached": cached, "prepare_s": time.perf_counter() - start,
            "train_seconds": checkpoint.metadata.get("train_seconds"),
            "test_accuracy": checkpoint.metadata.get("test_accuracy"),
            "train_accuracy": checkpoint.metadata.get("train_accuracy"),
            "recipe": checkpoint.recipe.to_dict(),
            "parameters": sum(p.numel() for p in checkpoint.model.parameters())}
    checkpoint.model.to(device)
    return checkpoint, bundle, info


def retrain_reference(checkpoint, bundle, request, device: str,
                      seed_offset: int = 0) -> tuple[dict, dict, float, dict]:
    """The architecture retrained from scratch on the retained photos with the checkpoint's
    recipe (what :func:`lcodec_core.unlearning.baselines.retrain` does, on ``device``), its
    seed moved by ``seed_offset``: (accuracies, MIA, seconds, attacks)."""
    recipe = dataclasses.replace(checkpoint.recipe, seed=checkpoint.recipe.seed + seed_offset)
    start = time.perf_counter()
    model = train(recipe.model, request.retain, recipe, device=device).model
    seconds = time.perf_counter() - start
    return (evaluate(model, bundle, request), membership_inference(model, request, bundle.test, 0),
            seconds, request_attacks(model, bundle, request))


def identity_row(checkpoint, bundle, identity: int, device: str, seed_control: bool) -> dict:
    """One identity removed, retrained and audited; with ``seed_control`` also retrained a
    second time with the next seed: how far two retrainings' held-out accuracies of the
    others lie apart is the noise floor against which "within 2 points of the retrained
    model" is read (a removal cannot be closer to retraining than retraining is to itself)."""
    request = make_request(bundle, identity=identity)
    start = time.perf_counter()
    with PeakMemory(device) as peak:
        record = remove(checkpoint, bundle, request, UnlearnConfig())
    end_to_end = time.perf_counter() - start
    report = record.to_json()
    step = report["diagnostics"].get("step") or {}
    metrics_r, mia_r, retrain_s, attacks_r = retrain_reference(checkpoint, bundle, request, device)
    second = retrain_reference(checkpoint, bundle, request, device, 1) if seed_control else None
    control = second[0] if second else None
    return {
        "attacks": {"original": report["attacks"]["before"], "unlearned": report["attacks"]["unlearned"],
                    "retrained": attacks_r, "retrained2": second[3] if second else None},
        "identity": identity, "forget_photos": len(request.forget),
        "original": report["original"], "unlearned": report["unlearned"], "retrained": metrics_r,
        "retrained_next_seed": control,
        "mia_auc": membership_inference(record.model, request, bundle.test, 0)["mia_auc"],
        "mia_auc_retrained": mia_r["mia_auc"],
        "null_control_ratio": (step.get("null_control") or {}).get("ratio"),
        "rule": step.get("rule"), "target_met": step.get("target_met"),
        "guard_limited": step.get("guard_limited"), "curvature_effect": step.get("curvature_effect"),
        "verdict": report["verdict"]["status"],
        "buffers_unchanged": report["diagnostics"].get("buffers_unchanged"),
        "unlearn_s": report["timings"]["unlearn_s"], "timings": report["timings"],
        "end_to_end_s": end_to_end, "retrain_s": retrain_s,
        "speedup": retrain_s / report["timings"]["unlearn_s"],
        "peak_memory_mb": peak.mb,
        "slices": [f"{s['module']}[{s['index']}]" for s in report["selected_slices"]],
        "parameters_updated": report["parameters_updated"],
        "load_average": os.getloadavg()[0],
    }


def _stat(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4g} ± {spread:.2g} (min {min(values):.4g}, max {max(values):.4g})"


def _verdict(values, limit: float, larger_is_worse: bool = True, unit: str = "") -> str:
    """'met' or '**missed** in i of n runs, worst by X' against ``limit``."""
    values = [v for v in values if v is not None]
    misses = [(v - limit if larger_is_worse else limit - v) for v in values]
    bad = [m for m in misses if m > 1e-12]
    if not bad:
        return "met"
    return f"**missed** in {len(bad)} of {len(values)}, worst by {max(bad):.3g}{unit}"


def summarise(rows: list[dict]) -> str:
    forget = [r["unlearned"]["forget_accuracy"] for r in rows]
    held = [r["unlearned"]["forget_test_accuracy"] for r in rows]
    ratio = [r["unlearned"]["retain_accuracy"] / r["original"]["retain_accuracy"] for r in rows]
    test_gap = [abs(r["unlearned"]["test_accuracy"] - r["retrained"]["test_accuracy"]) for r in rows]
    seed_gap = [abs(r["retrained_next_seed"]["test_accuracy"] - r["retrained"]["test_accuracy"])
                for r in rows if r.get("retrained_next_seed")]
    original_gap = [abs(r["original"]["test_accuracy"] - r["retrained"]["test_accuracy"]) for r in rows]
    mia_gap = [abs(r["mia_auc"] - r["mia_auc_retrained"]) for r in rows]
    control = [r["null_control_ratio"] for r in rows]
    seconds = [r["unlearn_s"] for r in rows]
    speedup = [r["speedup"] for r in rows]
    memory = [r["peak_memory_mb"] for r in rows]
    t = TARGETS
    lines = [
        "| quantity | mean ± sd (min, max) | target | verdict |",
        "|---|---|---|---|",
        f"| forget accuracy | {_stat(forget)} | <= {t['forget_accuracy']} | {_verdict(forget, t['forget_accuracy'])} |",
        f"| held-out accuracy of the person | {_stat(held)} | <= {t['forget_test_accuracy']} | {_verdict(held, t['forget_test_accuracy'])} |",
        f"| retained accuracy / original | {_stat(ratio)} | >= {t['retain_ratio']} | {_verdict(ratio, t['retain_ratio'], False)} |",
        f"| abs(held-out others - retrained's) | {_stat(test_gap)} | <= {t['test_gap']} | {_verdict(test_gap, t['test_gap'])} |",
        f"| control: abs(original model's held-out others - retrained's) | {_stat(original_gap)} | | |",
        f"| control: abs(retrained with the next seed - retrained), held-out others | {_stat(seed_gap)} | | |",
        f"| abs(MIA AUC - retrained's) | {_stat(mia_gap)} | <= {t['mia_gap']} | {_verdict(mia_gap, t['mia_gap'])} |",
        f"| null-control ratio | {_stat(control)} | <= {t['null_control']} | {_verdict(control, t['null_control'])} |",
        f"| unlearn_s (engine, s) | {_stat(seconds)} | <= {t['unlearn_s']:.0f} s | {_verdict(seconds, t['unlearn_s'], unit=' s')} |",
        f"| end to end (`remove`: engine + evaluation, s) | {_stat([r['end_to_end_s'] for r in rows])} | | |",
        f"| retraining from scratch (s) | {_stat([r['retrain_s'] for r in rows])} | | |",
        f"| speed-up over retraining (retrain_s / unlearn_s) | {_stat(speedup)} | >= {t['speedup']:.0f}x | {_verdict(speedup, t['speedup'], False, 'x')} |",
        f"| peak RSS during the removal (MB) | {_stat(memory)} | <= {t['peak_memory_mb']:.0f} | {_verdict(memory, t['peak_memory_mb'], unit=' MB')} |",
    ]
    from bench.bench_unlearn import attack_checks
    attacked = [r for r in rows if r["attacks"].get("retrained2")]
    if attacked:
        checks = [attack_checks(r) for r in attacked]
        a = [r["attacks"] for r in attacked]
        def pair(key, digits=2):
            return "; ".join(f"{x['unlearned'][key]:.{digits}f} / {x['retrained'][key]:.{digits}f} / "
                             f"{x['retrained2'][key]:.{digits}f}" for x in a)
        lines += [
            f"| margin AUC: unlearned / retrained / retrained (next seed), per identity | {pair('margin_auc')} | within max(0.15, retrainings' gap) | {sum(c['margin'] for c in checks)}/{len(checks)} |",
            f"| offset constant: same | {pair('offset_constant', 1)} | >= 0.7x retrained | {sum(c['offset_constant'] for c in checks)}/{len(checks)} |",
            f"| others flipped by it: same | {pair('offset_flipped', 0)} | >= 0.5x retrained | {sum(c['offset_flips'] for c in checks)}/{len(checks)} |",
            f"| relearned after 10 steps: same | " + "; ".join(
                f"{float(x['unlearned']['relearned']['10']):.2f} / {float(x['retrained']['relearned']['10']):.2f} / "
                f"{float(x['retrained2']['relearned']['10']):.2f}" for x in a)
            + f" | <= retrained + 0.125 at 2, 5, 10 | {sum(c['relearn'] for c in checks)}/{len(checks)} |",
        ]
    phases = {k: statistics.median(r["timings"][k] for r in rows)
              for k in ("probe_s", "select_s", "newton_s")}
    lines += ["", f"Identities {[r['identity'] for r in rows]}; verdict 'forgotten' in "
              f"{sum(r['verdict'] == 'forgotten' for r in rows)} of {len(rows)}; step target met in "
              f"{sum(bool(r['target_met']) for r in rows)}; BatchNorm buffers bit-identical in "
              f"{sum(bool(r['buffers_unchanged']) for r in rows)}"
              + (f"; the removal's held-out-others gap to the retrained model is no larger than the "
                 f"two retrainings' gap in {sum(a <= b + 1e-12 for a, b in zip(test_gap, seed_gap))} of "
                 f"{len(seed_gap)}" if len(seed_gap) == len(rows) else "")
              + ". Median phase times: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
              + f"; median block size p = {statistics.median(r['parameters_updated'] for r in rows):.0f}."]
    return "\n".join(lines)


END_OF_OUTPUT = "<!-- end of bench/bench_resnet.py output; notes below are written by hand -->"


def write_docs(text: str) -> None:
    """Replace this benchmark's output in docs/BENCHMARKS.md (its section heading up to the
    ``END_OF_OUTPUT`` marker, or the whole section when there is no marker yet), keeping
    the hand-written notes after the marker and every other section."""
    current = DOCS.read_text()
    block = text.rstrip() + "\n\n" + END_OF_OUTPUT + "\n"
    marked = re.compile(re.escape(SECTION) + r".*?" + re.escape(END_OF_OUTPUT) + r"\n?", re.S)
    whole = re.compile(re.escape(SECTION) + r".*?(?=^## |\Z)", re.S | re.M)
    if marked.search(current):
        updated = marked.sub(lambda _m: block, current, count=1)
    elif whole.search(current):
        updated = whole.sub(lambda _m: block + "\n", current, count=1)
    else:
        updated = current.rstrip() + "\n\n" + block
    DOCS.write_text(updated.rstrip() + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--identities", type=int, default=10, help="size of the identity sample")
    parser.add_argument("--dataset", default="olivetti", help="olivetti or folder:PATH")
    parser.add_argument("--quick", action="store_true", help="3 identities")
    parser.add_argument("--write-docs", action="store_true", help=f"write '{SECTION}' in {DOCS.name}")
    parser.add_argument("--no-seed-control", action="store_true",
                        help="skip the second retraining (next seed) that measures retraining's own spread")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "resnet18.jsonl")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(2)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()
    checkpoint, bundle, info = prepare(args.dataset, args.device)
    print(f"checkpoint: {'cached' if info['cached'] else 'trained now'} in {info['prepare_s']:.1f} s "
          f"(training took {info['train_seconds']:.0f} s; held-out accuracy {info['test_accuracy']:.3f}); "
          f"warm-up {warm_up():.2f} s", file=sys.stderr, flush=True)
    count = 3 if args.quick else args.identities
    identities = sorted(random.Random(0).sample(range(bundle.num_classes), min(count, bundle.num_classes)))
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as handle:
        for identity in identities:
            row = identity_row(checkpoint, bundle, identity, args.device, not args.no_seed_control)
            rows.append(row)
            handle.write(json.dumps({**row, "checkpoint": info, "device": args.device}) + "\n")
            handle.flush()
            u, r = row["unlearned"], row["retrained"]
            print(f"identity {identity}: forget {u['forget_accuracy']:.3f} held-out "
                  f"{u['forget_test_accuracy']:.3f} retain {u['retain_accuracy']:.3f} test "
                  f"{u['test_accuracy']:.3f} (retrained {r['test_accuracy']:.3f}) mia {row['mia_auc']:.3f} "
                  f"(retrained {row['mia_auc_retrained']:.3f}) unlearn {row['unlearn_s']:.1f} s "
                  f"[probe {row['timings']['probe_s']:.1f}, select {row['timings']['select_s']:.1f}, "
                  f"newton {row['timings']['newton_s']:.1f}] end-to-end {row['end_to_end_s']:.1f} s "
                  f"retrain {row['retrain_s']:.0f} s ({row['speedup']:.1f}x) rss {row['peak_memory_mb']:.0f} MB "
                  f"slices {row['slices']} load {row['load_average']:.1f}", file=sys.stderr, flush=True)
            text = render(rows, len(identities), args, argv, info, started, load_start)
            if args.write_docs:      # after every identity, so a run cut short still reports
                write_docs(text)
    print(text)
    return 0


def render(rows, planned, args, argv, info, started, load_start) -> str:
    """This benchmark's section of docs/BENCHMARKS.md, from the identities done so far."""
    load_end = os.getloadavg()
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recipe = info["recipe"]
    command = "python bench/bench_resnet.py" + " ".join(
        [""] + [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write-docs"])
    done = "" if len(rows) == planned else f" (**{len(rows)} of {planned} done** when this was written)"
    return "\n".join([
        SECTION, "",
        f"- Command: `{command.strip()}` ({args.dataset}, device {args.device}, {planned} identities "
        f"drawn with `random.Random(0)`{done}, each retrained from scratch in the same run). Per-identity "
        f"lines: `docs/results/{args.out.name}`.",
        f"- {started}, {os.cpu_count()} CPU cores, torch {torch.__version__}; load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.1f}' for x in load_start)} at the start and "
        f"{', '.join(f'{x:.1f}' for x in load_end)} when this was written.",
        f"- Model: the zoo's ResNet-18 ({info['parameters'] / 1e6:.1f}M parameters; 7x7 stride-2 stem "
        f"and max-pool), recipe {recipe['epochs']} epochs of Adam, lr {recipe['lr']:g}, batch "
        f"{recipe['batch_size']}, weight decay {recipe['weight_decay']:g}, head polished: trained in "
        f"{info['train_seconds']:.0f} s ({'cached from an earlier run' if info['cached'] else 'in this run'}), "
        f"held-out accuracy {info['test_accuracy']:.3f} (training {info['train_accuracy']:.3f}).",
        "- Settings: `UnlearnConfig()`, the engine default. BatchNorm: every forward pass of the "
        "engine runs on an eval-mode copy (running statistics frozen); the result's "
        "`diagnostics[\"buffers_unchanged\"]` checks the buffers bit for bit.",
        f"- Peak RSS of the whole benchmark process (retraining included): {process_peak:.0f} MB.",
        "", summarise(rows), ""])


if __name__ == "__main__":
    raise SystemExit(main())
