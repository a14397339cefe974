"""Training recipes and the training loop for the zoo (and for retraining from scratch).

The objective every recipe minimises is the one the unlearning math assumes:
    F(w) = (1/n) sum_i CE(f_w(x_i), y_i) + (lam / 2) |w|^2
with lam = ``Recipe.weight_decay`` applied to every parameter (Adam's coupled L2, which adds
lam * w to the gradient; never decoupled AdamW).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import Checkpoint
from .stationarity import objective_gradient_norms, polish_head
from .zoo import build_model

ProgressFn = Callable[[dict], None]


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; stored in every checkpoint so retraining is always possible."""
    model: str = "small_cnn"     # zoo architecture name
    epochs: int = 30             # passes over the training data
    lr: float = 3e-3             # Adam learning rate
    batch_size: int = 32         # minibatch size
    weight_decay: float = 5e-4   # lam in F(w): L2 penalty (lam/2)|w|^2 on every parameter
    seed: int = 0                # initialisation and shuffling seed
    optimizer: str = "adam"      # "adam" (minibatch) or "lbfgs" (full batch, to the optimum of a convex F)
    polish_head: bool = True     # after training, move the linear head to the exact optimum of F with the
                                 # other layers fixed (convex; a few seconds), so the model starts the
                                 # removal near a stationary point (see models/stationarity.py)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Recipe":
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


DEFAULT_RECIPES = {
    ("olivetti", "small_cnn"): Recipe("small_cnn", epochs=30, lr=3e-3, batch_size=32),
    # ResNet-18 (downsampling stem): held-out 0.975 after 4 epochs of a 15-epoch run, 0.975-0.988
    # up to epoch 8; 8 epochs with the cosine schedule give 0.975 (docs/BENCHMARKS.md, issue 14)
    ("olivetti", "resnet18"): Recipe("resnet18", epochs=8, lr=1e-3, batch_size=32),
    ("mnist", "logreg"): Recipe("logreg", epochs=40, lr=1.0, batch_size=8000, weight_decay=1e-3,
                                optimizer="lbfgs"),
    ("mnist", "mlp"): Recipe("mlp", epochs=20, lr=3e-3, batch_size=128, weight_decay=5e-4),
}


def default_recipe(dataset_name: str, model_name: str) -> Recipe:
    """The zoo's recipe for a (dataset, model) pair, or generic defaults for other pairs."""
    key = (dataset_name if dataset_name in ("olivetti", "mnist") else "olivetti", model_name)
    return DEFAULT_RECIPES.get(key, Recipe(model_name))


CHANNELS_LAST_MIN_IMAGES = 64  # fewer images: copying the conv weights costs more than it saves


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits, shape (N, K), in eval mode. The model's previous mode is restored.

    Batches of 64 stay in the CPU's cache: the small CNN over 320 photos, channels-last, took
    0.09 s in batches of 64 against 0.24 s in batches of 512 (one thread, load 0.5).

    A convolutional model given many images runs channels-last (on a copy of its 4-D
    weights; the model is not changed): the same logits to float rounding, measured 1.2-1.5x
    faster for the zoo's ResNet-18 and small CNN on a 2-core CPU."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        forward = _channels_last_forward(model, images)
        return torch.cat([forward(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)]) if len(images) else \
            torch.empty(0)
    finally:
        model.train(was_training)


def _channels_last_forward(model: nn.Module, images: torch.Tensor) -> Callable:
    """``model``'s forward, channels-last when that pays: 4-D images, at least
    ``CHANNELS_LAST_MIN_IMAGES`` of them, a model with 4-D (conv) weights that is not
    TorchScript. Otherwise ``model`` itself."""
    if (images.ndim != 4 or len(images) < CHANNELS_LAST_MIN_IMAGES
            or isinstance(model, torch.jit.ScriptModule)
            or not any(p.ndim == 4 for p in model.parameters())):
        return model
    weights = {name: p.contiguous(memory_format=torch.channels_last) if p.ndim == 4 else p
               for name, p in model.named_parameters()}
    return lambda batch: torch.func.functional_call(
        model, weights, (batch.contiguous(memory_format=torch.channels_last),))


