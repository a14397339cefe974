"""Attacks that read what accuracy hides (docs/ALGORITHM.md, "Attacks").

A removal can stop a person being predicted while the model still singles them out. Each
attack is run the same way on the original, the unlearned and the retrained model and read
against the retrained model (never against a fixed number: a retrained ResNet-18 singles out
faces it never saw too). For a request that removes person k (every training photo of k):

- **margin ranking**: margin(x) = logit_k(x) - logsumexp_{j != k} logit_j(x). ``margin_auc``
  is the ROC AUC of k's forgotten training photos (positives) against every photo of other
  people, training and held-out (negatives). 1.0: k's photos still stand out.
- **offset**: the smallest constant c >= 0 that, added to logit_k, makes every forgotten photo
  predicted as k again (``offset_constant``), and how many photos of other people that same
  constant calls k (``offset_flipped``, of ``offset_others``). A hidden person comes back with
  a small constant that flips almost nobody; on a retrained model the constant is large and
  flips many.
- **relearning** (:data:`RELEARN_PROTOCOL`): a copy of the model is fine-tuned for a few Adam
  steps on k's held-out photos (never trained on) mixed with retained photos; ``relearned[s]``
  is the share of k's forgotten training photos predicted as k after s steps.

For scattered photos (their people keep other training photos), ``loss_attack`` gives each
photo's loss and the ROC AUC of the photos against held-out photos by their loss (lower loss
reads as member), on the report half of the held-out photos only (:mod:`.holdout`).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from lcodec_models.training import predict

from ..data import ImageDataset

RELEARN_PROTOCOL = {
    "person_photos": "the person's held-out photos (never trained on), each repeated 5 times",
    "repeats": 5, "retained_photos": 30, "optimizer": "Adam", "lr": 3e-4, "batch_size": 16,
    "steps": (2, 5, 10), "mode": "eval (BatchNorm statistics and dropout frozen)",
    "weight_decay": 0.0, "seed": 0,
}


def margins(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logit_k - logsumexp_{j != k} logit_j for logits (N, K): (N,) float64."""
    logits = logits.double()
    others = torch.cat([logits[:, :k], logits[:, k + 1:]], dim=1)
    return logits[:, k] - torch.logsumexp(others, dim=1)


def margin_auc(forgotten_logits: torch.Tensor, others_logits: torch.Tensor, k: int) -> float:
    """ROC AUC of the forgotten photos' margins against the other people's photos'."""
    pos, neg = margins(forgotten_logits, k), margins(others_logits, k)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(labels, torch.cat([pos, neg]).numpy()))


def offset_attack(forgotten_logits: torch.Tensor, others_logits: torch.Tensor, k: int) -> dict:
    """The constant on logit_k that restores every forgotten photo, and whom else it calls k.

    Needed constant per photo: max_{j != k} logit_j - logit_k (a photo is predicted k when
    logit_k + c exceeds every other logit); c = max(0, the largest of those) plus 1e-6.
    """
    def gap(logits):
        logits = logits.double()
        others = torch.cat([logits[:, :k], logits[:, k + 1:]], dim=1)
        return others.max(1).values - logits[:, k]
    constant = max(0.0, float(gap(forgotten_logits).max())) + 1e-6
    flipped = int((gap(others_logits) < constant).sum())
    return {"offset_constant": constant, "offset_flipped": flipped,
            "offset_others": int(len(others_logits))}


def relearn_attack(model: nn.Module, forgotten: ImageDataset, person_held_out: ImageDataset,
                   retain: ImageDataset, k: int, protocol: dict = RELEARN_PROTOCOL) -> dict:
    """{"steps": share of forgotten photos predicted k after that many Adam steps} (protocol in
    :data:`RELEARN_PROTOCOL`); the model is not modified (a copy is fine-tuned)."""
    if len(person_held_out) == 0:
        return {}
    generator = torch.Generator().manual_seed(protocol["seed"])
    pick = torch.randperm(len(retain), generator=generator)[:protocol["retained_photos"]]
    images = torch.cat([person_held_out.images.repeat(protocol["repeats"], 1, 1, 1),
                        retain.images[pick]])
    targets = torch.cat([person_held_out.targets.repeat(protocol["repeats"]), retain.targets[pick]])
    device = next(model.parameters()).device
    attacked = copy.deepcopy(model).to(device).eval()
    optimizer = torch.optim.Adam(attacked.parameters(), lr=protocol["lr"],
                                 weight_decay=protocol["weight_decay"])
    results, order, cursor = {}, torch.randperm(len(images), generator=generator), 0
    for step in range(1, max(protocol["steps"]) + 1):
        if cursor + protocol["batch_size"] > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = order[cursor:cursor + protocol["batch_size"]]
        cursor += protocol["batch_size"]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(attacked(images[batch].to(device)), targets[batch].to(device))
        loss.backward()
        optimizer.step()
        if step in protocol["steps"]:
            with torch.no_grad():
                predicted = predict(attacked, forgotten.images).argmax(1)
            results[str(step)] = float((predicted == k).double().mean())
    return results


