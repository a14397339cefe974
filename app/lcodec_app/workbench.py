"""One browser session's work: its own copy of the base model and the removals applied to it.

The base model is shared by every session (a cached resource) and never edited: a
:class:`Workbench` deep-copies it once, and every removal produces a new model (the engine's
``unlearn`` never modifies its input), so undo is popping the last :class:`Removal` and reset
is dropping them all. Nothing here imports Streamlit.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

from torch import nn

from lcodec_core.data import DataBundle
from lcodec_core.audit.evaluation import evaluate
from lcodec_core.ledger import privacy_spent
from lcodec_core.requests import ForgetRequest
from lcodec_core.record import RemovalRecord
from lcodec_models import ZOO, Checkpoint, Recipe, state_hash

# Built-in data sets and the zoo models offered for each (first = default): models.ZOO.
DATASET_LABELS = {"olivetti": "Olivetti faces (40 people)", "mnist": "MNIST digits (10 classes)"}
MODEL_LABELS = {
    "small_cnn": "small CNN (35k parameters, trains in ~30 s on 2 cores)",
    # measured in docs/BENCHMARKS.md, "Engine v3" (ResNet-18: engine 3.1-3.7 s, with the evaluation
    # and the attacks 8.5-10.4 s) and "ResNet-18 identity removal (issue 14)" (training: the first
    # took up to 8 min on a busy machine), 2 cores
    "resnet18": "ResNet-18 (11M parameters; trains once in ~1-8 min on 2 cores; a removal ~9-11 s)",
    "logreg": "logistic regression",
    "mlp": "one-hidden-layer MLP",
}


@dataclass(frozen=True)
class ModelKey:
    """Which base model a session works on."""
    dataset: str = "olivetti"
    model: str = "small_cnn"

    @classmethod
    def parse(cls, dataset: str | None, model: str | None) -> "ModelKey":
        """A valid key from (possibly bad) URL values: unknown values fall back to defaults."""
        dataset = dataset if dataset in ZOO else "olivetti"
        model = model if model in ZOO[dataset] else ZOO[dataset][0]
        return cls(dataset, model)


@dataclass(frozen=True)
class SharedBase:
    """The base checkpoint and its data, shared read-only by every session."""
    key: ModelKey
    checkpoint: Checkpoint
    bundle: DataBundle
    base_hash: str


Removal = RemovalRecord   # one applied removal: the core's record (lcodec_core.record)


@dataclass
class Workbench:
    """A session's private models and history of removals."""
    key: ModelKey
    base_hash: str
    bundle: DataBundle
    metadata: dict
    original: nn.Module
    history: list[Removal] = field(default_factory=list)
    _metrics: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_base(cls, base: SharedBase) -> "Workbench":
        model = copy.deepcopy(base.checkpoint.model).eval()
        return cls(base.key, base.base_hash, base.bundle, copy.deepcopy(base.checkpoint.metadata),
                   model)

    @property
    def current(self) -> nn.Module:
        """The model after every removal so far (the original when there is none)."""
        return self.history[-1].model if self.history else self.original

    @property
    def current_hash(self) -> str:
        return self.history[-1].hash_after if self.history else self.base_hash

    @property
    def removed_indices(self) -> list[int]:
        return sorted(i for r in self.history for i in r.request.forget_indices)

    @property
    def removed_identities(self) -> list[int]:
        return [r.request.identity for r in self.history if r.request.identity is not None]

    @functools.cached_property
    def recipe(self) -> Recipe:
        """The base model's training recipe, parsed once."""
        return Recipe.from_dict(self.metadata["recipe"])

    @property
    def weight_decay(self) -> float:
        return self.recipe.weight_decay

    def current_checkpoint(self, own_copy: bool = False) -> Checkpoint:
        """The session's current model (a deep copy with ``own_copy``) with the base's metadata
        (recipe, model name); a stored stationarity measurement is dropped once removals
        have moved the model."""
        metadata = {key: value for key, value in self.metadata.items()
                    if not (self.history and key == "stationarity")}
        return Checkpoint(copy.deepcopy(self.current) if own_copy else self.current, metadata)

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.classes)

    def metrics(self, model: nn.Module, model_digest: str, request: ForgetRequest) -> dict:
        """:func:`lcodec_core.audit.evaluation.evaluate` of ``model`` on ``request``, remembered by
        (model hash, request): a page redraw or a removal's "before" does not run the same
        0.4 s of forward passes again. ``model_digest`` must be ``model``'s :func:`model_hash`.
        """
        key = (model_digest, request.identity, tuple(request.forget_indices),
               len(request.retain_indices))
        if key not in self._metrics:
            if len(self._metrics) > 64:
                self._metrics.clear()
            self._metrics[key] = evaluate(model, self.bundle, request)
        return dict(self._metrics[key])

    def push(self, removal: Removal) -> None:
        if removal.hash_before != self.current_hash:
            raise ValueError("this removal was computed on another model state "
                             "(the session changed while it ran); run it again")
        self.history.append(removal)

    def with_reference(self, removal: Removal, updated: Removal) -> None:
        """Put ``updated`` (``removal`` with its retrained reference, a new record) in the
        place of ``removal``; nothing when the removal was undone meanwhile."""
        for position, kept in enumerate(self.history):
            if kept is removal:
                self.history[position] = updated

    def undo(self) -> Removal | None:
        """Drop the last removal (the model goes back to the one before it)."""
        return self.history.pop() if self.history else None

    def reset(self) -> None:
        """Back to the original model."""
        self.history.clear()

    def privacy_spent(self) -> tuple[float | None, float]:
        """(epsilon, delta) spent by all removals under basic composition (sums).

        epsilon is None when any removal is not certified (no noise, heuristic noise, or no
        weight moved; see :mod:`lcodec_core.unlearning.guarantee`): no guarantee is claimed then, and
        delta sums only the certified removals. The ledger's rule:
        :func:`lcodec_core.ledger.privacy_spent`.
        """
        return privacy_spent((r.result.guarantee, r.config.epsilon, r.config.delta)
                             for r in self.history)


def model_hash(model: nn.Module) -> str:
    return state_hash(model)
