"""The text a person reads: the summary of a removal (`lcodec unlearn`, `lcodec audit`) and the
ledger table (`lcodec ledger`)."""
from __future__ import annotations


def _cell(value) -> str:
    """A number in an 11-wide column; "n/a" for unknown (null in the record, e.g. the held-out
    accuracy of a request that names photos rather than a person)."""
    return f"{'n/a':>11}" if value is None else f"{value:>11.3f}"


def print_summary(report: dict) -> None:
    """Print :meth:`lcodec_core.record.RemovalRecord.to_json` as the command line shows it:
    accuracies (original, unlearned, retrained when compared), timings, the audit, the
    selected slices, the step, the guarantee and the verdict with its advice."""
    columns = ["original", "unlearned"] + (["retrained"] if report.get("retrained") else [])
    # the verdict line at the end says whether it was forgotten; this line only names the request
    print(f"Request: forget {report['request']['description']} from {report['model']} on {report['dataset']} "
          f"with {report['settings']['method']}")
    print(f"{'accuracy':<22}" + "".join(f"{c:>11}" for c in columns))
    for key in ("retain_accuracy", "forget_accuracy", "test_accuracy", "forget_test_accuracy"):
        print(f"{key:<22}" + "".join(_cell(report[c][key]) for c in columns))
    t = report["timings"]
    line = (f"unlearn {t['unlearn_s']:.2f} s (probe {t['probe_s']:.2f}, select {t['select_s']:.2f}, "
            f"newton {t['newton_s']:.2f})")
    if t.get("retrain_s"):
        line += f"; retrain {t['retrain_s']:.2f} s; speed-up {report['speedup_over_retrain']:.1f}x"
    print(line)
    if report.get("audit"):
        audit = report["audit"]
        for key in ("mia_auc", "mia_efficacy"):
            print(f"{key:<22}" + "".join(_cell(audit[c][key]) for c in columns))
        kl = audit["unlearned"]["kl_to_retrained"]
        print("KL(retrained || unlearned): " + ", ".join(f"{s} {v:.3g}" for s, v in kl.items())
              + f"; relative weight distance {audit['unlearned']['weight_distance']:.3g}")
    slices = ", ".join(f"{s['module']}[{s['index']}]" for s in report["selected_slices"][:12])
    print(f"{len(report['selected_slices'])} slice(s) selected: {slices}; {report['parameters_updated']} "
          f"parameters updated ({100 * report['parameter_share']:.2f}% of the model); sigma {report['sigma']:.3g}")
    step = report["diagnostics"].get("step")
    if step and step.get("rule") == "retained_optimum":
        solve = step["solve"]
        print(f"step: the head ({step['head']}, {step['head_parameters']} parameters) moved to the "
              f"retained optimum: |grad F_r| {solve['gradient_norm_start']:.2g} -> "
              f"{solve['gradient_norm']:.2g} in {solve['newton_steps']} Newton steps "
              f"({'converged' if solve['converged'] else 'NOT converged'}); step norm "
              f"{step['step_norm']:.3g}; null control |d_0|/|d| = {step['null_control_ratio']:.3g}")
    elif step:
        effect = step["curvature_effect"]
        print(f"step: rule {step['rule']} ({'target met' if step['target_met'] else 'target NOT met'}"
              f"{', limited by the guard' if step['guard_limited'] else ''}), damping {step['damping']:.3g}; "
              f"null control |d_0|/|d| = {step['null_control']['ratio']:.3g}; curvature turned the "
              f"step by {effect['angle_deg']:.1f} deg and scaled it x{effect['norm_ratio']:.2f}")
    print_attacks(report.get("attacks"))
    print(f"guarantee: {report['guarantee_text']}"
          + (f" ({'; '.join(report['guarantee_reasons'])})" if report["guarantee"] == "heuristic" else ""))
    stationarity = report.get("stationarity") or {}
    if stationarity.get("warning"):
        print(f"warning: {stationarity['warning']}")
    verdict = report["verdict"]
    print(f"verdict: {verdict['headline']}")
    for advice in verdict["advice"]:
        print(f"  - {advice}")


def print_attacks(attacks: dict | None) -> None:
    """The attacks beside each other: before, unlearned and (when compared) retrained."""
    if not attacks:
        return
    columns = [c for c in ("before", "unlearned", "retrained") if attacks.get(c)]
    if attacks[columns[0]].get("kind") == "photos":
        print(f"{'attack':<22}" + "".join(f"{c:>11}" for c in columns))
        print(f"{'loss AUC (report)':<22}" + "".join(_cell(attacks[c]["loss_auc"]) for c in columns))
        return
    print(f"{'attack':<22}" + "".join(f"{c:>11}" for c in columns))
    print(f"{'margin AUC':<22}" + "".join(_cell(attacks[c]["margin_auc"]) for c in columns))
    print(f"{'offset constant':<22}" + "".join(_cell(attacks[c]["offset_constant"]) for c in columns))
    print(f"{'offset flips others':<22}" + "".join(f"{attacks[c]['offset_flipped']:>11}" for c in columns))
    steps = sorted({int(s) for c in columns for s in (attacks[c].get("relearned") or {})})
    for s in steps:
        print(f"{f'relearned {s} steps':<22}" + "".join(
            _cell((attacks[c].get("relearned") or {}).get(s, (attacks[c].get("relearned") or {}).get(str(s))))
            for c in columns))


def print_ledger(ledger, rows: list, lineages: dict, files: dict, model_hash: str | None, *,
                 filtered: bool) -> None:
    """Print ledger rows as a table, oldest first, then each lineage's cumulative privacy cost
    (and ``model_hash``'s, when given); ``files``: row id -> saved-file status (--verify)."""
    from .ledger import COMPOSITION
    if not rows:
        print(f"No removals recorded in {ledger.path}"
              + (" for this filter" if filtered else ""))
        return
    print(f"{len(rows)} removal(s) in {ledger.path}, oldest first:")
    header = (f"{'id':>4}  {'time (UTC)':<19}  {'lineage':<10}  {'before':<10}  {'after':<10}  "
              f"{'model':<22}  {'removed':<28}  {'method':<11}  {'epsilon':>7}  {'delta':>7}  saved to")
    print(header)
    for r in rows:
        what = (f"identity {r.identity} ({len(r.forget_indices)} images)" if r.identity is not None
                else f"{len(r.forget_indices)} image(s) {r.forget_indices[:3]}")
        saved = r.model_path or "-"
        if r.id in files:
            saved += f" ({files[r.id]})"
        print(f"{r.id:>4}  {r.time[:19].replace('T', ' '):<19}  {r.lineage[:10]:<10}  "
              f"{r.model_before[:10]:<10}  {r.model_after[:10]:<10}  "
              f"{(r.dataset or '?') + '/' + (r.model_name or '?'):<22.22}  {what:<28.28}  "
              f"{r.method or '?':<11}  {'none' if not r.noised else f'{r.epsilon:g}':>7}  "
              f"{'-' if not r.noised else f'{r.delta:.0e}':>7}  {saved}")
    print(f"\nCumulative privacy cost per lineage ({COMPOSITION}; a removal without noise "
          f"means no guarantee):")
    for lineage, cost in lineages.items():
        print(f"  {lineage[:16]}  {cost.describe()}")
    if model_hash:
        print(f"Model {model_hash[:16]}: {ledger.model_cost(model_hash).describe()}")
