"""Data-parallel removal (issue 14): the engine's phases with 1 and W gloo workers.

For each retained set and each worker count, one default removal (Fisher curvature, the
target step rule) of a few scattered training images from the MNIST MLP of the model zoo
(``load_or_train("mnist", "mlp")``), then the retained accuracy of the result (the sharded
evaluation). Two retained sets:

- ``mnist``: the request's own retained images (the MNIST test set's training split);
- ``synthetic``: ``--synthetic`` random images of the model's input shape with random
  labels (timing only: nothing about the removal's quality is read from it).

Per run: the time of each phase as the engine measures it inside the workers (probe, select,
newton, and the evaluation), the launcher's wall time (process start, imports, joining the
group, handing the data over by shared memory), the bytes each rank contributed to
collectives by what was reduced, and the largest relative weight difference from the
one-worker result (the 1e-5 equality of issue 14).

    flock /tmp/lcodec-bench.lock python bench/bench_distributed.py             # 1 and 2 workers
    flock /tmp/lcodec-bench.lock python bench/bench_distributed.py --synthetic 0 --workers 1 2
    flock /tmp/lcodec-bench.lock python bench/bench_distributed.py --model resnet18 --dataset olivetti \
        --synthetic 2000 --out docs/results/distributed_resnet18.jsonl

Every process gets ``--threads`` torch threads (default 1): on the shared 2-core machine one
process with 2 threads ran the same removal 17x slower than with 1 (31 s against 1.8 s at load
4: each OpenMP region waits for a thread that another user's process has descheduled), so
the one-worker reference is the 1-thread run. Writes one JSON line per run to
``--out`` (default docs/results/distributed.jsonl) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, JsonlWriter, load, setup  # noqa: E402
from lcodec_core.audit.evaluation import evaluate  # noqa: E402
from lcodec_core.data import DataBundle, ImageDataset  # noqa: E402
from lcodec_core.parallel import ONE_PROCESS, run_on_workers  # noqa: E402
from lcodec_core.requests import ForgetRequest, make_request  # noqa: E402
from lcodec_core.unlearning.block import warm_up  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.unlearning.unlearn import unlearn  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402

FORGET = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]     # training indices removed (scattered images)


def timed_removal(shard, model, request, held_out, config, lam, on_progress=None) -> dict:
    """One removal and the retained accuracy on this rank's share; rank 0's record returns."""
    warm_up()
    result = unlearn(model, request.forget, request.retain, config, weight_decay=lam,
                     held_out=held_out, shard=shard)
    removal_bytes = dict(shard.traffic)
    tick = time.perf_counter()
    bundle = _test_only(held_out)
    accuracies = evaluate(result.model, bundle, request, shard=shard)
    evaluate_s = time.perf_counter() - tick
    step = result.diagnostics.get("step") or {}
    return {"model": result.model, "timings": dict(result.timings), "evaluate_s": evaluate_s,
            "bytes_removal": removal_bytes,
            "bytes_evaluate": shard.bytes_communicated - sum(removal_bytes.values()),
            "calls": dict(shard.calls), "p": result.parameters_updated,
            "slices": [(s.module, s.index) for s in result.selected_slices],
            "curvature_rows": step.get("curvature_rows"), "damping": step.get("damping"),
            "retain_accuracy": accuracies["retain_accuracy"],
            "chosen_retain_accuracy": (step.get("chosen") or {}).get("retain_accuracy")}


def _test_only(test: ImageDataset) -> DataBundle:
    """A bundle whose held-out split is ``test`` (what ``evaluate`` reads besides the request)."""
    from types import SimpleNamespace
    return SimpleNamespace(test=test)


def synthetic_request(request: ForgetRequest, rows: int, num_classes: int, seed: int = 0) -> ForgetRequest:
    """``request`` with ``rows`` random retained images (N(0, 1) pixels, random labels)."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(request.retain.images.shape[1:])
    images = torch.randn((rows,) + shape, generator=generator)                 # (rows, C, H, W)
    targets = torch.randint(0, num_classes, (rows,), generator=generator)      # (rows,)
    retain = ImageDataset(images, targets, request.retain.classes, [f"synthetic{i}" for i in range(rows)])
    return ForgetRequest(forget_indices=request.forget_indices, retain_indices=list(range(rows)),
                         forget=request.forget, retain=retain, identity=None)


