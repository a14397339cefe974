"""The cached zoo: train a built-in model once, then reuse its checkpoint from LCODEC_HOME.

The cached checkpoint is read-only for everyone: callers get a fresh model object each time
(dashboard sessions, the CLI), and unlearning always returns a new model.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

from lcodec_models import Checkpoint, Recipe, default_recipe, load_checkpoint, train
from lcodec_models.zoo import DEFAULT_MODEL

from .data import DataBundle, load_dataset
from .paths import models_dir

log = logging.getLogger(__name__)


def cache_path(dataset_name: str, recipe: Recipe, data_seed: int = 0) -> Path:
    """Checkpoint path for (data set, recipe, split seed): a short hash of all three."""
    key = json.dumps({"dataset": dataset_name, "recipe": recipe.to_dict(), "data_seed": data_seed},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() else "_" for c in dataset_name)[:40]
    return models_dir() / f"{safe}-{recipe.model}-{digest}.pt"


def load_or_train(dataset_name: str = "olivetti", model_name: str | None = None, *,
                  recipe: Recipe | None = None, data_seed: int = 0, bundle: DataBundle | None = None,
                  on_progress: Callable[[dict], None] | None = None) -> tuple[Checkpoint, DataBundle]:
    """The zoo model for ``dataset_name`` (trained and cached on first use) and its data.

    Returns (checkpoint, bundle). The checkpoint's metadata records the dataset, split seed,
    recipe and n, so the model can always be retrained from scratch with the same recipe.
    """
    model_name = model_name or DEFAULT_MODEL.get(dataset_name, "small_cnn")
    recipe = recipe or default_recipe(dataset_name, model_name)
    bundle = bundle or load_dataset(dataset_name, seed=data_seed)
    path = cache_path(dataset_name, recipe, data_seed)
    if path.exists():
        return load_checkpoint(path), bundle
    log.info("training %s on %s (recipe %s); cached at %s", model_name, dataset_name, recipe, path)
    checkpoint = train(model_name, bundle.train, recipe, on_progress=on_progress, test=bundle.test)
    checkpoint.metadata.update({"dataset": dataset_name, "data_seed": data_seed})
    checkpoint.save(path)
    return checkpoint, bundle
