"""Tasks (head, loss, metrics with directions) and the multi-task Δm."""

from tasknorm.tasks.delta import POOLINGS, delta_m
from tasknorm.tasks.task import ClassificationTask, Task

__all__ = ["POOLINGS", "ClassificationTask", "Task", "delta_m"]
