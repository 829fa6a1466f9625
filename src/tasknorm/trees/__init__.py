"""Task trees: a backbone cut into levels, each level a partition of the tasks into groups with
their own σ-gated norms and one shared pass per group (between the layers of
:mod:`tasknorm.nn` and the models of :mod:`tasknorm.models`)."""

from tasknorm.trees.network import (
    EXECUTIONS,
    MERGES,
    Execution,
    Merge,
    TaskTreeNetwork,
    layers_by_level,
)
from tasknorm.trees.state import StageState, initial_state, select_groups
from tasknorm.trees.tree import TaskTree

__all__ = [
    "EXECUTIONS",
    "MERGES",
    "Execution",
    "Merge",
    "StageState",
    "TaskTree",
    "TaskTreeNetwork",
    "initial_state",
    "layers_by_level",
    "select_groups",
]
