"""What an unlearning run returns."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from .config import UnlearnConfig
from .guarantee import GUARANTEES


@dataclass(frozen=True)
class SelectedSlice:
    """One selected slice: module name, output index, selection score and order (0 = first)."""
    module: str
    index: int
    score: float
    order: int


@dataclass
class UnlearnResult:
    """A new model with U removed, and how it was obtained.

    ``timings`` has ``probe_s``, ``select_s``, ``newton_s``, ``noise_s`` and ``unlearn_s`` (total).
    ``diagnostics`` holds solver details (steps, damping, retained loss before/after,
    smallest eigenvalue, gradient norms, the right-hand side used).
    """
    model: nn.Module
    config: UnlearnConfig
    selected_slices: list[SelectedSlice] = field(default_factory=list)
    parameters_updated: int = 0
    parameter_share: float = 0.0
    sigma: float = 0.0
    timings: dict = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    diagnostics: dict = field(default_factory=dict)
    guarantee: str = "none"          # a key of lcodec_core.unlearning.guarantee.GUARANTEES
    guarantee_reasons: list = field(default_factory=list)  # why it is not "certified"

    @property
    def changed(self) -> bool:
        """Whether any weight moved."""
        return bool(self.diagnostics.get("changed", True))

    def summary(self) -> dict:
        """Everything but the model, JSON-ready."""
        return {
            "method": self.config.method,
            "selected_slices": [asdict(s) for s in self.selected_slices],
            "parameters_updated": self.parameters_updated,
            "parameter_share": self.parameter_share,
            "sigma": self.sigma,
            "guarantee": self.guarantee,
            "guarantee_text": GUARANTEES[self.guarantee],
            "guarantee_reasons": list(self.guarantee_reasons),
            "changed": self.changed,
            "timings": dict(self.timings),
            "peak_memory_mb": self.peak_memory_mb,
            "diagnostics": dict(self.diagnostics),
            "settings": self.config.to_dict(),
        }
