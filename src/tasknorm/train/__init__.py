"""Training: the LightningModule and loss weightings."""

from tasknorm.train.module import SELECTION_METRIC, MultiTaskModule
from tasknorm.train.weighting import (
    WEIGHTINGS,
    DynamicWeightAverage,
    EqualWeighting,
    FixedWeighting,
    LossWeighting,
    UncertaintyWeighting,
    build_weighting,
)

__all__ = [
    "SELECTION_METRIC",
    "WEIGHTINGS",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FixedWeighting",
    "LossWeighting",
    "MultiTaskModule",
    "UncertaintyWeighting",
    "build_weighting",
]
