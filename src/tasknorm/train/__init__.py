"""Training: the LightningModule and its option groups, loss weightings, gradient aggregators
(TorchJD) and CosReg."""

from tasknorm.train.aggregation import AGGREGATORS, build_aggregator
from tasknorm.train.cosreg import CosReg, cosreg_penalty, last_shared_layer
from tasknorm.train.module import SELECTION_METRIC, MultiTaskModule
from tasknorm.train.options import Balancing, Gates, Optimization, Regularization
from tasknorm.train.weighting import (
    WEIGHTINGS,
    DynamicWeightAverage,
    EqualWeighting,
    FixedWeighting,
    GradNorm,
    LossWeighting,
    RandomLossWeighting,
    UncertaintyWeighting,
    build_weighting,
)

__all__ = [
    "AGGREGATORS",
    "SELECTION_METRIC",
    "WEIGHTINGS",
    "Balancing",
    "CosReg",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FixedWeighting",
    "Gates",
    "GradNorm",
    "LossWeighting",
    "MultiTaskModule",
    "Optimization",
    "RandomLossWeighting",
    "Regularization",
    "UncertaintyWeighting",
    "build_aggregator",
    "build_weighting",
    "cosreg_penalty",
    "last_shared_layer",
]
