"""The loss catalogue, one file per family, re-exported flat.

The loss contract is written down in `lossbench.losses.base` (`Loss`: every attribute and hook
the runner calls, with defaults). In short: a loss is an `nn.Module` with `forward(input, target)` (input first, as in
torch) and class attributes that tell lossbench how it fits the data:

- `tasks`: the dataset tasks it fits (`multiclass`, `binary`, `regression`);
- `head`: what the model must output for it — `logits` (K scores; 2 for binary data),
  `sigmoid` (one logit for binary data, K one-vs-rest logits for multiclass), `embedding`
  (`embedding_dim` features, evaluated by k-nearest neighbours unless the loss has `scores`).
  Regression always gets one output per sample;
- `reference`: the paper it comes from, shown by `lossbench losses`.

Optional hooks: `model_loss(model, x, y)` replaces `loss(model(x), y)` in training (losses
that need the model, such as adversarial training); `attack(model, x, y)` makes adversarial
inputs, with which the test split's robust accuracy is reported; `setup(task, num_classes)` sizes
layers the loss owns once the data is known (called before the optimizer is built);
`scores(output)` turns outputs into class probabilities when the head's default does not apply;
`report()` returns learned values (dict of floats) to record at the end of a run; `terms` (dict
of detached tensors) holds the last values of a composite loss's parts, logged per epoch.

Two corrections to a common account of binary cross-entropy: with ŷ = σ(z) its gradient is
∂ℓ/∂z = ŷ − y (not y − ŷ), and torch's `BCEWithLogitsLoss()(input, target)` takes the logits
first (swapping the arguments gives a different number).
"""

from lossbench.losses.adversarial import AdversarialLoss
from lossbench.losses.classification import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    MultiMarginHingeLoss,
    Poly1Loss,
)
from lossbench.losses.composite import MixedLoss
from lossbench.losses.imbalance import (
    ClassBalancedLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    WeightedCELoss,
)
from lossbench.losses.metric import ContrastiveLoss, SupConLoss, TripletLoss
from lossbench.losses.noisy_labels import (
    GCELoss,
    MAELoss,
    NCELoss,
    NCEMAELoss,
    NCERCELoss,
    RCELoss,
    SCELoss,
)
from lossbench.losses.regression import (
    AdaptiveRobustLoss,
    HuberLoss,
    L1Loss,
    LogCoshLoss,
    MSELoss,
    QuantileLoss,
    SmoothL1Loss,
)

__all__ = [
    "AdaptiveRobustLoss", "AdversarialLoss", "BCEWithLogitsLoss", "ClassBalancedLoss",
    "ContrastiveLoss", "CrossEntropyLoss", "FocalLoss", "GCELoss", "HuberLoss", "L1Loss",
    "LDAMLoss", "LogCoshLoss", "LogitAdjustedLoss", "MAELoss", "MSELoss", "MixedLoss",
    "MultiMarginHingeLoss", "NCELoss", "NCEMAELoss", "NCERCELoss", "Poly1Loss", "QuantileLoss",
    "RCELoss", "SCELoss", "SmoothL1Loss", "SupConLoss", "TripletLoss", "WeightedCELoss",
]
