"""``unlearn``: Algorithm 1 of the paper, done correctly, and its baselines behind one call.

Phases (each timed and reported through ``on_progress``):
1. probe   perturb every forget image m times; record each slice's activation and the loss;
2. select  L-FOCI picks the slices carrying the forget set (or random / top1 / all);
3. newton  the update of the block P: by default (``step_rule="optimum"``, engine v3) the whole
           linear head goes to the optimum of the retained objective with the features fixed
           (:mod:`.optimum_step`); ``step_rule="target"`` (engine v2) takes one step along the
           forget set's gradient with Fisher curvature, its damping chosen per request
           (:mod:`.forget_step`, :mod:`.step_rule`); ``step_rule="newton"`` damped Newton
           iterations on the retained objective (:mod:`.newton`);
4. noise   N(0, sigma^2) on P (or all parameters) for (epsilon, delta)-forgetting, refused
           when it would leave the model near chance; labelled by :mod:`.guarantee`.
Parameters outside P are bit-identical to the input model's. The input model is never
modified; a new model is returned, and nothing non-finite ever is.
Buffers (BatchNorm running statistics) are never updated: probing, curvature and every
evaluation of a step run on private eval-mode copies, so BatchNorm normalises with its frozen
running statistics and never accumulates new ones. ``diagnostics["buffers_unchanged"]`` checks
it on the returned model (False only for the finetune and negrad baselines, which train).
"""
from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from lcodec_models.training import accuracy

from .baselines import finetune, negrad, retrain
from .block import BlockObjective
from .config import SELECTION_METHODS, UnlearnConfig
from .guarantee import guarantee_for
from ..data import ImageDataset
from ..parallel.shard import ONE_PROCESS, RetainedShard
from ..progress import ProgressFn, emit
from .forget_step import forget_gradient, targeted_step
from .memory import PeakMemory
from .newton import block_newton
from .optimum_step import head_name, retained_optimum_head
from .noise import add_noise, noise_sigma
from .probing import probe
from .result import SelectedSlice, UnlearnResult
from .selection import removed_class_units, select_slices
from .slices import count_parameters, enumerate_slices, slice_parameter_rows

log = logging.getLogger(__name__)


def _check_inputs(model: nn.Module, forget: ImageDataset, retain: ImageDataset) -> None:
    """Refuse input that cannot give a meaningful removal, before any work (ValueError)."""
    if len(forget) == 0:
        raise ValueError("the forget set is empty: give at least one training image to remove")
    if len(retain) == 0:
        raise ValueError("the retained set is empty: the forget set cannot be the whole training "
                         "set (to forget everything, train a new model instead)")
    if forget.images.shape[1:] != retain.images.shape[1:]:
        raise ValueError(f"forget and retained images must have the same shape; got "
                         f"{tuple(forget.images.shape[1:])} and {tuple(retain.images.shape[1:])}")
    for label, data in (("forget", forget), ("retained", retain)):
        if not torch.isfinite(data.images).all():
            raise ValueError(f"the {label} images hold NaN or infinite pixels; load them with "
                             f"lcodec_core.load_dataset, which normalises finite pixels")
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"the model has non-finite values in {name!r}; nothing was changed. "
                             f"Reload the checkpoint or retrain it (lcodec prepare)")


def _subsample(retain: ImageDataset, size: int | None, seed: int) -> ImageDataset:
    if size is None or size >= len(retain):
        return retain
    order = torch.randperm(len(retain), generator=torch.Generator().manual_seed(seed))[:size]
    return retain.subset(sorted(order.tolist()))


class HarmfulNoiseError(ValueError):
    """The requested noise would leave the model near chance; nothing was changed."""


