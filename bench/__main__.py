"""Run every experiment of docs/BENCHMARKS.md, one after another, and print a summary.

    python -m bench --quick          # `make bench`: small versions, under 15 minutes on 2 cores
    python -m bench                  # the full versions (about 35 min on the shared 2-core machine)
    python -m bench --only mnist scaling --quick

Results go to docs/results/<experiment>[_quick].jsonl, figures to docs/img/. Each experiment
also runs alone: ``python bench/<file>.py --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

from bench import bench_baselines, bench_epsilon, bench_mnist_newton, bench_scaling
from bench.common import load, machine

EXPERIMENTS = {
    "mnist": (bench_mnist_newton, "1-2. MNIST logistic regression, sequential removals (Fig. 5 left, Fig. 6)"),
    "epsilon": (bench_epsilon, "3. Olivetti identity removed image by image, epsilon sweep (Fig. 7 left)"),
    "scaling": (bench_scaling, "4. L-CODEC / L-FOCI vs dense, time vs m (Fig. 3)"),
    "baselines": (bench_baselines, "5. Every engine method on identity removal, audited"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small versions (make bench)")
    parser.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS))
    args = parser.parse_args(argv)
    info = machine()
    print(f"bench{' --quick' if args.quick else ''}: {info['date']}, {info['nproc']} cores ({info['cpu']}), "
          f"load {info['load_average']}", flush=True)
    start = time.perf_counter()
    timings, failures = {}, []
    for name in args.only:
        module, title = EXPERIMENTS[name]
        print(f"\n## {title}\n", flush=True)
        tick = time.perf_counter()
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output):
                module.main(["--quick"] if args.quick else [])
        except Exception as error:  # keep going: one broken experiment should not hide the others
            failures.append(name)
            print(f"FAILED: {type(error).__name__}: {error}", flush=True)
        print(output.getvalue(), flush=True)
        timings[name] = time.perf_counter() - tick
        print(f"({name}: {timings[name]:.0f} s, load now {load()})", flush=True)
    total = time.perf_counter() - start
    print("\n## Summary\n")
    for name, seconds in timings.items():
        print(f"- {name}: {seconds:.0f} s{' FAILED' if name in failures else ''}")
    print(f"- total: {total:.0f} s ({total / 60:.1f} min); load at end {load()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
