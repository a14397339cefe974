"""lcodec: remove training samples from a trained classifier.

L-FOCI (greedy selection with the randomized conditional dependence coefficient L-CODEC)
picks the parameter slices that carry a sample; a block Newton step with calibrated noise
removes it. This package is the engine: it never imports a UI library.
"""
from .config import UnlearnConfig
from .data import DataBundle, DataError, ImageDataset, load_dataset
from .dependence import FociResult, codec, foci
from .paths import lcodec_home
from .requests import ForgetRequest, make_request
from .result import SelectedSlice, UnlearnResult
from .unlearn import unlearn

__all__ = ["DataBundle", "DataError", "ImageDataset", "load_dataset", "lcodec_home", "codec",
           "foci", "FociResult", "UnlearnConfig", "unlearn", "UnlearnResult", "SelectedSlice",
           "ForgetRequest", "make_request"]
__version__ = "0.1.0"