def unlearn(model: nn.Module, forget: ImageDataset, retain: ImageDataset,
            config: UnlearnConfig = UnlearnConfig(), on_progress: ProgressFn | None = None, *,
            weight_decay: float | None = None, recipe=None,
            held_out: ImageDataset | None = None,
            shard: RetainedShard = ONE_PROCESS) -> UnlearnResult:
    """Remove ``forget`` from ``model`` (trained on forget + retain).

    Parameters
    ----------
    model : the trained classifier; not modified.
    forget : the forget set U (k images). retain : the retained data (n - k images).
    config : settings (method, probing, selection, curvature, step rule, noise, seed).
    on_progress : called with {"phase", "fraction", "message"} during the run.
    weight_decay : lam of the training objective. ``config.weight_decay``, when set, takes
        precedence (an explicit user setting); without either, the recipe's value is used.
    recipe : a :class:`lcodec_models.Recipe`, required by method "retrain".
    held_out : photos not used in training (e.g. the test split). The step rule reads the
        loss of held-out photos of the forgotten photos' classes as the level a never-seen
        photo has, and guards other classes' held-out accuracy. Optional.
    shard : this process's share of the retained rows when W processes run the removal
        together (:func:`lcodec_core.parallel.unlearn_distributed` sets it; every rank passes
        the same arguments). Default: one process, nothing communicated.

    Returns
    -------
    UnlearnResult with the new model, the selected slices, p and its share, sigma, the
    guarantee label, timings (probe_s, select_s, newton_s, noise_s, unlearn_s), peak memory
    and diagnostics (the step's rule, null control, curvature effect, stationarity).

    Raises
    ------
    ValueError on bad input; HarmfulNoiseError when the noise would leave retained accuracy
    near chance and ``config.allow_harmful_noise`` is False.
    """
    _check_inputs(model, forget, retain)
    if shard.distributed and config.method in ("retrain", "finetune", "negrad"):
        raise ValueError(f"method {config.method!r} is a baseline that runs in one process; "
                         f"several workers split the block removal's retained sums only")
    lam = config.objective_weight_decay(weight_decay, recipe)
    n, k = len(forget) + len(retain), len(forget)
    device = next(model.parameters()).device
    timings = {"probe_s": 0.0, "select_s": 0.0, "newton_s": 0.0, "noise_s": 0.0}
    start = time.perf_counter()
    with PeakMemory(device) as peak:
        if config.method in ("retrain", "finetune", "negrad"):
            new_model, selected, rows, diagnostics = _baseline(model, forget, retain, config, lam,
                                                               recipe, on_progress, timings)
            diagnostics["changed"] = True
        else:
            new_model, selected, rows, diagnostics = _block_newton_removal(
                model, forget, retain, held_out, config, lam, on_progress, timings, shard)
        changed = diagnostics["changed"]
        sigma = noise_sigma(epsilon=config.epsilon, delta=config.delta, n=n, k=k, weight_decay=lam,
                            hessian_lipschitz=config.hessian_lipschitz,
                            loss_lipschitz=config.loss_lipschitz) if changed else 0.0
        if sigma > 0:
            tick = time.perf_counter()
            emit(on_progress, "noise", 0.0, f"adding noise, sigma = {sigma:.3g}")
            params = {k_: v.detach() for k_, v in new_model.named_parameters()}
            noisy = add_noise(params, sigma, rows if config.noise_on == "block" else None, config.seed)
            noisy_model = _with_params(new_model, noisy)
            _refuse_harmful_noise(new_model, noisy_model, retain, sigma, config)
            new_model = noisy_model
            timings["noise_s"] = time.perf_counter() - tick
    timings["unlearn_s"] = time.perf_counter() - start
    for name, value in new_model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FloatingPointError(f"unlearning produced non-finite values in {name!r} "
                                     f"(sigma={sigma:.3g}); the original model is unchanged")
    total = sum(p.numel() for p in model.parameters())
    updated = count_parameters(model, rows) if rows is not None else total
    guarantee, reasons = guarantee_for(config, model, changed=changed, noise_added=sigma > 0)
    emit(on_progress, "done", 1.0, f"done in {timings['unlearn_s']:.2f} s")
    return UnlearnResult(
        model=new_model, config=config, selected_slices=selected, parameters_updated=updated,
        parameter_share=updated / total, sigma=sigma, timings=timings, peak_memory_mb=peak.mb,
        diagnostics={**diagnostics, "n": n, "k": k, "weight_decay": lam,
                     "buffers_unchanged": _buffers_unchanged(model, new_model)},
        guarantee=guarantee, guarantee_reasons=reasons)


def _buffers_unchanged(model: nn.Module, new_model: nn.Module) -> bool:
    """Whether every buffer of ``new_model`` (BatchNorm running mean, variance and batch
    count) equals the input model's bit for bit."""
    new = dict(new_model.named_buffers())
    return all(name in new and torch.equal(value, new[name])
               for name, value in model.named_buffers())


def _refuse_harmful_noise(clean: nn.Module, noisy: nn.Module, retain: ImageDataset, sigma: float,
                          config: UnlearnConfig) -> None:
    """HarmfulNoiseError when noise takes retained accuracy towards chance (it loses half
    of its margin over chance, 1/K for the model's K outputs), unless
    ``config.allow_harmful_noise``."""
    if config.allow_harmful_noise:
        return
    sample = _subsample(retain, 1000, config.seed)
    before = accuracy(clean, sample.images, sample.targets)
    after = accuracy(noisy, sample.images, sample.targets)
    with torch.no_grad():
        classes = clean(sample.images[:1].to(next(clean.parameters()).device)).shape[-1]
    chance = 1.0 / max(classes, 2)
    if after <= chance + 0.5 * (before - chance):      # half of its margin over chance is gone
        raise HarmfulNoiseError(
            f"the noise for epsilon={config.epsilon} (sigma = {sigma:.3g}) would leave retained "
            f"accuracy at {after:.1%} (it was {before:.1%}; chance is {chance:.1%}); nothing was "
            f"changed. Use a larger epsilon, no noise, or allow_harmful_noise=True "
            f"(--allow-harmful-noise) to keep the wrecked model on purpose")


