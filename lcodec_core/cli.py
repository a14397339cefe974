"""Command line: ``python -m lcodec_core {prepare,info,...}``.

Results go to stdout (and ``--json``), progress to stderr, errors are one line on stderr
with a non-zero exit status.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .data import DATASETS

log = logging.getLogger("lcodec_core")


def _progress_bar(description: str):
    """A tqdm bar on stderr driven by {"epoch", "epochs"} progress events."""
    from tqdm import tqdm
    state = {}

    def update(event: dict) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=event["epochs"], desc=description, unit="epoch", file=sys.stderr)
        state["bar"].update(1)
        state["bar"].set_postfix(loss=f"{event['loss']:.3f}")
        if event["epoch"] == event["epochs"]:
            state["bar"].close()

    return update


def cmd_prepare(args) -> int:
    from .zoo_cache import cache_path, load_or_train
    checkpoint, bundle = load_or_train(args.dataset, args.model, data_seed=args.data_seed,
                                       on_progress=_progress_bar(f"training {args.dataset}"))
    from models import Recipe
    path = cache_path(args.dataset, Recipe.from_dict(checkpoint.metadata["recipe"]), args.data_seed)
    meta = checkpoint.metadata
    print(f"{meta['model']} on {args.dataset}: train accuracy {meta['train_accuracy']:.3f}, "
          f"test accuracy {meta.get('test_accuracy', float('nan')):.3f} "
          f"(trained in {meta['train_seconds']:.1f} s); checkpoint {path}")
    return 0


def cmd_info(args) -> int:
    from .data import load_dataset
    bundle = load_dataset(args.dataset, seed=args.data_seed)
    summary = {"dataset": args.dataset, "classes": bundle.num_classes,
               "input_shape": list(bundle.input_shape), "train": len(bundle.train),
               "test": len(bundle.test)}
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcodec", description=(
        "Remove training samples from a trained classifier with L-FOCI slice selection and a "
        "block Newton step."))
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", required=True)

    def data_args(p):
        p.add_argument("--dataset", default="olivetti",
                       help=f"data set: {', '.join(DATASETS)} (default: olivetti)")
        p.add_argument("--data-seed", type=int, default=0, help="seed of the train/test split")

    prepare = commands.add_parser("prepare", help="train and cache a zoo model (if not cached)")
    data_args(prepare)
    prepare.add_argument("--model", default=None, help="zoo model name (default: the data set's)")
    prepare.set_defaults(run=cmd_prepare)

    info = commands.add_parser("info", help="describe a data set")
    data_args(info)
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except (ValueError, OSError, KeyError) as error:
        if args.verbose:
            raise
        message = str(error).strip().replace("\n", " ")
        print(f"lcodec: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lcodec: interrupted", file=sys.stderr)
        return 130
