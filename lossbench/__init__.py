"""lossbench: a command-line experiment runner for comparing loss functions in PyTorch.

Importing the package is cheap on purpose: `lossbench --help` must not import torch.
"""

from lossbench import _moved

_moved.install()  # old module paths (lossbench.run, lossbench.tracking, ...) stay importable

__version__ = "0.1.0"
