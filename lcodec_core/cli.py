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
from .jsonsafe import json_ready
from .summary import print_ledger, print_summary

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
    path = cache_path(args.dataset, checkpoint.recipe, args.data_seed)
    meta = checkpoint.metadata
    print(f"{meta['model']} on {args.dataset}: train accuracy {meta['train_accuracy']:.3f}, "
          f"test accuracy {meta.get('test_accuracy', float('nan')):.3f} "
          f"(trained in {meta['train_seconds']:.1f} s); checkpoint {path}")
    return 0


def cmd_polish(args) -> int:
    """Move a checkpoint's linear head to the optimum of its training objective (other layers
    fixed) and save the result to --save; the original file is never changed."""
    import copy
    from pathlib import Path

    from lcodec_models import Checkpoint
    from lcodec_models.stationarity import objective_gradient_norms, polish_head
    checkpoint, bundle = _load_model(args)
    if args.model and Path(args.model).is_file() and Path(args.save).resolve() == Path(args.model).resolve():
        raise ValueError(f"--save {args.save} is the checkpoint being polished; choose another path")
    model = copy.deepcopy(checkpoint.model)
    lam = checkpoint.recipe.weight_decay
    train = bundle.train
    polish = polish_head(model, train.images, train.targets, lam)
    norms = objective_gradient_norms(model, train.images, train.targets, lam)
    metadata = {**checkpoint.metadata, "parent_hash": checkpoint.state_hash(),
                "stationarity": {**norms, "polished_head": polish["head"],
                                 "head_grad_norm_before_polish": polish.get("grad_norm_before")}}
    path = Checkpoint(model, metadata).save(args.save)
    print(f"polished head {polish['head']}: |grad F| of the head {polish.get('grad_norm_before', 0):.3g} "
          f"-> {polish.get('grad_norm_after', 0):.3g}; whole model {norms['grad_norm']:.3g}; saved {path}")
    return 0


def cmd_info(args) -> int:
    from .data import load_dataset
    bundle = load_dataset(args.dataset, seed=args.data_seed)
    summary = {"dataset": args.dataset, "classes": bundle.num_classes,
               "input_shape": list(bundle.input_shape), "train": len(bundle.train),
               "test": len(bundle.test)}
    print(json.dumps(summary, indent=2))
    return 0


def _load_model(args, check_bundle=None):
    """(checkpoint, bundle) for ``--model`` (a zoo name or a checkpoint file) on ``--dataset``;
    ``check_bundle(bundle)`` runs before any training, so a bad request (an identity out of
    range) fails in seconds, not after training."""
    from pathlib import Path

    from lcodec_models import MODEL_NAMES, load_checkpoint

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
        if check_bundle is not None:
            check_bundle(bundle)
        return checkpoint, bundle
    if args.model and args.model not in MODEL_NAMES:
        raise ValueError(f"--model must be a zoo model ({', '.join(MODEL_NAMES)}) or an existing "
                         f"checkpoint file; got {args.model!r}")
    bundle = load_dataset(args.dataset, seed=args.data_seed)
    if check_bundle is not None:
        check_bundle(bundle)
    return load_or_train(args.dataset, args.model, data_seed=args.data_seed, bundle=bundle,
                         on_progress=_progress_bar(f"training {args.dataset}"))


def _config_from_args(args):
    from .unlearning.config import UnlearnConfig
    return UnlearnConfig(
        method=args.method, num_perturbations=args.perturbations,
        perturbation_std=args.perturbation_std, max_slices=args.max_slices, rhs=args.rhs,
        solver=args.solver, step_rule=args.step_rule, newton_steps=args.newton_steps,
        feature_step=args.feature_step,
        epsilon=args.epsilon, delta=args.delta, noise_on=args.noise_on, seed=args.seed,
        allow_harmful_noise=args.allow_harmful_noise)


def _print_progress(event: dict) -> None:
    print(f"[{event['phase']:>7}] {event['message']}", file=sys.stderr, flush=True)


def _refuse_overwriting_the_original(args, checkpoint) -> None:
    """``--save`` must not name the checkpoint being unlearned (a file or the zoo cache)."""
    from pathlib import Path

    from .zoo_cache import cache_path
    if args.model and Path(args.model).is_file():
        source = Path(args.model)
    else:
        source = cache_path(args.dataset, checkpoint.recipe, args.data_seed)
    if Path(args.save).resolve() == source.resolve():
        raise ValueError(f"--save {args.save} is the model being unlearned; the original is never "
                         f"overwritten: choose another path")


