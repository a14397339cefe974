"""lcodec: remove training samples from a trained classifier.

L-FOCI (greedy selection with the randomized conditional dependence coefficient L-CODEC)
picks the parameter slices that carry a sample; one step along the forget set's gradient on
those slices, shaped by the retained data's curvature and sized per request, removes it
(optionally with calibrated noise). This package is the engine: it never imports a UI library.
"""
from .audit.comparison import audit_removal
from .unlearning.config import UnlearnConfig
from .data import DataBundle, DataError, ImageDataset, load_dataset
from .dependence import FociResult, codec, foci
from .audit.evaluation import evaluate
from .unlearning.guarantee import GUARANTEES
from .paths import lcodec_home
from .record import RemovalRecord
from .removal import compare_with_retraining, remove
from .requests import ForgetRequest, make_request
from .sequence import SequenceStep, remove_in_sequence
from .unlearning.result import SelectedSlice, UnlearnResult
from .unlearning.unlearn import HarmfulNoiseError, unlearn
from .audit.verdict import Verdict, judge
from .zoo_cache import load_or_train

__all__ = ["DataBundle", "DataError", "ImageDataset", "load_dataset", "load_or_train",
           "lcodec_home", "codec", "foci", "FociResult", "UnlearnConfig", "unlearn",
           "UnlearnResult", "SelectedSlice", "ForgetRequest", "make_request", "GUARANTEES",
           "HarmfulNoiseError", "Verdict", "judge", "evaluate", "audit_removal", "remove",
           "compare_with_retraining", "RemovalRecord", "remove_in_sequence", "SequenceStep"]
__version__ = "0.1.0"
