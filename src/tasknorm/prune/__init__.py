"""Structured pruning with σBN and Receding Neuron Importances (arXiv:2204.06404): regularisers,
channel importance, one-shot pruning through Torch-Pruning's dependency graph, deployment of the
smaller model, and per-task sub-networks of TSσBN models."""

from tasknorm.prune.deploy import load_pruned, save_pruned, to_plain
from tasknorm.prune.importance import channel_importance
from tasknorm.prune.measure import accuracy, count_macs, measure_latency, model_stats
from tasknorm.prune.pruners import TaskNormPruner, customized_pruners
from tasknorm.prune.regularizers import (
    l1_scale_penalty,
    make_regularizer,
    receding_importance_penalty,
)
from tasknorm.prune.surgery import (
    PruneUnit,
    PruningPlan,
    apply_plan,
    build_graph,
    mask_plan,
    plan_by_threshold,
    plan_pruning,
    prune_model,
)
from tasknorm.prune.tasks import task_subnetwork

__all__ = [
    "PruneUnit",
    "PruningPlan",
    "TaskNormPruner",
    "accuracy",
    "apply_plan",
    "build_graph",
    "channel_importance",
    "count_macs",
    "customized_pruners",
    "l1_scale_penalty",
    "load_pruned",
    "make_regularizer",
    "mask_plan",
    "measure_latency",
    "model_stats",
    "plan_by_threshold",
    "plan_pruning",
    "prune_model",
    "receding_importance_penalty",
    "save_pruned",
    "task_subnetwork",
    "to_plain",
]
