"""Tasks (head, loss, metrics with directions) and the multi-task Δm."""

from tasknorm.tasks.binary_map_metrics import (
    EDGE_THRESHOLDS,
    SALIENCY_THRESHOLDS,
    EdgeFMeasure,
    SaliencyMaxF,
    SaliencyMeanIoU,
    disk_max_pool,
)
from tasknorm.tasks.delta import POOLINGS, delta_m
from tasknorm.tasks.dense import (
    DepthTask,
    EdgeTask,
    NormalsTask,
    SaliencyTask,
    SegmentationTask,
)
from tasknorm.tasks.metrics import (
    AGGREGATIONS,
    ANGLE_BINS_PER_DEGREE,
    NORMAL_THRESHOLDS,
    DepthAbsError,
    DepthRelError,
    DepthRMSE,
    MeanIoU,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalWithinAngle,
    PixelAccuracy,
    normal_angles,
)
from tasknorm.tasks.task import IGNORE_INDEX, BinaryTask, ClassificationTask, Task

__all__ = [
    "AGGREGATIONS",
    "ANGLE_BINS_PER_DEGREE",
    "EDGE_THRESHOLDS",
    "IGNORE_INDEX",
    "NORMAL_THRESHOLDS",
    "POOLINGS",
    "SALIENCY_THRESHOLDS",
    "BinaryTask",
    "ClassificationTask",
    "DepthAbsError",
    "DepthRMSE",
    "DepthRelError",
    "DepthTask",
    "EdgeFMeasure",
    "EdgeTask",
    "MeanIoU",
    "NormalMeanAngle",
    "NormalMedianAngle",
    "NormalWithinAngle",
    "NormalsTask",
    "PixelAccuracy",
    "SaliencyMaxF",
    "SaliencyMeanIoU",
    "SaliencyTask",
    "SegmentationTask",
    "Task",
    "delta_m",
    "disk_max_pool",
    "normal_angles",
]