def accuracy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of images classified correctly (nan for an empty set)."""
    if len(targets) == 0:
        return float("nan")
    return float((predict(model, images).argmax(1) == targets).float().mean())


def _fit_adam(model: nn.Module, dataset, recipe: Recipe, on_progress) -> None:
    """Minibatch Adam with coupled L2 (adds lam * w to the gradient) and a cosine schedule."""
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(recipe.epochs, 1))
    generator = torch.Generator().manual_seed(recipe.seed)
    loader = DataLoader(list(zip(dataset.images, dataset.targets)), batch_size=recipe.batch_size,
                        shuffle=True, generator=generator)
    loss_fn = nn.CrossEntropyLoss()
    device = next(model.parameters()).device
    for epoch in range(recipe.epochs):
        total = 0.0
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(targets)
        scheduler.step()
        if on_progress is not None:
            on_progress({"epoch": epoch + 1, "epochs": recipe.epochs, "loss": total / len(dataset)})


def _fit_lbfgs(model: nn.Module, dataset, recipe: Recipe, on_progress) -> None:
    """Full-batch L-BFGS (strong Wolfe) on F(w) = mean CE + (lam/2)|w|^2; each "epoch" is one
    optimizer step of up to 25 iterations. For a convex model this reaches the unique optimum,
    so retraining gives the same weights up to the solver tolerance."""
    optimizer = torch.optim.LBFGS(model.parameters(), lr=recipe.lr, max_iter=25, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")
    params = list(model.parameters())
    images, targets = dataset.images.to(params[0].device), dataset.targets.to(params[0].device)

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(images), targets)
        loss = loss + 0.5 * recipe.weight_decay * sum(p.pow(2).sum() for p in params)
        loss.backward()
        return loss

    for epoch in range(recipe.epochs):
        loss = optimizer.step(closure)
        if on_progress is not None:
            on_progress({"epoch": epoch + 1, "epochs": recipe.epochs, "loss": float(loss.detach())})


def train(model_name: str, dataset, recipe: Recipe | None = None, *,
          on_progress: ProgressFn | None = None, test=None,
          device: str | torch.device | None = None) -> Checkpoint:
    """Train a zoo model from scratch with ``recipe`` on ``dataset`` (an ImageDataset).

    ``dataset_name`` for the checkpoint's metadata is taken from ``dataset.name`` when present.
    ``on_progress`` receives ``{"epoch", "epochs", "loss"}`` after each epoch.
    ``device``: where the optimiser runs (default CPU); the head's polish, the stationarity
    check and the returned model are on the CPU.
    Returns a :class:`Checkpoint` (model in eval mode, metadata with recipe, n, accuracies).
    """
    recipe = replace(recipe or Recipe(model_name), model=model_name)
    torch.manual_seed(recipe.seed)
    num_classes = len(dataset.classes)
    model = build_model(model_name, num_classes, tuple(dataset.images.shape[1:]))
    start = time.perf_counter()
    model.to(device or "cpu").train()
    if recipe.optimizer == "lbfgs":
        _fit_lbfgs(model, dataset, recipe, on_progress)
    elif recipe.optimizer == "adam":
        _fit_adam(model, dataset, recipe, on_progress)
    else:
        raise ValueError(f"recipe.optimizer must be 'adam' or 'lbfgs'; got {recipe.optimizer!r}")
    model.cpu().eval()
    polish = (polish_head(model, dataset.images, dataset.targets, recipe.weight_decay)
              if recipe.polish_head else {"head": None})
    stationarity = objective_gradient_norms(model, dataset.images, dataset.targets,
                                            recipe.weight_decay)
    metadata = {
        "model": model_name,
        "num_classes": num_classes,
        "input_shape": list(dataset.images.shape[1:]),
        "classes": list(dataset.classes),
        "recipe": recipe.to_dict(),
        "n": len(dataset),
        "train_seconds": time.perf_counter() - start,
        "train_accuracy": accuracy(model, dataset.images, dataset.targets),
        "stationarity": {**stationarity, "polished_head": polish.get("head"),
                         "head_grad_norm_before_polish": polish.get("grad_norm_before")},
    }
    if test is not None:
        metadata["test_accuracy"] = accuracy(model, test.images, test.targets)
    return Checkpoint(model, metadata)
