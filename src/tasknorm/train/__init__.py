"""Training: the LightningModule, loss weightings, gradient aggregators (TorchJD) and CosReg."""

from tasknorm.train.aggregation import AGGREGATORS, build_aggregator
from tasknorm.train.cosreg import CosReg, cosreg_penalty, last_shared_layer
from tasknorm.train.module import SELECTION_METRIC, MultiTaskModule
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
    "CosReg",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FixedWeighting",
    "GradNorm",
    "LossWeighting",
    "MultiTaskModule",
    "RandomLossWeighting",
    "UncertaintyWeighting",
    "build_aggregator",
    "build_weighting",
    "cosreg_penalty",
    "last_shared_layer",
]
