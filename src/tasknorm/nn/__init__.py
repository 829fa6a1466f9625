"""Normalization layers of tasknorm: σBN, TSBN, TSσBN (BatchNorm and LayerNorm), task routing,
model conversion, single-task extraction and optimizer parameter groups. Depends on torch only."""

from tasknorm.nn.batchnorm import (
    BatchNormStats,
    SigmaBatchNorm,
    SigmaBatchNorm1d,
    SigmaBatchNorm2d,
    TaskBatchNorm1d,
    TaskBatchNorm2d,
    TaskSigmaBatchNorm1d,
    TaskSigmaBatchNorm2d,
)
from tasknorm.nn.convert import (
    GATE_INIT_MEAN,
    GATE_INIT_STD,
    GATE_INITS,
    KINDS,
    PRETRAINED_GATE_RANGE,
    convert,
    extract_task,
    set_sync_stats,
    task_norm_layers,
)
from tasknorm.nn.gates import SigmoidGated
from tasknorm.nn.layernorm import (
    TaskLayerNorm,
    TaskLayerNorm2d,
    TaskSigmaLayerNorm,
    TaskSigmaLayerNorm2d,
)
from tasknorm.nn.norm_act import NormAct
from tasknorm.nn.optim import NORM_LAYER_TYPES, param_groups
from tasknorm.nn.routing import (
    LAYOUTS,
    Route,
    TaskRouted,
    current_route,
    set_route,
    stack_tasks,
    unstack_tasks,
    use_all_tasks,
    use_route,
    use_task,
)

__all__ = [
    "GATE_INITS",
    "GATE_INIT_MEAN",
    "GATE_INIT_STD",
    "KINDS",
    "LAYOUTS",
    "NORM_LAYER_TYPES",
    "PRETRAINED_GATE_RANGE",
    "BatchNormStats",
    "NormAct",
    "Route",
    "SigmaBatchNorm",
    "SigmaBatchNorm1d",
    "SigmaBatchNorm2d",
    "SigmoidGated",
    "TaskBatchNorm1d",
    "TaskBatchNorm2d",
    "TaskLayerNorm",
    "TaskLayerNorm2d",
    "TaskRouted",
    "TaskSigmaBatchNorm1d",
    "TaskSigmaBatchNorm2d",
    "TaskSigmaLayerNorm",
    "TaskSigmaLayerNorm2d",
    "convert",
    "current_route",
    "extract_task",
    "param_groups",
    "set_route",
    "set_sync_stats",
    "stack_tasks",
    "task_norm_layers",
    "unstack_tasks",
    "use_all_tasks",
    "use_route",
    "use_task",
]
