"""hf_ifbeta: prune an image dataset for knowledge distillation, then distil on what is kept.

```python
>>> from hf_ifbeta import DatasetPruner
>>> pruned = DatasetPruner(teacher, image_column="img").prune(ds, ratio=0.3)
```
Importing the package registers the CIFAR ResNets in timm's model registry. Everything else is
imported on first use, so `import hf_ifbeta` stays cheap (transformers loads with the trainer).
"""

import importlib
from typing import TYPE_CHECKING

from . import models  # noqa: F401  (registers cifar10_resnet20/32/44/56/110 with timm)

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "PrunerConfig": "config",
    "DistillationTrainingArguments": "config",
    "TeacherOutputs": "features",
    "compute_teacher_outputs": "features",
    "BetaPolicy": "policy",
    "learn_beta_policy": "policy_learning",
    "influence_scores": "influence",
    "list_methods": "scorers",
    "get_method": "scorers",
    "register_method": "scorers",
    "DatasetPruner": "pruner",
    "PruningResult": "result",
    "kd_loss": "losses",
    "DistillationTrainer": "trainer",
    "load_pruned_dataset": "result",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .config import DistillationTrainingArguments, PrunerConfig
    from .features import TeacherOutputs, compute_teacher_outputs
    from .influence import influence_scores
    from .losses import kd_loss
    from .policy import BetaPolicy
    from .policy_learning import learn_beta_policy
    from .pruner import DatasetPruner
    from .result import PruningResult, load_pruned_dataset
    from .scorers import get_method, list_methods, register_method
    from .trainer import DistillationTrainer
