"""Datasets: load raw arrays, split them, corrupt them on purpose (noise, imbalance), hand tensors on.

Flow: a dataset config's `_target_` returns `RawData` → `prepare_data` splits it
(`split_dataset`), applies label noise and class imbalance to the training part, scales features
with statistics of the training split only, and returns `Splits` of tensors.
"""

from lossbench.data.prepare import prepare_data
from lossbench.data.raw import TASKS, RawData
from lossbench.data.split import Split, Splits, split_dataset

__all__ = ["TASKS", "RawData", "Split", "Splits", "prepare_data", "split_dataset"]