def relearned_shares(attack: dict) -> dict[int, float]:
    """An attack result's ``relearned`` as {steps: share}, steps as ints (JSON keeps them as
    strings); {} when it has none (scattered photos, no held-out photo of the person)."""
    return {int(k): float(v) for k, v in (attack.get("relearned") or {}).items()}


def last_relearned(attack: dict) -> tuple[int, float] | None:
    """(steps, share) at the longest relearning run of an attack result, or None."""
    shares = relearned_shares(attack)
    return (max(shares), shares[max(shares)]) if shares else None


def identity_attacks(model: nn.Module, k: int, forgotten: ImageDataset, others: ImageDataset,
                     person_held_out: ImageDataset, retain: ImageDataset, *,
                     relearn: bool = True) -> dict:
    """Every attack on person k for one model: margin_auc, offset_*, relearned {steps: share}.

    forgotten: k's removed training photos; others: every photo of other people (training and
    held-out); person_held_out: k's held-out photos; retain: the retained training photos.
    """
    forgotten_logits = predict(model, forgotten.images)
    others_logits = predict(model, others.images)
    out = {"margin_auc": margin_auc(forgotten_logits, others_logits, k),
           **offset_attack(forgotten_logits, others_logits, k)}
    if relearn:
        out["relearned"] = relearn_attack(model, forgotten, person_held_out, retain, k)
    return out


def loss_attack(model: nn.Module, forgotten: ImageDataset, report_held_out: ImageDataset) -> dict:
    """Per-photo loss of the forgotten photos and the ROC AUC that separates them from the
    report half of the held-out photos by their loss (lower loss = member). 0.5: they look
    never seen; the retrained model's value is the reference."""
    def losses(data):
        return F.cross_entropy(predict(model, data.images).double(), data.targets, reduction="none")
    forgotten_loss, held_loss = losses(forgotten), losses(report_held_out)
    labels = np.r_[np.ones(len(forgotten_loss)), np.zeros(len(held_loss))]
    auc = (float(roc_auc_score(labels, -torch.cat([forgotten_loss, held_loss]).numpy()))
           if len(held_loss) and len(forgotten_loss) else float("nan"))
    return {"loss_auc": auc, "forgotten_losses": [float(v) for v in forgotten_loss],
            "report_held_out_photos": int(len(held_loss))}


def request_attacks(model: nn.Module, bundle, request, *, relearn: bool = True) -> dict:
    """The attacks that fit ``request`` on one model.

    A whole person (``request.identity`` k): :func:`identity_attacks` with every photo of other
    people (training and held-out) as the others and k's held-out photos for relearning; keys
    ``kind`` = "identity" plus its numbers. Scattered photos: :func:`loss_attack` against the
    report half of the held-out photos (:func:`lcodec_core.holdout.split_held_out`);
    ``kind`` = "photos".
    """
    from ..holdout import split_held_out
    train, test = bundle.train, bundle.test
    k = request.identity
    if k is None:
        report = split_held_out(test).report
        return {"kind": "photos", **loss_attack(model, request.forget, test.subset(report))}
    train_others = (train.targets != k).nonzero().flatten().tolist()
    test_others = (test.targets != k).nonzero().flatten().tolist()
    a, b = train.subset(train_others), test.subset(test_others)
    others = ImageDataset(torch.cat([a.images, b.images]), torch.cat([a.targets, b.targets]),
                          train.classes, a.sources + b.sources)
    held = test.subset((test.targets == k).nonzero().flatten().tolist())
    return {"kind": "identity", **identity_attacks(model, k, request.forget, others, held,
                                                   request.retain, relearn=relearn)}