def relative_difference(model, reference) -> float:
    """max over parameters of max|w - w_ref| / max|w_ref|."""
    worst = 0.0
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        scale = float(expected.abs().max()) or 1.0
        worst = max(worst, float((value - expected).abs().max()) / scale)
    return worst


def run(label, model, request, held_out, config, lam, workers, threads) -> dict:
    start = time.perf_counter()
    if workers == 1:
        torch.set_num_threads(threads)
        ONE_PROCESS.traffic.clear()
        record = timed_removal(ONE_PROCESS, model, request, held_out, config, lam)
    else:
        record = run_on_workers(timed_removal, (model, request, held_out, config, lam), workers,
                                threads=threads)
    record["wall_s"] = time.perf_counter() - start
    record.update(retained=label, rows=len(request.retain), workers=workers, load_average=load())
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--synthetic", type=int, default=100_000,
                        help="rows of the synthetic retained set (0: skip it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--perturbations", type=int, default=100)
    parser.add_argument("--model", default="mlp", help="zoo model (default mlp)")
    parser.add_argument("--dataset", default="mnist", help="data set (default mnist)")
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed.jsonl")
    args = parser.parse_args(argv)
    setup(threads=args.threads)
    checkpoint, bundle = load_or_train(args.dataset, args.model)
    lam = checkpoint.recipe.weight_decay
    config = UnlearnConfig(num_perturbations=args.perturbations, seed=0)
    request = make_request(bundle, indices=FORGET)
    sets = [(args.dataset, request)]
    if args.synthetic:
        sets.append(("synthetic", synthetic_request(request, args.synthetic, bundle.num_classes)))
    rows = []
    with JsonlWriter(args.out, {"model": args.model, "dataset": args.dataset, "forget": FORGET,
                                "config": config.to_dict(), "threads": args.threads}) as out:
        for label, req in sets:
            reference = None
            for workers in args.workers:
                record = run(label, checkpoint.model, req, bundle.test, config, lam, workers, args.threads)
                model = record.pop("model")
                reference = model if reference is None else reference
                record["max_relative_weight_difference"] = relative_difference(model, reference)
                out.write(record)
                rows.append(record)
                print(_row(record), flush=True)
    print("\n" + "\n".join(_table(rows)))
    return 0


def _row(r: dict) -> str:
    t = r["timings"]
    return (f"{r['retained']:>9} N={r['rows']:>6} W={r['workers']} probe {t['probe_s']:.2f} s, "
            f"select {t['select_s']:.2f} s, newton {t['newton_s']:.2f} s, evaluate "
            f"{r['evaluate_s']:.2f} s, unlearn {t['unlearn_s']:.2f} s, wall {r['wall_s']:.2f} s, "
            f"{sum(r['bytes_removal'].values()) / 1e6:.2f} MB, max rel diff "
            f"{r['max_relative_weight_difference']:.1e} (load {r['load_average']})")


def _table(rows: list[dict]) -> list[str]:
    lines = ["| retained set | N | W | p | probe s | select s | newton s | evaluate s | unlearn s "
             "| wall s | MB sent per rank (removal) | largest collectives | max rel. weight diff | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["timings"]
        top = sorted(r["bytes_removal"].items(), key=lambda kv: -kv[1])[:3]
        biggest = ", ".join(f"{what} {nbytes / 1e6:.2f} MB ({r['calls'].get(what, 0)}x)"
                            for what, nbytes in top) or "none"
        lines.append(
            f"| {r['retained']} | {r['rows']:,} | {r['workers']} | {r['p']:,} | {t['probe_s']:.2f} | "
            f"{t['select_s']:.2f} | {t['newton_s']:.2f} | {r['evaluate_s']:.2f} | {t['unlearn_s']:.2f} | "
            f"{r['wall_s']:.2f} | {sum(r['bytes_removal'].values()) / 1e6:.2f} | {biggest} | "
            f"{r['max_relative_weight_difference']:.1e} | {r['load_average']} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
