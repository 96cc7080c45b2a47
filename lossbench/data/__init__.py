"""Datasets: load raw arrays, split them, corrupt them on purpose (noise, imbalance), hand tensors on.

Flow: a dataset config's `_target_` returns `RawData` (scikit-learn sets, torchvision image
benchmarks, the user's CSV/npz/image files) → `prepare_data` splits it (`split_dataset`), makes
the training classes imbalanced and the train/val labels noisy when asked, scales features with
statistics of the training split only, and returns `Splits` of tensors (augmented training
images are read through a DataLoader).
"""

from lossbench.data.prepare import prepare_data
from lossbench.data.raw import TASKS, RawData
from lossbench.data.split import Split, Splits, split_dataset

__all__ = ["TASKS", "RawData", "Split", "Splits", "prepare_data", "split_dataset"]
