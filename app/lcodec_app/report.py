"""What the Audit page downloads: the unlearned model and a JSON / Markdown record of removals."""
from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

from lcodec_core.jsonsafe import json_ready
from lcodec_models import Checkpoint

from .workbench import Workbench

METRICS = ("retain_accuracy", "forget_accuracy", "test_accuracy", "forget_test_accuracy")


def build_report(bench: Workbench) -> dict:
    """Everything about the session's removals (no tensors), JSON-ready."""
    epsilon, delta = bench.privacy_spent()
    return json_ready({
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": bench.key.dataset,
        "model": bench.key.model,
        "recipe": bench.metadata.get("recipe"),
        "base_model_hash": bench.base_hash,
        "current_model_hash": bench.current_hash,
        "privacy_spent": {"epsilon": epsilon, "delta": delta,
                          "composition": "basic (sums) over certified removals; epsilon null = "
                                         "a removal is not certified, no guarantee claimed"},
        "removals": [r.to_json() for r in bench.history],   # the CLI's --json layout
    })


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def to_markdown(report: dict) -> str:
    """A human-readable version of :func:`build_report`'s output."""
    spent = report["privacy_spent"]
    eps = "none claimed (a removal is not certified)" if spent["epsilon"] is None else (
        f"epsilon = {spent['epsilon']:.4g}, delta = {spent['delta']:.3g}")
    lines = [
        "# lcodec removal report", "",
        f"- Created: {report['created']}",
        f"- Data set / model: {report['dataset']} / {report['model']}",
        f"- Base model hash: `{report['base_model_hash']}`",
        f"- Current model hash: `{report['current_model_hash']}`",
        f"- Removals: {len(report['removals'])}",
        f"- Privacy spent (basic composition): {eps}", "",
        "Approximate unlearning: the model's parameters were updated so that it behaves like "
        "a model trained without the removed images. It is not cryptographic erasure, and the "
        "training data itself is not touched.", "",
    ]
    for number, removal in enumerate(report["removals"], start=1):
        metrics, timings = removal, removal["timings"]
        lines += [f"## Removal {number}: {removal['request']['description']}", "",
                  f"- Method: {removal['settings']['method']}; slices selected: "
                  f"{len(removal['selected_slices'])}; parameters updated: "
                  f"{removal['parameters_updated']} ({removal['parameter_share']:.2%})",
                  f"- Outcome: {removal['verdict']['headline']}",
                  f"- Guarantee: {removal['guarantee_text']}",
                  f"- sigma: {removal['sigma']:.4g}; time: {timings.get('unlearn_s') or 0:.2f} s"
                  + (f" (retraining took {timings['retrain_s']:.1f} s)"
                     if timings.get("retrain_s") else ""),
                  f"- Model hash before / after: `{removal['model_hash_before'][:16]}` / "
                  f"`{removal['model_hash_after'][:16]}`", "",
                  "| accuracy | original | unlearned | retrained |", "|---|---|---|---|"]
        for metric in METRICS:
            row = [_fmt((metrics.get(k) or {}).get(metric)) if metrics.get(k) else "not run"
                   for k in ("original", "unlearned", "retrained")]
            lines.append(f"| {metric.replace('_', ' ')} | " + " | ".join(row) + " |")
        audit = removal.get("audit")
        if audit:
            lines += ["", "| audit | original | unlearned | retrained |", "|---|---|---|---|"]
            for key, label in (("mia_auc", "membership attack AUC"), ("mia_efficacy", "MIA-efficacy")):
                lines.append(f"| {label} | " + " | ".join(f"{audit[m][key]:.3f}" for m in
                                                           ("original", "unlearned", "retrained")) + " |")
            lines.append("| KL to retrained, forget set | "
                         + " | ".join(f"{audit[m]['kl_to_retrained']['forget']:.3g}"
                                      for m in ("original", "unlearned")) + " | 0 |")
        lines.append("")
    return "\n".join(lines)


def report_json(bench: Workbench) -> str:
    return json.dumps(build_report(bench), indent=2)


def report_markdown(bench: Workbench) -> str:
    return to_markdown(build_report(bench))


def model_bytes(bench: Workbench) -> bytes:
    """The current model as an lcodec checkpoint (loadable with ``lcodec_models.load_checkpoint``)."""
    metadata = dict(bench.metadata)
    metadata["lineage"] = {
        "base_model_hash": bench.base_hash,
        "model_hash": bench.current_hash,
        "removals": [{"description": r.request.description, "identity": r.request.identity,
                      "forget_indices": list(r.request.forget_indices),
                      "settings": r.config.to_dict(), "sigma": r.result.sigma,
                      "guarantee": r.result.guarantee}
                     for r in bench.history],
    }
    metadata = json_ready(metadata)
    with tempfile.TemporaryDirectory() as folder:
        path = Checkpoint(bench.current, metadata).save(Path(folder) / "model.pt")
        return path.read_bytes()
