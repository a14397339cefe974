"""The record of one removal: what was asked, how, what it did, and how it compares.

A :class:`RemovalRecord` is frozen. A retrained reference (with its audit) is added by
:meth:`RemovalRecord.with_reference`, which returns a new record; nothing is assigned after
the fact. :meth:`RemovalRecord.to_json` is the one layout behind ``lcodec unlearn --json``,
the dashboard's downloads, the audit report (:mod:`lcodec_core.audit.report`) and the ledger
row (:func:`lcodec_core.ledger.entry_from_record`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from .audit.verdict import Verdict, judge
from .jsonsafe import json_ready
from .ledger.privacy import is_certified
from .requests import ForgetRequest
from .unlearning.config import UnlearnConfig
from .unlearning.result import UnlearnResult

RECORD_VERSION = 2   # the layout of to_json(); 1 was the command line's report before it


@dataclass(frozen=True)
class RemovalRecord:
    """One removal, from the model it started at to the verdict read from its numbers.

    Accuracy dicts (``original``, ``before``, ``after``, ``retrained``) are
    :func:`lcodec_core.audit.evaluation.evaluate` on this record's request: ``original`` of
    the root model of the run (the command line's loaded model, the dashboard's untouched
    base), ``before`` of the model this removal started from, ``after`` of the unlearned
    model, ``retrained`` of the reference trained without the forget set (None until
    :meth:`with_reference`). ``hash_before``/``hash_after``: :func:`lcodec_models.state_hash` of the
    model before and after. ``who`` names what was removed in the verdict ("person 05").
    ``attacks``: :func:`lcodec_core.audit.attacks.request_attacks` of the model before
    ("before"), the unlearned model ("unlearned") and, with a reference, the retrained one
    ("retrained"), with the protocol and which held-out photos judged (``held_out``).
    """
    request: ForgetRequest
    config: UnlearnConfig
    result: UnlearnResult
    original: dict
    before: dict
    after: dict
    hash_before: str
    hash_after: str
    dataset: str | None = None
    model_name: str | None = None
    stationarity: dict | None = None
    who: str | None = None
    retrained: dict | None = None
    retrain_s: float | None = None
    audit: dict | None = None
    attacks: dict | None = None

    @property
    def model(self) -> nn.Module:
        """The unlearned model (a new object; the input model was never modified)."""
        return self.result.model

    @property
    def label(self) -> str:
        return self.request.description

    @property
    def verdict(self) -> Verdict:
        """What the numbers show (:func:`lcodec_core.audit.verdict.judge`): never assumed."""
        return judge(self.before, self.after, identity=self.request.identity,
                     changed=self.result.changed, step=self.result.diagnostics.get("step"),
                     who=self.who, attacks=self.attacks)

    @property
    def certified(self) -> bool:
        """True when the removal's (epsilon, delta) is a certified guarantee."""
        return is_certified(self.result.guarantee, self.config.epsilon)

    @property
    def speedup_over_retrain(self) -> float | None:
        """Retraining seconds over the engine's seconds (None without a reference)."""
        unlearn_s = self.result.timings.get("unlearn_s")
        if self.retrain_s is None or not unlearn_s:
            return None
        return self.retrain_s / unlearn_s

    def with_reference(self, retrained: dict, retrain_s: float, audit: dict | None,
                       retrained_attacks: dict | None = None) -> "RemovalRecord":
        """A new record with the retrained reference's accuracies, its training time,
        :func:`lcodec_core.audit.comparison.audit_removal` of (original, unlearned, retrained)
        and the attacks on the retrained model (the verdict then reads them against it)."""
        attacks = self.attacks
        if retrained_attacks is not None:
            attacks = {**(attacks or {}), "retrained": retrained_attacks}
        return dataclasses.replace(self, retrained=dict(retrained), retrain_s=float(retrain_s),
                                   audit=audit, attacks=attacks)

    def to_json(self) -> dict:
        """Everything but the models, JSON-ready (no NaN: unknown values are null).

        Keys: record_version, dataset, model, request (identity, forget_indices, description,
        sources, retained), model_hash_before/after, original, before, unlearned, retrained,
        verdict, guarantee, guarantee_text, guarantee_reasons, changed, epsilon and delta
        (only when certified), requested_epsilon, sigma, selected_slices, parameters_updated,
        parameter_share, timings (with retrain_s), speedup_over_retrain, peak_memory_mb,
        settings, diagnostics, stationarity, audit, attacks.
        """
        summary = self.result.summary()          # the engine's own fields, as it reports them
        summary.pop("method")                     # settings["method"] says it
        certified, request = self.certified, self.request
        return json_ready({
            "record_version": RECORD_VERSION,
            "dataset": self.dataset,
            "model": self.model_name,
            "request": {"identity": request.identity, "forget_indices": list(request.forget_indices),
                        "description": request.description, "who": self.who,
                        "sources": [str(s) for s in request.forget.sources],
                        "retained": len(request.retain_indices)},
            "model_hash_before": self.hash_before,
            "model_hash_after": self.hash_after,
            "original": self.original,
            "before": self.before,
            "unlearned": self.after,
            "retrained": self.retrained,
            "verdict": self.verdict.to_dict(),
            **summary,
            "epsilon": self.config.epsilon if certified else None,
            "delta": self.config.delta if certified else None,
            "requested_epsilon": self.config.epsilon,
            "timings": {**summary["timings"], "retrain_s": self.retrain_s},
            "speedup_over_retrain": self.speedup_over_retrain,
            "stationarity": self.stationarity,
            "audit": self.audit,
            "attacks": self.attacks,
        })