def _with_params(model: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose parameters are ``params``."""
    new_model = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in new_model.named_parameters():
            param.copy_(params[name])
    new_model.eval()
    return new_model


def _baseline(model, forget, retain, config, lam, recipe, on_progress, timings):
    tick = time.perf_counter()
    emit(on_progress, "newton", 0.0, f"running baseline {config.method}")
    if config.method == "retrain":
        if recipe is None:
            raise ValueError("method 'retrain' needs the training recipe (recipe=)")
        new_model = retrain(retain, recipe)
    elif config.method == "finetune":
        new_model = finetune(model, retain, epochs=config.baseline_epochs, lr=config.baseline_lr,
                             weight_decay=lam, seed=config.seed)
    else:
        new_model = negrad(model, forget, epochs=config.baseline_epochs, lr=config.baseline_lr,
                           seed=config.seed)
    timings["newton_s"] = time.perf_counter() - tick
    return new_model, [], None, {"baseline": config.method}


def _block_newton_removal(model, forget, retain, held_out, config, lam, on_progress, timings,
                          shard=ONE_PROCESS):
    slices = enumerate_slices(model)
    if not slices:
        raise ValueError("the model has no Conv2d or Linear layer to update")
    method = "all" if config.method == "full-newton" else config.method
    assert method in SELECTION_METHODS
    diagnostics: dict = {}

    def probe_and_select():
        """Rank 0 alone probes (the forget set only) and selects; an error here reaches every
        rank through ``from_rank0`` instead of leaving the others waiting for the block."""
        tick = time.perf_counter()
        table = None
        if method != "all":
            emit(on_progress, "probe", 0.0,
                 f"probing {len(forget)} image(s) x {config.num_perturbations} perturbations")
            table = probe(model, forget.images, forget.targets,
                          num_perturbations=config.num_perturbations,
                          perturbation_std=config.perturbation_std, seed=config.seed,
                          batch_size=config.batch_size)
        probe_s, tick = time.perf_counter() - tick, time.perf_counter()
        emit(on_progress, "select", 0.0, f"selecting slices ({method})")
        if table is None:
            chosen = [SelectedSlice(s.module, s.index, float("nan"), i) for i, s in enumerate(slices)]
            info = {"candidates": len(slices), "stopped_because": "all slices"}
        else:
            chosen, info = select_slices(table, slices, method, max_slices=config.max_slices,
                                         seed=config.seed, pooling=config.probe_pooling)
            if config.class_units and method in ("lfoci", "top1"):
                chosen = _with_class_units(model, chosen, slices, forget, retain, info)
        return chosen, info, probe_s, time.perf_counter() - tick

    selected, diagnostics["selection"], timings["probe_s"], timings["select_s"] = \
        shard.from_rank0(probe_and_select, "selection")   # the same block on every rank, or the same error
    emit(on_progress, "select", 1.0, f"{len(selected)} slice(s) selected")
    if config.step_rule == "optimum":
        return _optimum_removal(model, forget, retain, held_out, config, lam, on_progress, timings,
                                shard, slices, selected, diagnostics)
    if not selected:
        diagnostics["newton"] = "skipped: no slice selected (no dependence between the loss and any activation)"
        diagnostics["changed"] = False
        return copy.deepcopy(model).eval(), selected, {}, diagnostics

    tick = time.perf_counter()
    by_ref = {(s.module, s.index): s for s in slices}
    rows = slice_parameter_rows(model, [by_ref[(s.module, s.index)] for s in selected])
    data = _subsample(retain, config.retain_subsample, config.seed)
    objective = BlockObjective(model, rows, data.images, data.targets, lam,
                               curvature_size=config.curvature_subsample, seed=config.seed,
                               shard=shard)
    if config.step_rule == "target":
        v_new, diagnostics["step"] = targeted_step(objective, forget, held_out, config,
                                                   n=len(forget) + len(retain), on_progress=on_progress)
    else:
        v_new, diagnostics["newton"] = _newton_iterations(objective, forget, retain, config, lam,
                                                          on_progress)
        diagnostics["newton"]["retain_rows"] = len(data)
    v_new = shard.broadcast_tensor(v_new, "block")   # every rank keeps rank 0's block
    new_model = _with_params(model, objective.full_state(v_new, model))
    timings["newton_s"] = time.perf_counter() - tick
    diagnostics["changed"] = bool((v_new != objective.v0).any())
    return new_model, selected, rows, diagnostics


def _optimum_removal(model, forget, retain, held_out, config, lam, on_progress, timings, shard,
                     slices, selected, diagnostics):
    """``step_rule="optimum"``: the head goes to the retained optimum (:mod:`.optimum_step`),
    after the v2 targeted step on the selected slices outside the head when
    ``config.feature_step``. The block (what ``parameters_updated`` counts and
    ``noise_on="block"`` perturbs) is what moves: the whole head, plus those slices only with
    ``feature_step``. Rank 0 decides and solves; every rank receives the same block."""
    tick = time.perf_counter()
    head = head_name(model)
    by_ref = {(s.module, s.index): s for s in slices}
    outside = [s for s in selected if s.module != head]
    head_refs = [s for s in slices if s.module == head]
    moved = outside if config.feature_step else []        # the slices outside the head move only then
    rows = slice_parameter_rows(model, [by_ref[(s.module, s.index)] for s in moved] + head_refs)
    start = model
    if config.feature_step and outside:
        emit(on_progress, "newton", 0.0, f"step on the {len(outside)} selected slice(s) outside the head")
        feature_rows = slice_parameter_rows(model, [by_ref[(s.module, s.index)] for s in outside])
        data = _subsample(retain, config.retain_subsample, config.seed)
        objective = BlockObjective(model, feature_rows, data.images, data.targets, lam,
                                   curvature_size=config.curvature_subsample, seed=config.seed,
                                   shard=shard)
        v_new, diagnostics["feature_step"] = targeted_step(objective, forget, held_out, config,
                                                           n=len(forget) + len(retain))
        v_new = shard.broadcast_tensor(v_new, "block")
        start = _with_params(model, objective.full_state(v_new, model))
    emit(on_progress, "newton", 0.5, f"moving the head ({head}) to the retained optimum")

    def solve():      # rank 0 solves; only the head's new weights travel to the other ranks
        new_model, report, clocks = retained_optimum_head(start, forget, retain, lam,
                                                          feature_slices=outside,
                                                          feature_step=config.feature_step)
        head_params = {k: v.detach().cpu() for k, v in new_model.named_parameters()
                       if k.startswith(head + ".")}
        return head_params, report, clocks
    head_params, report, clocks = shard.from_rank0(solve, "head optimum")
    timings.update(clocks)
    params = {k: v.detach() for k, v in start.named_parameters()}
    params.update({k: v.to(params[k].device) for k, v in head_params.items()})
    new_model = _with_params(model, params)
    diagnostics["step"] = report.to_dict()
    timings["newton_s"] = time.perf_counter() - tick
    emit(on_progress, "newton", 1.0, f"head at the retained optimum (|grad F_r| "
                                     f"{report.solve['gradient_norm']:.1e})")
    diagnostics["changed"] = any(not torch.equal(a, b) for a, b in
                                 zip(model.parameters(), new_model.parameters()))
    return new_model, selected, rows, diagnostics


def _with_class_units(model, selected, slices, forget, retain, info):
    """``selected`` plus the output unit of every class the request removes entirely (see
    :func:`.selection.removed_class_units`), appended with score NaN; ``info`` records them."""
    with torch.no_grad():
        device = next(model.parameters()).device
        outputs = copy.deepcopy(model).eval()(forget.images[:1].to(device)).shape[-1]
    have = {(s.module, s.index) for s in selected}
    added = [u for u in removed_class_units(slices, forget.targets, retain.targets, outputs)
             if (u.module, u.index) not in have]
    info["class_units_added"] = [u.label for u in added]
    return selected + [SelectedSlice(u.module, u.index, float("nan"), len(selected) + i)
                       for i, u in enumerate(added)]


def _newton_iterations(objective, forget, retain, config, lam, on_progress):
    """``step_rule="newton"``: damped Newton iterations with an Armijo line search on F_r."""
    solver = config.solver
    if solver == "auto":
        solver = "explicit" if objective.size <= config.explicit_max_params else "cg"
    forget_rhs = None
    if config.rhs == "forget_gradient":
        forget_rhs = forget_gradient(objective, forget, len(forget) + len(retain)).to(objective.v0.dtype)

    def on_step(step, steps, loss):
        emit(on_progress, "newton", step / steps, f"Newton step {step}: retained loss {loss:.4f}")

    emit(on_progress, "newton", 0.0, f"block Newton on p = {objective.size} parameters ({solver})")
    v_new, report = block_newton(objective, rhs=config.rhs, forget_rhs=forget_rhs, solver=solver,
                                 max_steps=config.newton_steps, damping=config.damping,
                                 cg_iterations=config.cg_iterations,
                                 cg_tolerance=config.cg_tolerance, on_step=on_step)
    return v_new, {**report.__dict__, "parameters": objective.size,
                   "suffix_traced": objective.split.traced}