def _remove_and_record(args) -> dict:
    """Run the removal ``args`` describe (:func:`lcodec_core.removal.remove`, and
    :func:`~lcodec_core.removal.compare_with_retraining` with ``--compare retrain``), save it
    with ``--save`` and record it in the ledger; returns the record's JSON with where it was
    saved and recorded. Nothing is written to ``args``."""
    from lcodec_models import Checkpoint

    from .ledger import Ledger, entry_from_record, save_and_record
    from .removal import compare_with_retraining, remove
    from .requests import make_request
    from .unlearning.block import warm_up
    config = _config_from_args(args)

    def request_for(bundle):
        if args.forget_identity is not None:
            return make_request(bundle, identity=args.forget_identity)
        return make_request(bundle, indices=args.forget_index)

    checkpoint, bundle = _load_model(args, check_bundle=request_for)
    if args.save:
        _refuse_overwriting_the_original(args, checkpoint)
    request = request_for(bundle)
    warm_up()
    from .parallel import removal_engine
    record = remove(checkpoint, bundle, request, config, on_progress=_print_progress,
                    engine=removal_engine(getattr(args, "workers", 1)))
    if args.compare == "retrain":
        record = compare_with_retraining(record, checkpoint.model, checkpoint.recipe, bundle,
                                         on_progress=_print_progress)
    out = record.to_json()
    ledger = Ledger(args.ledger)
    entry = entry_from_record(out)
    if args.save:  # the file and its ledger row are committed together, or neither
        metadata = {key: value for key, value in checkpoint.metadata.items()
                    if key != "stationarity"}   # measured on the parent, not on this model
        metadata.update(parent_hash=record.hash_before, removed=out["request"],
                        unlearn_settings=config.to_dict(), sigma=out["sigma"])
        row = save_and_record(Checkpoint(record.model, metadata), args.save, entry, ledger)
        out["saved_to"] = row.model_path
    else:
        row = ledger.record(entry)
    cost = ledger.model_cost(row.model_after)
    out["ledger"] = {"path": str(ledger.path), "id": row.id, "lineage": row.lineage,
                     "model_cost": cost.to_dict()}
    print(f"ledger: removal {row.id} recorded in {ledger.path} (lineage {row.lineage[:12]}); "
          f"cumulative cost of this model: {cost.describe()}")
    return out


def _write_json(path, report: dict) -> None:
    from pathlib import Path
    Path(path).write_text(json.dumps(json_ready(report), indent=2, allow_nan=False, default=str))


def cmd_unlearn(args) -> int:
    report = _remove_and_record(args)
    if args.json:
        _write_json(args.json, report)
    print_summary(report)
    return 0


def cmd_ledger(args) -> int:
    """Print the recorded removals and each lineage's cumulative (epsilon, delta)."""
    from .ledger import COMPOSITION, Ledger
    ledger = Ledger(args.ledger)
    model_hash = ledger.resolve_hash(args.model_hash) if args.model_hash else None
    rows = (ledger.ancestry(model_hash) if model_hash
            else ledger.rows(lineage=args.lineage))
    if model_hash and args.lineage:
        rows = [r for r in rows if r.lineage.startswith(args.lineage.lower())]
    lineages = {lineage: cost for lineage, cost in ledger.lineages().items()
                if any(r.lineage == lineage for r in rows)}
    files = ledger.verify_files() if args.verify else {}
    if args.json:
        out = {"ledger": str(ledger.path), "composition": COMPOSITION,
               "removals": [{**r.to_dict(), **({"file_status": files[r.id]} if r.id in files else {})}
                            for r in rows],
               "lineages": {lineage: cost.to_dict() for lineage, cost in lineages.items()}}
        if model_hash:
            out["model_cost"] = ledger.model_cost(model_hash).to_dict()
        print(json.dumps(json_ready(out), indent=2, allow_nan=False))
        return 0
    print_ledger(ledger, rows, lineages, files, model_hash,
                 filtered=bool(args.lineage or args.model_hash))
    return 0


