"""How it works: the method walked through on this session's latest removal, in seven steps."""
import pandas as pd
import streamlit as st

from lcodec_app import teaching, teaching_outcome
from lcodec_app.panels import model_before
from lcodec_app.widgets import explain

bench = st.session_state.workbench
bundle = bench.bundle
removal = bench.history[-1] if bench.history else None
chart = {"config": {"displayModeBar": False}}

st.title("How it works")
st.markdown("Removing a person takes four moves: **jiggle** their photos and watch the model, "
            "**measure** which parts of the model the loss depends on (L-CODEC), **pick** the "
            "few that carry them (L-FOCI), and **step** only those, just far enough. Below, each "
            "move is shown on this session's latest removal.")
if removal is None:
    st.info("Nothing has been removed yet in this session, so the parts below that need a "
            "removal are left out. Remove someone on **Start here** and come back to see your "
            "own removal explained.", icon=":material/arrow_back:")
    st.page_link("views/start.py", label="Go to Start here", icon=":material/school:")
    before_model, position = bench.current, None
else:
    position = len(bench.history) - 1
    before_model = model_before(bench, position)
    count = len(removal.request.forget_indices)
    st.markdown(f"Explaining the latest removal: **{teaching.who(removal)}** ({count} training "
                f"photo{'s' if count != 1 else ''}, method `{removal.config.method}`).")
result = removal.result if removal else None
selected = sorted(result.selected_slices, key=lambda s: s.order) if result else []

# 1 ------------------------------------------------------------------------------------------
st.header("1. Jiggle the photos and watch", divider="gray")
if removal is not None:
    image, label = removal.request.forget.images[0], int(removal.request.forget.targets[0])
    std, whose = removal.config.perturbation_std, "one of the forgotten photos"
    watch = [teaching.slice_label(s) for s in selected[:4]]
else:
    index = bundle.train.indices_of(st.session_state.identity or 0)[0]
    image, label = bundle.train.images[index], int(bundle.train.targets[index])
    std, whose = 0.1, f"a training photo of {teaching.person(label)}"
    head = teaching.head_picks(before_model, [], label)[0]
    watch = [f"{head}[{label}]"] if head else []
copies = teaching.jiggled_copies(image, count=3, std=std)
st.image(list(bundle.to_pixels(copies)), width=96,
         caption=["original"] + [f"jiggled copy {i}" for i in (1, 2, 3)])
st.markdown(f"This is {whose} and three **jiggled copies**: each pixel gets a little random "
            f"noise (x + {std:g} × noise, on the normalised image). The removal makes "
            f"{removal.config.num_perturbations if removal else 100} such copies of every photo "
            "to forget. For each copy it **records two things**: the model's **loss** (how wrong "
            "it is about who this is; small = confident and right) and the **activation of "
            "every slice** (the average output of each filter, the output of each neuron).")
record = teaching.record_probe(before_model, copies, label)
st.dataframe(pd.DataFrame(teaching.probe_rows(record, watch)), hide_index=True)
explain(f"The model sees {len(record['slices'])} slices; shown here: "
        + (", ".join(watch) if watch else "none") + ". Across hundreds of copies, some "
        "activations rise and fall with the loss: those slices carry the photos.")

# 2 ------------------------------------------------------------------------------------------
st.header("2. L-CODEC: does Z add anything once X is known?", divider="gray")
dependent, independent = teaching.codec_example()
st.markdown("L-CODEC measures **T(Y, Z | X)**: how much Z tells about Y *beyond what X already "
            "tells*. **0** means Z adds nothing once X is known; **1** means Y is a function of "
            "Z and X. Here, on 200 made-up points of its own:")
cols = st.columns(2)
for col, case in zip(cols, (dependent, independent)):
    col.metric(f"{case.title}: T(Y, Z | X)", f"{case.conditional:.2f}",
               help=f"{case.story}. Without X, T(Y, Z) = {case.unconditional:.2f}.")
    col.caption(case.story + ".")
st.plotly_chart(teaching.codec_figure((dependent, independent)), key="how_codec", **chart)
explain("Top: Y against Z. In both, Z looks related to Y. Bottom: what is left of Y once X is "
        "taken out. On the left a clear line remains (Z adds something); on the right only a "
        "cloud (Z only seemed related because both follow X). In the removal, Y is the loss on "
        "the jiggled copies, Z one slice's activation and X the slices already picked.")

# 3 ------------------------------------------------------------------------------------------
st.header("3. L-FOCI picks the slices, one at a time", divider="gray")
st.markdown("L-FOCI is greedy: it first picks the slice with the highest T(loss, slice), then "
            "the one with the highest T(loss, slice | slices picked so far), and so on. It stops "
            "when no slice adds anything (score 0 or less) or when the cap is reached.")
if removal is None:
    st.caption("Your removal's picks will appear here.")
