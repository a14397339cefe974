"""lcodec: remove training samples from a trained classifier.

L-FOCI (greedy selection with the randomized conditional dependence coefficient L-CODEC)
picks the parameter slices that carry a sample; a block Newton step with calibrated noise
removes it. This package is the engine: it never imports a UI library.
"""
from .data import DataBundle, DataError, ImageDataset, load_dataset
from .paths import lcodec_home

__all__ = ["DataBundle", "DataError", "ImageDataset", "load_dataset", "lcodec_home"]
__version__ = "0.1.0"