def cmd_audit(args) -> int:
    """Markdown audit of RESULT.json, or of a removal run now with unlearn's options."""
    from pathlib import Path

    from .audit.report import write_audit_report
    if args.result is not None:
        if args.forget_identity is not None or args.forget_index is not None:
            raise ValueError("give either RESULT.json or --forget-identity/--forget-index, not both")
        try:
            report = json.loads(Path(args.result).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{args.result} is not a JSON report of `unlearn --json`: {error}") from None
        if not isinstance(report, dict):
            raise ValueError(f"{args.result} is not a JSON report of `unlearn --json`")
        out = Path(args.out) if args.out else Path(args.result).with_name(Path(args.result).stem + "-audit")
    else:
        if args.forget_identity is None and args.forget_index is None:
            raise ValueError("give RESULT.json or what to remove (--forget-identity K or --forget-index I ...)")
        if args.compare not in (None, "retrain"):
            raise ValueError(f"an audit compares with retraining; got --compare {args.compare}")
        out = Path(args.out or "lcodec-audit")
        out.mkdir(parents=True, exist_ok=True)
        report = _remove_and_record(argparse.Namespace(**{**vars(args), "compare": "retrain"}))
        _write_json(args.json or out / "result.json", report)
        print_summary(report)
    path = write_audit_report(report, out, charts=not args.no_charts)
    print(f"audit written to {path}")
    return 0


class _OneLineErrors(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"lcodec: error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(prog="lcodec", description=(
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

    from .unlearning.config import METHODS, SOLVERS, STEP_RULES, UnlearnConfig
    defaults = UnlearnConfig()

    def removal_args(p, target_required: bool = True):
        """The options of one removal (shared by unlearn and audit)."""
        data_args(p)
        p.add_argument("--model", default=None,
                       help="zoo model name or checkpoint file (default: the data set's zoo model)")
        target = p.add_mutually_exclusive_group(required=target_required)
        target.add_argument("--forget-identity", type=int, metavar="K", help="forget every training image of class K")
        target.add_argument("--forget-index", type=int, nargs="+", metavar="I", help="forget these training indices")
        p.add_argument("--method", default=defaults.method, choices=METHODS, help="removal method")
        p.add_argument("--compare", choices=["retrain"], help="also retrain from scratch and compare")
        p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the removal")
        p.add_argument("--perturbations", type=int, default=defaults.num_perturbations, help="m per image")
        p.add_argument("--perturbation-std", type=float, default=defaults.perturbation_std)
        p.add_argument("--max-slices", type=int, default=defaults.max_slices)
        p.add_argument("--rhs", default=defaults.rhs, choices=["forget_gradient", "retain_gradient"],
                       help="right-hand side: the forget set's gradient g_U (default, removal-specific) "
                            "or -grad F_r (moves a non-stationary model even with nothing removed)")
        p.add_argument("--solver", default=defaults.solver, choices=SOLVERS,
                       help="curvature: fisher (default; per-sample gradients, fast for any layer) "
                            "or the exact Hessian: explicit, cg, auto (explicit for small blocks)")
        p.add_argument("--step-rule", default=defaults.step_rule, choices=STEP_RULES,
                       help="optimum (default): the linear head to the optimum of the retained "
                            "objective (removed, not hidden); target: engine v2's smallest step "
                            "that meets the forget target (it hides); newton: damped Newton "
                            "iterations (exact solvers)")
        p.add_argument("--feature-step", action="store_true",
                       help="with --step-rule optimum: also move the selected slices outside the "
                            "head by the target step first (measured to change no attack)")
        p.add_argument("--newton-steps", type=int, default=defaults.newton_steps,
                       help="with --step-rule newton: at most this many steps")
        p.add_argument("--epsilon", type=float, default=None, help="(epsilon, delta) target; default: no noise")
        p.add_argument("--allow-harmful-noise", action="store_true",
                       help="keep the model even when the noise leaves it near chance (refused otherwise)")
        p.add_argument("--delta", type=float, default=defaults.delta)
        p.add_argument("--noise-on", default=defaults.noise_on, choices=["block", "all"])
        p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
        p.add_argument("--save", metavar="PATH", help="save the unlearned model (atomic write)")
        p.add_argument("--ledger", metavar="FILE", help="ledger database (default: $LCODEC_HOME/ledger.sqlite)")

    polish = commands.add_parser("polish", help=(
        "move a model's linear head to the optimum of its training objective (a stationary "
        "starting point for removals) and save it"))
    data_args(polish)
    polish.add_argument("--model", default=None, help="zoo model name or checkpoint file")
    polish.add_argument("--save", required=True, metavar="PATH", help="where to write the polished model")
    polish.set_defaults(run=cmd_polish)

    unlearn = commands.add_parser("unlearn", help="remove an identity or training images from a model")
    removal_args(unlearn)
    unlearn.add_argument("--workers", type=int, default=1, metavar="W",
                         help="split the retained set's sums over W processes on this machine "
                              "(gloo; same result); under torchrun leave it out (docs/SCALING.md)")
    unlearn.set_defaults(run=cmd_unlearn)

    audit = commands.add_parser("audit", help=(
        "write a Markdown audit with charts: from RESULT.json of `unlearn --compare retrain`, "
        "or run that removal first with the same options as unlearn"))
    audit.add_argument("result", nargs="?", metavar="RESULT.json",
                       help="report written by `unlearn --compare retrain --json`")
    removal_args(audit, target_required=False)
    audit.add_argument("--out", metavar="DIR",
                       help="report folder (default: RESULT's name + '-audit', or ./lcodec-audit)")
    audit.add_argument("--no-charts", action="store_true", help="write the Markdown only")
    audit.set_defaults(run=cmd_audit)

    ledger = commands.add_parser("ledger", help="list recorded removals and cumulative epsilon, delta")
    ledger.add_argument("--lineage", metavar="HASH", help="only this lineage (root model hash or prefix)")
    ledger.add_argument("--model-hash", metavar="HASH",
                        help="only the removals that produced this model, and its cumulative cost")
    ledger.add_argument("--verify", action="store_true", help="check that saved model files are unchanged")
    ledger.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ledger.add_argument("--ledger", metavar="FILE", help="ledger database (default: $LCODEC_HOME/ledger.sqlite)")
    ledger.set_defaults(run=cmd_ledger)

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
    except Exception as error:  # anything unforeseen is still one line (-v shows the traceback)
        if args.verbose:
            raise
        message = str(error).strip().replace("\n", " ")
        print(f"lcodec: error: unexpected {type(error).__name__}: {message} "
              f"(run with -v for the traceback)", file=sys.stderr)
        return 1
