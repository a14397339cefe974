"""The audit as a Markdown report with plotly charts (HTML, and PNG where a browser is found).

Input: the JSON report of ``unlearn --compare retrain`` (:meth:`lcodec_core.record.RemovalRecord.to_json` after
:func:`lcodec_core.removal.compare_with_retraining`),
which holds ``audit.original``, ``audit.unlearned`` and ``audit.retrained``. Every number
is written beside the retrained model's. plotly is imported only when charts are drawn, so
the engine stays free of UI libraries at import time.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

MODELS = ("original", "unlearned", "retrained")
COLOURS = {"original": "#9e9e9e", "unlearned": "#d62728", "retrained": "#1f77b4"}
ACCURACIES = {"retain_accuracy": "retained training images", "forget_accuracy": "forget set",
              "test_accuracy": "held-out images (others)",
              "forget_test_accuracy": "held-out images of the forgotten identity"}
MEMBERSHIP = {"mia_auc": "loss attack AUC (forget vs held-out)",
              "mia_efficacy": "MIA-efficacy (share of forget set called non-member)"}
GRADIENTS = {"residual_grad_norm": "‖grad F_r(w)‖ on retained data",
             "forget_grad_norm": "‖grad‖ of the forget set's loss"}
SPLITS = ("forget", "retain", "test")


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _gap(value, reference) -> str:
    if value is None or reference is None or not all(math.isfinite(v) for v in (value, reference)):
        return "n/a"
    return f"{value - reference:+.3f}"


def _table(audit: dict, rows: dict[str, str]) -> list[str]:
    """Markdown rows: label, one column per model, and unlearned - retrained."""
    lines = ["| | original | unlearned | retrained | unlearned − retrained |",
             "|---|---:|---:|---:|---:|"]
    for key, label in rows.items():
        values = [audit.get(m, {}).get(key) for m in MODELS]
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in values)
                     + f" | {_gap(values[1], values[2])} |")
    return lines


def _attack_section(report: dict) -> list[str]:
    """The attacks that read what accuracy hides, one column per model (docs/ALGORITHM.md)."""
    attacks = report.get("attacks")
    if not attacks:
        return []
    columns = [c for c in ("before", "unlearned", "retrained") if attacks.get(c)]
    lines = ["## Attacks: hidden or removed", "",
             "Read against the retrained model, never against a fixed number. The verdict is "
             "\"forgotten\" only when none of them tells the unlearned model from retraining.", "",
             "| attack | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    first = attacks[columns[0]]
    if first.get("kind") == "photos":
        lines.append("| loss-attack AUC (forgotten vs report held-out photos) | "
                     + " | ".join(_fmt(attacks[c].get("loss_auc")) for c in columns) + " |")
        return lines + [""]
    rows = {"margin_auc": "margin ranking AUC (their photos vs everyone else's)",
            "offset_constant": "constant on their logit that brings every photo back",
            "offset_flipped": f"other photos that constant calls them (of {first.get('offset_others')})"}
    for key, label in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(attacks[c].get(key)) for c in columns) + " |")
    steps = sorted({int(s) for c in columns for s in (attacks[c].get("relearned") or {})})
    for step in steps:
        values = [(attacks[c].get("relearned") or {}) for c in columns]
        lines.append(f"| share back after {step} relearning steps | "
                     + " | ".join(_fmt(v.get(step, v.get(str(step)))) for v in values) + " |")
    protocol = attacks.get("relearn_protocol") or {}
    if protocol:
        lines += ["", f"Relearning: {protocol.get('optimizer')} lr {protocol.get('lr')}, batch "
                      f"{protocol.get('batch_size')}, on {protocol.get('person_photos')} mixed with "
                      f"{protocol.get('retained_photos')} retained photos; "
                      f"{protocol.get('mode')}."]
    return lines + [""]


def _distance_table(audit: dict) -> list[str]:
    lines = ["| split | KL original | KL unlearned | L1 original | L1 unlearned |",
             "|---|---:|---:|---:|---:|"]
    for split in SPLITS:
        values = [audit[m][measure][split] for measure in ("kl_to_retrained", "l1_to_retrained")
                  for m in ("original", "unlearned")]
        lines.append(f"| {split} | " + " | ".join(_fmt(v) for v in values) + " |")
    lines.append(f"| weights (relative distance) | | | {_fmt(audit['original']['weight_distance'])} "
                 f"| {_fmt(audit['unlearned']['weight_distance'])} |")
    return lines


def _identity_changes(audit: dict, top: int = 5) -> list[str]:
    """The identities whose held-out accuracy differs most between unlearned and retrained."""
    unlearned = audit["unlearned"]["per_identity_test_accuracy"]
    retrained = audit["retrained"]["per_identity_test_accuracy"]
    original = audit["original"]["per_identity_test_accuracy"]
    gaps = sorted((k for k in unlearned if k in retrained and unlearned[k] != retrained[k]),
                  key=lambda k: -abs(unlearned[k] - retrained[k]))
    if not gaps:
        return ["Every identity's held-out accuracy equals the retrained model's."]
    lines = ["| identity | original | unlearned | retrained |", "|---:|---:|---:|---:|"]
    for k in gaps[:top]:
        lines.append(f"| {k} | {_fmt(original.get(k))} | {_fmt(unlearned[k])} | {_fmt(retrained[k])} |")
    return lines


def _charts(audit: dict, report: dict) -> dict:
    """name -> plotly Figure."""
    import plotly.graph_objects as go

    def grouped(keys: dict[str, str], title: str, yaxis: str):
        figure = go.Figure([go.Bar(name=m, x=list(keys.values()), y=[audit[m].get(k) for k in keys],
                                   marker_color=COLOURS[m]) for m in MODELS])
        figure.update_layout(title=title, barmode="group", yaxis_title=yaxis, width=900, height=500,
                             template="plotly_white", legend_title_text="model")
        return figure

    figures = {
        "accuracy": grouped(ACCURACIES, "Accuracy beside the retrained model", "accuracy"),
        "membership": grouped(MEMBERSHIP, "Membership inference of the forget set", "value"),
    }
    distance = go.Figure([go.Bar(name=f"{m} → retrained", x=list(SPLITS),
                                 y=[audit[m]["kl_to_retrained"][s] for s in SPLITS],
                                 marker_color=COLOURS[m]) for m in ("original", "unlearned")])
    distance.update_layout(title="Output KL divergence from the retrained model (lower is closer)",
                           barmode="group", yaxis_title="mean KL(p_retrained || p_model)",
                           width=900, height=500, template="plotly_white")
    figures["distance"] = distance
    timings = report["timings"]
    cost = go.Figure(go.Bar(x=["unlearn", "retrain"], y=[timings["unlearn_s"], timings["retrain_s"]],
                            marker_color=[COLOURS["unlearned"], COLOURS["retrained"]]))
    cost.update_layout(title="Wall time (s)", yaxis_title="seconds", width=900, height=500,
                       template="plotly_white")
    figures["cost"] = cost
    return figures


def _save_figures(figures: dict, out_dir: Path) -> tuple[dict[str, str], str | None]:
    """Write every figure as HTML and PNG. Returns (name -> image link, note if PNGs failed)."""
    links, note = {}, None
    for name, figure in figures.items():
        figure.write_html(out_dir / f"{name}.html", include_plotlyjs="cdn")
        links[name] = f"{name}.html"
    try:
        import plotly.io as pio
        pio.write_images(list(figures.values()), [out_dir / f"{name}.png" for name in figures])
        links = {name: f"{name}.png" for name in figures}
    except Exception as error:  # kaleido without a browser, or no kaleido at all
        first_line = str(error).splitlines()[0] if str(error) else ""
        note = f"PNG charts were not written ({type(error).__name__}: {first_line}); the HTML charts were."
        log.warning(note)
    return links, note


def write_audit_report(report: dict, out_dir: str | Path, *, charts: bool = True) -> Path:
    """Write ``audit.md`` (and the charts beside it) into ``out_dir``; return the Markdown path.

    Raises ValueError when ``report`` has no retrained comparison (``audit.retrained``)."""
    audit = report.get("audit")
    if not isinstance(audit, dict) or not all(m in audit for m in MODELS):
        raise ValueError("the report has no audit against a retrained model: run "
                         "`python -m lcodec_core unlearn ... --compare retrain --json OUT` first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    links, note = _save_figures(_charts(audit, report), out_dir) if charts else ({}, None)
    timings, settings = report["timings"], report["settings"]
    epsilon = report.get("epsilon")
    lines = [
        f"# Audit: {report['request']['description']} removed from {report['model']} "
        f"on {report['dataset']}",
        "",
        f"Written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. Method "
        f"`{settings['method']}`, {len(report['selected_slices'])} slice(s), "
        f"{report['parameters_updated']:,} parameters updated "
        f"({100 * report['parameter_share']:.2f}% of the model), sigma {_fmt(report['sigma'])}, "
        + ("no noise: no formal (epsilon, delta) guarantee." if epsilon is None else
           f"(epsilon, delta) = ({epsilon:g}, {report['delta']:g})."),
        "",
        "The reference is the same architecture retrained from scratch on the retained data "
        "with the same recipe: a good removal puts the unlearned column next to the retrained "
        "one, not at zero.",
        "",
        "## Accuracy", "", *_table(audit, ACCURACIES), "",
        "## Membership inference", "",
        "The loss attack reads a lower per-sample loss as membership and is scored by ROC AUC "
        "on the forget set against half of the held-out images. MIA-efficacy is the confidence-SVC attack of "
        "Sparse/SalUn: the share of the forget set it calls non-members. For a whole identity "
        "the retrained model misclassifies the forget set, so its AUC sits well below 0.5; "
        "the target is the retrained value.", "",
        *_table(audit, MEMBERSHIP), "",
        *_attack_section(report), 
        "## Distance to the retrained model", "", *_distance_table(audit), "",
        "## Gradient norms", "", *_table(audit, GRADIENTS), "",
        "## Cost", "",
        "| unlearn (s) | retrain (s) | speed-up | peak memory (MB) |", "|---:|---:|---:|---:|",
        f"| {_fmt(timings['unlearn_s'], 2)} | {_fmt(timings.get('retrain_s'), 2)} | "
        f"{_fmt(report.get('speedup_over_retrain'), 1)} | {_fmt(report.get('peak_memory_mb'), 0)} |",
        "",
        "## Held-out accuracy per identity: the largest gaps to the retrained model", "",
        *_identity_changes(audit), "",
    ]
    if links:
        lines += ["## Charts", ""]
        lines += [f"![{name}]({link}) ([interactive]({name}.html))" if link.endswith(".png")
                  else f"[{name} (interactive)]({link})" for name, link in links.items()]
        lines.append("")
    if note:
        lines += [f"_{note}_", ""]
    path = out_dir / "audit.md"
    temporary = path.with_suffix(".md.tmp")
    temporary.write_text("\n".join(lines), encoding="utf-8")
    temporary.replace(path)
    return path
