"""The built-in model zoo: architectures, training recipes and checkpoints."""
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, state_hash
from .training import Recipe, accuracy, default_recipe, predict, train
from .zoo import DEFAULT_MODEL, MODEL_NAMES, ZOO, build_model

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "state_hash", "Recipe",
           "accuracy", "default_recipe", "predict", "train", "DEFAULT_MODEL", "MODEL_NAMES", "ZOO",
           "build_model"]
