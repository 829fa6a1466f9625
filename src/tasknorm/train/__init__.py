"""Training: the LightningModule and its option groups, the balancing methods (loss
weightings, gradient aggregators, hybrids) and CosReg."""

from tasknorm.train.aggregation import (
    AGGREGATORS,
    Aggregation,
    ThreeBatchWeighting,
    TorchJDAggregation,
    build_aggregator,
)
from tasknorm.train.balancing import METHODS, Balance, build_balance
from tasknorm.train.cosreg import CosReg, cosreg_penalty, last_shared_layer
from tasknorm.train.module import SELECTION_METRIC, MultiTaskModule
from tasknorm.train.options import Balancing, Gates, Optimization, Regularization
from tasknorm.train.scalarization import (
    FastAdaptiveWeighting,
    GeometricLossStrategy,
    ImpartialLossScaling,
    LogLosses,
    Scalarization,
    SmoothTchebycheff,
)
from tasknorm.train.tracked import GradientMagnitudeBalancing, MoCo, project_onto_simplex
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
    "METHODS",
    "SELECTION_METRIC",
    "WEIGHTINGS",
    "Aggregation",
    "Balance",
    "Balancing",
    "CosReg",
    "DynamicWeightAverage",
    "EqualWeighting",
    "FastAdaptiveWeighting",
    "FixedWeighting",
    "Gates",
    "GeometricLossStrategy",
    "GradNorm",
    "GradientMagnitudeBalancing",
    "ImpartialLossScaling",
    "LogLosses",
    "LossWeighting",
    "MoCo",
    "MultiTaskModule",
    "Optimization",
    "RandomLossWeighting",
    "Regularization",
    "Scalarization",
    "SmoothTchebycheff",
    "ThreeBatchWeighting",
    "TorchJDAggregation",
    "UncertaintyWeighting",
    "build_aggregator",
    "build_balance",
    "build_weighting",
    "cosreg_penalty",
    "last_shared_layer",
    "project_onto_simplex",
]