elif selected:
    st.markdown(teaching.selection_text(selected, result.diagnostics.get("selection"),
                                        removal.config.max_slices))
    st.plotly_chart(teaching.selection_figure(selected), key="how_selection", **chart)
    step_rule = (result.diagnostics.get("step") or {}).get("rule")
    explain("Each bar is one picked slice, in the order it was picked; its height is how much "
            "it told about the loss when it was added (later picks add less). "
            + ("With the default step they show what carries the person; what moves is the "
               "model's last layer (section 5)." if step_rule == "retained_optimum" else
               "Only these slices' weights change."))
    st.page_link("views/slices.py", label="See these slices in the model", icon=":material/grid_on:")
else:
    st.markdown(teaching.selection_text(selected, result.diagnostics.get("selection"),
                                        removal.config.max_slices))

# 4 ------------------------------------------------------------------------------------------
head_name, rows, picks = teaching.head_picks(before_model, selected,
                                             removal.request.identity if removal else None)
st.header(f"4. Why {head_name or 'fc'}[k] is person k's output unit", divider="gray")
st.markdown(teaching.head_general(head_name, rows))
if removal is not None:
    identity = removal.request.identity
    alikes = (teaching.look_alikes(before_model, removal.request.forget.images, identity)
              if identity is not None and any(not p.own for p in picks) else [])
    text = teaching.head_text(head_name, picks, identity, alikes)
    if text:
        st.markdown(text)

# 5 ------------------------------------------------------------------------------------------
step = result.diagnostics.get("step") if result else None
if step is None or step.get("rule") == "retained_optimum":
    st.header("5. The step: removed, not hidden", divider="gray")
    st.markdown(teaching_outcome.OPTIMUM_GENERAL)
else:
    st.header("5. The step, and how much the curvature shaped it", divider="gray")
    st.markdown("The picked slices move by d = (H + mu I)⁻¹ g: **g** is the forgotten photos' "
                "pull (the gradient of their loss), **H** the curvature (how the loss bends "
                "around the trained weights) and **mu** the damping, which sets the step size. "
                "This rule ('target') picks the smallest step that meets a target (for a "
                "person: the model no longer names them), while a guard keeps everyone else's "
                "accuracy. That hides the person rather than removing them: the verdict's "
                "attacks show it.")
if step and step.get("rule") == "retained_optimum":
    st.markdown("\n".join(teaching_outcome.optimum_lines(step, removal.attacks)))
elif step:
    st.markdown("\n".join(teaching_outcome.step_lines(step)))
    figure = teaching_outcome.curvature_figure(step.get("curvature_effect"))
    if figure is not None:
        st.plotly_chart(figure, key="how_curvature", **chart)
        explain("Grey: the step the forgotten photos' gradient alone would give at this step "
                "size. Red: the step taken. If they lie on top of each other, the curvature "
                "changed little. The null control repeats the update with nothing removed: "
                "0 means the change comes from the removal alone.")
elif removal is not None:
    st.caption("This removal used no targeted step (a baseline method, or nothing was selected).")

# 6 ------------------------------------------------------------------------------------------
st.header("6. Noise and (epsilon, delta)", divider="gray")
st.markdown("Noise can be added to the changed weights. **(epsilon, delta)-forgetting** means: "
            "whatever anyone looks at, the model after the removal is almost indistinguishable "
            "from one that never saw the photos; epsilon says how close (smaller = closer) and "
            "delta is the small chance that the promise fails. It **holds only under the "
            "bound's assumptions**: one full Newton step on a strongly convex model (softmax "
            "regression), with noise on every weight. A network is not convex, so noise on it "
            "blurs but promises nothing. Every removal carries one of these labels:")
st.dataframe(pd.DataFrame(teaching_outcome.guarantee_rows(result.guarantee if result else None)),
             hide_index=True)
if result is not None:
    st.markdown("\n".join(teaching_outcome.guarantee_lines(result, removal.config)))

# 7 ------------------------------------------------------------------------------------------
st.header("7. How to read the audit", divider="gray")
st.markdown("The verdict is read from the numbers, never assumed. Four accuracies tell the story:")
if removal is not None:
    verdict = removal.verdict
    show = (st.success if verdict.ok else st.error if verdict.status == "damaged" else st.warning)
    show(f"Verdict for this removal: {verdict.headline}",
         icon=":material/check_circle:" if verdict.ok else ":material/warning:")
st.dataframe(pd.DataFrame(teaching_outcome.accuracy_rows(removal.before if removal else None,
                                                 removal.after if removal else None)),
             hide_index=True)
st.markdown(teaching_outcome.MIA_GENERAL)
if removal is not None:
    st.markdown(teaching_outcome.mia_text(removal.audit))
st.page_link("views/audit.py", label="Open the Audit page: compare with retraining from scratch",
             icon=":material/fact_check:")
