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


def _load_model(args):
    """(checkpoint, bundle) for ``--model`` (a zoo name or a checkpoint file) on ``--dataset``."""
    from pathlib import Path

    from models import MODEL_NAMES, load_checkpoint

    from .data import load_dataset
    from .zoo_cache import load_or_train
    if args.model and (Path(args.model).is_file() or args.model.endswith((".pt", ".pth"))):
        checkpoint = load_checkpoint(args.model)
        dataset = checkpoint.metadata.get("dataset", args.dataset)
        if args.dataset_given and dataset != args.dataset:
            raise ValueError(f"checkpoint {args.model} was trained on {dataset!r}, not {args.dataset!r}")
        bundle = load_dataset(dataset, seed=checkpoint.metadata.get("data_seed", args.data_seed))
        if bundle.num_classes != checkpoint.metadata["num_classes"]:
            raise ValueError(f"checkpoint has {checkpoint.metadata['num_classes']} classes; data set "
                             f"{dataset!r} has {bundle.num_classes}")
        return checkpoint, bundle
    if args.model and args.model not in MODEL_NAMES:
        raise ValueError(f"--model must be a zoo model ({', '.join(MODEL_NAMES)}) or an existing "
                         f"checkpoint file; got {args.model!r}")
    return load_or_train(args.dataset, args.model, data_seed=args.data_seed,
                         on_progress=_progress_bar(f"training {args.dataset}"))


def _config_from_args(args):
    from .config import UnlearnConfig
    return UnlearnConfig(
        method=args.method, num_perturbations=args.perturbations,
        perturbation_std=args.perturbation_std, max_slices=args.max_slices, rhs=args.rhs,
        solver=args.solver, newton_steps=args.newton_steps, epsilon=args.epsilon,
        delta=args.delta, noise_on=args.noise_on, seed=args.seed)


def _print_progress(event: dict) -> None:
    print(f"[{event['phase']:>7}] {event['message']}", file=sys.stderr, flush=True)


def cmd_unlearn(args) -> int:
    from .removal import run_removal
    from .requests import make_request
    config = _config_from_args(args)
    checkpoint, bundle = _load_model(args)
    if args.forget_identity is not None:
        request = make_request(bundle, identity=args.forget_identity)
    else:
        request = make_request(bundle, indices=args.forget_index)
    outcome = run_removal(checkpoint, bundle, request, config,
                          compare_retrain=args.compare == "retrain", on_progress=_print_progress)
    report = outcome.report
    if args.save:
        from models import Checkpoint
        metadata = {**checkpoint.metadata, "parent_hash": checkpoint.state_hash(),
                    "removed": report["request"], "unlearn_settings": config.to_dict(),
                    "sigma": report["sigma"]}
        report["saved_to"] = str(Checkpoint(outcome.model, metadata).save(args.save))
    if args.json:
        from pathlib import Path
        Path(args.json).write_text(json.dumps(_strict_json(report), indent=2, allow_nan=False,
                                              default=str))
    _print_summary(report)
    return 0


def _strict_json(value):
    """NaN and infinities (e.g. the held-out accuracy of an index request) become null."""
    import math
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _print_summary(report: dict) -> None:
    columns = ["original", "unlearned"] + (["retrained"] if "retrained" in report else [])
    print(f"Removed {report['request']['description']} from {report['model']} on {report['dataset']} "
          f"with {report['settings']['method']}")
    print(f"{'accuracy':<22}" + "".join(f"{c:>11}" for c in columns))
    for key in ("retain_accuracy", "forget_accuracy", "test_accuracy", "forget_test_accuracy"):
        print(f"{key:<22}" + "".join(f"{report[c][key]:>11.3f}" for c in columns))
    t = report["timings"]
    line = (f"unlearn {t['unlearn_s']:.2f} s (probe {t['probe_s']:.2f}, select {t['select_s']:.2f}, "
            f"newton {t['newton_s']:.2f})")
    if t.get("retrain_s"):
        line += f"; retrain {t['retrain_s']:.2f} s; speed-up {report['speedup_over_retrain']:.1f}x"
    print(line)
    slices = ", ".join(f"{s['module']}[{s['index']}]" for s in report["selected_slices"][:12])
    print(f"{len(report['selected_slices'])} slice(s): {slices}; {report['parameters_updated']} "
          f"parameters ({100 * report['parameter_share']:.2f}% of the model); sigma {report['sigma']:.3g}")


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

    from .config import METHODS, UnlearnConfig
    defaults = UnlearnConfig()
    unlearn = commands.add_parser("unlearn", help="remove an identity or training images from a model")
    data_args(unlearn)
    unlearn.add_argument("--model", default=None,
                         help="zoo model name or checkpoint file (default: the data set's zoo model)")
    target = unlearn.add_mutually_exclusive_group(required=True)
    target.add_argument("--forget-identity", type=int, metavar="K", help="forget every training image of class K")
    target.add_argument("--forget-index", type=int, nargs="+", metavar="I", help="forget these training indices")
    unlearn.add_argument("--method", default=defaults.method, choices=METHODS, help="removal method")
    unlearn.add_argument("--compare", choices=["retrain"], help="also retrain from scratch and compare")
    unlearn.add_argument("--seed", type=int, default=defaults.seed, help="seed of the removal")
    unlearn.add_argument("--perturbations", type=int, default=defaults.num_perturbations, help="m per image")
    unlearn.add_argument("--perturbation-std", type=float, default=defaults.perturbation_std)
    unlearn.add_argument("--max-slices", type=int, default=defaults.max_slices)
    unlearn.add_argument("--rhs", default=defaults.rhs, choices=["retain_gradient", "forget_gradient"])
    unlearn.add_argument("--solver", default=defaults.solver, choices=["auto", "explicit", "cg"])
    unlearn.add_argument("--newton-steps", type=int, default=defaults.newton_steps)
    unlearn.add_argument("--epsilon", type=float, default=None, help="(epsilon, delta) target; default: no noise")
    unlearn.add_argument("--delta", type=float, default=defaults.delta)
    unlearn.add_argument("--noise-on", default=defaults.noise_on, choices=["block", "all"])
    unlearn.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    unlearn.add_argument("--save", metavar="PATH", help="save the unlearned model (atomic write)")
    unlearn.set_defaults(run=cmd_unlearn)

    info = commands.add_parser("info", help="describe a data set")
    data_args(info)
    info.set_defaults(run=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.dataset_given = any(a.startswith("--dataset") for a in (argv if argv is not None else sys.argv[1:]))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except (ValueError, OSError, KeyError, FloatingPointError, RuntimeError) as error:
        if args.verbose:
            raise
        message = str(error).strip().replace("\n", " ")
        print(f"lcodec: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lcodec: interrupted", file=sys.stderr)
        return 130
