"""Settings of one unlearning run: a frozen dataclass that round-trips to JSON."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

METHODS = ("lfoci", "random", "all", "top1", "full-newton", "finetune", "negrad", "retrain")
SELECTION_METHODS = ("lfoci", "random", "all", "top1")
SOLVERS = ("fisher", "auto", "explicit", "cg")
STEP_RULES = ("optimum", "target", "newton")


@dataclass(frozen=True)
class UnlearnConfig:
    """How to remove a forget set. Every field has a default that works on the zoo models."""
    method: str = "lfoci"            # one of METHODS; selection methods feed the block Newton step
    num_perturbations: int = 100     # m: perturbed copies of each forget image for probing
    perturbation_std: float = 0.1    # std of Gaussian input noise on the normalised image (paper: 0.1)
    class_units: bool = True         # lfoci/top1: the output unit of a class removed entirely joins the block
                                     # (retraining leaves it to weight decay alone; L-FOCI can miss it)
    probe_pooling: str = "pooled"    # "pooled": one L-FOCI on all forget images' probe rows; "per_image":
                                     # union of per-image selections (bench/bench_pooling.py compares them)
    max_slices: int = 4              # cap on L-FOCI's selection; later picks score near noise level and
                                     # reach early conv layers, which makes every Hessian product costlier
    rhs: str = "forget_gradient"     # right-hand side: g_U ("forget_gradient", removal-specific: exactly 0
                                     # with nothing removed) or -grad F_r(w) ("retain_gradient", which also
                                     # moves a non-stationary model with nothing removed; see the null control)
    step_rule: str = "optimum"       # "optimum" (engine v3): the whole linear head to the optimum of the
                                     # retained objective, features fixed (unlearning/optimum_step.py);
                                     # "target" (engine v2): one step whose damping is chosen per request by the
                                     # forget target (unlearning/step_rule.py; it hides, see ALGORITHM.md);
                                     # "newton": up to newton_steps damped Newton iterations with a line search
                                     # on F_r (exact solvers only)
    feature_step: bool = False       # step_rule "optimum": also move the selected slices outside the head by the
                                     # "target" step first. Measured to change no attack (docs/BENCHMARKS.md,
                                     # "What the L-FOCI slices add") and to cost 0.5-1.3 s, so off by default
    step_rounds: int = 4             # step_rule "target": at most this many steps, each from the forget gradient
                                     # at the current point (the curvature is reused), until the target is met
    solver: str = "fisher"           # curvature: "fisher" (per-sample gradients of the block over the retained
                                     # rows, Woodbury; cost does not grow with how early the layer is), or the
                                     # exact Hessian: "explicit" block, "cg" on Hessian-vector products, "auto" by size
    explicit_max_params: int = 40    # "auto" forms the p x p block explicitly up to this p, else CG on HVPs.
                                     # The explicit block costs about p Hessian-vector products per step
                                     # (batching them is no cheaper per product on a CPU), CG at most
                                     # cg_iterations: one conv3 filter (p = 289) took 173 s explicit, 3.9 s CG
    newton_steps: int = 5            # step_rule "newton": at most this many damped Newton steps (1 = the classic step)
    damping: float | None = None     # step_rule "newton": extra diagonal damping; None: chosen from the data
    cg_iterations: int = 20          # at most this many conjugate-gradient iterations per step (solver "cg")
    cg_tolerance: float = 0.1        # inexact Newton: CG stops at this relative residual |r| / |b|
    retain_subsample: int | None = None  # objective (gradient, line search) on a random retained subsample (None: all)
    curvature_subsample: int | None = None  # Hessian (products) on a random subsample of the retained rows (None: all)
    weight_decay: float | None = None    # lam of the objective; None: the checkpoint's recipe value
    epsilon: float | None = None     # (epsilon, delta)-forgetting target; None: no noise, no guarantee claimed
    delta: float = 1e-5              # delta of the (epsilon, delta) guarantee
    hessian_lipschitz: float = 0.25  # M in sigma's gamma (paper's code: 0.25 for cross-entropy)
    loss_lipschitz: float = 1.0      # L in sigma's gamma (paper's code: 1)
    allow_harmful_noise: bool = False  # noise that leaves retained accuracy near chance is refused unless True
    noise_on: str = "block"          # where N(0, sigma^2) goes: "block" (the selected P) or "all"
    baseline_epochs: int = 5         # finetune / negrad epochs
    baseline_lr: float = 1e-3        # finetune / negrad learning rate
    seed: int = 0                    # perturbations, random selection, jitter, noise
    batch_size: int = 64             # probing / evaluation batch size (64: 2.3x faster probing than 256 on
                                     # the default model, 0.24 s against 0.56-0.61 s: batches stay in cache)

    def __post_init__(self):
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}; got {self.method!r}"),
            (self.num_perturbations >= 3,
             f"num_perturbations (m) must be >= 3; got {self.num_perturbations}. L-CODEC ranks the "
             f"probe's rows and is undefined below 3; the default is 100 (paper: up to 1000)"),
            (math.isfinite(self.perturbation_std) and self.perturbation_std >= 0,
             f"perturbation_std must be a finite number >= 0; got {self.perturbation_std} "
             f"(the default 0.1 is the paper's)"),
            (self.max_slices >= 1, f"max_slices must be >= 1; got {self.max_slices}"),
            (self.probe_pooling in ("pooled", "per_image"),
             f"probe_pooling must be 'pooled' or 'per_image'; got {self.probe_pooling!r}"),
            (self.rhs in ("retain_gradient", "forget_gradient"),
             f"rhs must be 'retain_gradient' or 'forget_gradient'; got {self.rhs!r}"),
            (self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}; got {self.solver!r}"),
            (self.step_rule in STEP_RULES,
             f"step_rule must be one of {', '.join(STEP_RULES)}; got {self.step_rule!r}"),
            (not (self.step_rule == "newton" and self.solver == "fisher"),
             "step_rule 'newton' iterates exact Newton steps: use solver 'auto', 'explicit' or 'cg' "
             "with it (solver 'fisher' goes with step_rule 'target')"),
            (self.newton_steps >= 1, f"newton_steps must be >= 1; got {self.newton_steps}"),
            (self.epsilon is None or self.epsilon > 0, f"epsilon must be > 0 or None; got {self.epsilon}"),
            (0 < self.delta < 1, f"delta must be in (0, 1); got {self.delta}"),
            (self.noise_on in ("block", "all"), f"noise_on must be 'block' or 'all'; got {self.noise_on!r}"),
            (self.damping is None or (math.isfinite(self.damping) and self.damping >= 0),
             f"damping must be >= 0 or None; got {self.damping}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def objective_weight_decay(self, weight_decay: float | None = None, recipe=None) -> float:
        """lam of the training objective, decided in this one place: ``self.weight_decay``
        when set (an explicit user setting), else ``weight_decay``, else ``recipe.weight_decay``
        (the checkpoint's recipe, what the command line and the dashboard pass).

        Raises ValueError unless lam is a finite number > 0.
        """
        lam = self.weight_decay or weight_decay or (recipe.weight_decay if recipe is not None else None)
        if not lam or not math.isfinite(lam) or lam <= 0:
            raise ValueError(f"weight_decay (lam of the training objective) must be a finite number "
                             f"> 0; got {lam}: pass weight_decay=, a recipe, or set config.weight_decay")
        return float(lam)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "UnlearnConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown settings {unknown}; expected some of {sorted(names)}")
        return cls(**values)

    def with_(self, **changes) -> "UnlearnConfig":
        return replace(self, **changes)
