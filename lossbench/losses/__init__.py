"""The loss catalogue, one file per family, re-exported flat.

The loss interface: a loss is an `nn.Module` with `forward(input, target)` (input first, as in
torch) and two class attributes that tell lossbench how it fits the data:

- `tasks`: the dataset tasks it fits (`multiclass`, `binary`, `regression`);
- `head`: what the model must output for it — `logits` (K scores; 2 for binary data),
  `sigmoid` (one logit for binary data, K one-vs-rest logits for multiclass), `embedding`
  (`embedding_dim` features, evaluated by k-nearest neighbours). Regression always gets one
  output per sample.

Optional hooks: `model_loss(model, x, y)` replaces `loss(model(x), y)` in training (losses
that need the model, such as adversarial training); `scores(output)` turns outputs into class
probabilities when the head's default does not apply; `report()` returns learned values
(dict of floats) to record at the end of a run; `terms` (dict of detached tensors) holds the
last values of a composite loss's parts.
"""

from lossbench.losses.classification import BCEWithLogitsLoss, CrossEntropyLoss
from lossbench.losses.metric import ContrastiveLoss
from lossbench.losses.regression import MSELoss

__all__ = ["BCEWithLogitsLoss", "ContrastiveLoss", "CrossEntropyLoss", "MSELoss"]
