"""Audit: a removal's numbers beside a model retrained from scratch, the noise, and downloads."""
import pandas as pd
import streamlit as st

from lcodec_app import charts, report, state, work
from lcodec_app.jobs import Job
from lcodec_app.panels import guarantee_text, removal_chooser, verdict_banner
from lcodec_app.widgets import (MISSING, NO_GUARANTEE, busy, explain, job_progress, number, pct,
                                request_label, require_removal, show_job_error)

bench = st.session_state.workbench

st.title("Audit")
st.markdown("The gold standard for forgetting is to **retrain from scratch** without the "
            "removed photos. Here a removal is compared with that retrained model, with its "
            "cost and its noise, and the record can be downloaded.")
if not require_removal(bench):
    st.stop()

position, removal = removal_chooser(bench, key="audit_removal")
result = removal.result
verdict_banner(removal)

st.subheader("Accuracy beside the retrained model")
if removal.retrained is None:
    st.button("Retrain from scratch for comparison", type="primary", icon=":material/model_training:",
              key="audit_retrain", disabled=busy(),
              on_click=lambda: state.start_job(Job(
                  "retrain", f"Retraining without {request_label(removal.request, bench.class_names)}",
                  work.retrain_work(bench, removal), payload={"removal": removal})))
    explain("Trains the same architecture with the same recipe on the retained photos only "
            "(as long as the model's first training).")
job_progress(("retrain",))
show_job_error("retrain")

models = {"original": removal.original, "unlearned": removal.after}
if removal.retrained is not None:
    models["retrained"] = removal.retrained
table = pd.DataFrame({name: {charts.METRIC_LABELS[m]: pct(v) for m, v in values.items()}
                      for name, values in models.items()})
st.dataframe(table, column_config={"_index": st.column_config.TextColumn("accuracy on")})
st.plotly_chart(charts.accuracy_bars(models), key="audit_bars", config={"displayModeBar": False})
explain("Grey: the model before any removal. Red: after unlearning. Blue: retrained from "
        "scratch without the removed photos. Good unlearning puts red close to blue on every "
        "group: near zero on a forgotten person, unchanged elsewhere.")

if removal.audit is not None:
    audit = removal.audit
    st.subheader("Could an attacker tell the photos were used?")
    names = [n for n in ("original", "unlearned", "retrained") if n in audit]
    st.dataframe(pd.DataFrame({n: {
        "loss attack AUC": number(audit[n]["mia_auc"], ".3f"),
        "MIA-efficacy (called non-member)": pct(audit[n]["mia_efficacy"]),
        "‖gradient‖ on retained data": number(audit[n]["residual_grad_norm"]),
        "‖gradient‖ of the forgotten photos": number(audit[n]["forget_grad_norm"]),
    } for n in names}), column_config={"_index": st.column_config.TextColumn("measure")})
    explain("A membership-inference attack guesses from the model's outputs whether a photo "
            "was in the training set. The loss attack's AUC is 0.5 when the removed photos look "
            "like photos the model never saw; MIA-efficacy is the share of removed photos a "
            "confidence-based attack calls 'not trained on'. Read each beside the retrained "
            "model (blue), the reference: for a whole person it misclassifies them, so its AUC "
            "is below 0.5.")
    st.subheader("Distance to the retrained model")
    distances = pd.DataFrame({
        f"{n}: {measure}": audit[n][key]
        for n in ("original", "unlearned") for measure, key in
        (("KL", "kl_to_retrained"), ("L1", "l1_to_retrained"))})
    st.dataframe(distances.map(number), column_config={"_index": st.column_config.TextColumn("data")})
    cols = st.columns(2)
    cols[0].metric("Weights: original vs retrained",
                   number(audit["original"]["weight_distance"], ".3f"))
    cols[1].metric("Weights: unlearned vs retrained",
                   number(audit["unlearned"]["weight_distance"], ".3f"))
    explain("How far each model's predicted probabilities are from the retrained model's, on "
            "the removed photos, the kept training photos and held-out photos (0 = identical). "
            "Unlearning should shrink the distance on the removed photos without growing it "
            "elsewhere. The relative weight distance is large for any two separately trained "
            "networks; it is meaningful for convex models such as logistic regression.")

st.subheader("Cost")
cols = st.columns(4)
unlearn_s = result.timings.get("unlearn_s", 0.0)
cols[0].metric("Unlearning time", f"{unlearn_s:.1f} s")
cols[1].metric("Retraining time", f"{removal.retrain_s:.1f} s" if removal.retrain_s else MISSING,
               help="Wall time of retraining from scratch on this machine "
                    f"('{MISSING}' until the model is retrained above).")
cols[2].metric("Speed-up", f"{removal.retrain_s / max(unlearn_s, 1e-9):.1f}x"
               if removal.retrain_s else MISSING, help="Retraining time over unlearning time "
               f"('{MISSING}' until the model is retrained above).")
cols[3].metric("Parameters updated", f"{result.parameters_updated:,}",
               f"{result.parameter_share:.2%} of the model", delta_color="off", delta_arrow="off")

st.subheader("Noise and guarantee")
epsilon, delta = bench.privacy_spent()
st.markdown(f"**This removal**: {guarantee_text(result)}.")
cols = st.columns(3)
cols[0].metric("sigma of this removal", f"{result.sigma:.3g}",
               help="Standard deviation of the Gaussian noise added to the updated weights.")
cols[1].metric("epsilon, delta of this removal",
               f"{removal.config.epsilon:g}, {removal.config.delta:.0e}" if removal.certified
               else NO_GUARANTEE, help="Only a certified removal has an (epsilon, delta); see "
                                       "the guarantee above.")
cols[2].metric("Spent by the session (all removals)",
               NO_GUARANTEE if epsilon is None else f"{epsilon:g}, {delta:.0e}")
explain("A removal is (epsilon, delta)-forgetting in the sense of Sekhari et al. (2021) only "
        "when it is certified: one full Newton step on a strongly convex model with noise on "
        "every weight. Noise anywhere else is a heuristic: it blurs, it promises nothing. Totals "
        "add up over certified removals (basic composition); one removal that is not certified "
        "leaves the session without a guarantee. Without a guarantee, the numbers above are the "
        "evidence.")

st.subheader("Model fingerprints")
st.markdown(f"- shared base model: `{bench.base_hash[:16]}` (never edited)\n"
            f"- before this removal: `{removal.hash_before[:16]}`\n"
            f"- after this removal: `{removal.hash_after[:16]}`")

st.subheader("Downloads")
cols = st.columns(3)
name = f"{bench.key.dataset}-{bench.key.model}-{bench.current_hash[:8]}"
cols[0].download_button("Unlearned model (.pt)", lambda: report.model_bytes(bench),
                        file_name=f"{name}.pt", mime="application/octet-stream",
                        icon=":material/download:", on_click="ignore", key="audit_dl_model")
cols[1].download_button("Report (JSON)", lambda: report.report_json(bench),
                        file_name=f"{name}-report.json", mime="application/json",
                        icon=":material/data_object:", on_click="ignore", key="audit_dl_json")
cols[2].download_button("Report (Markdown)", lambda: report.report_markdown(bench),
                        file_name=f"{name}-report.md", mime="text/markdown",
                        icon=":material/description:", on_click="ignore", key="audit_dl_md")
explain("The model loads with `lcodec_models.load_checkpoint` and carries its lineage (what was "
        "removed, with which settings). The reports list every removal of this session.")
