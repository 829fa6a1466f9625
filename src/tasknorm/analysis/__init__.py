"""Analysis of trained TSσBN models: gate matrices, capacity allocation, filter
specialization, task relationships, gradient interaction, figures and the report of
``tasknorm analyze``.

The functions work on plain ``{layer: (tasks, channels)}`` gate dicts, so CNNs (TSσBN) and
Transformers (task σ LayerNorm) are analysed alike, and hand-made gates work too.
"""

from tasknorm.analysis.capacity import (
    DEFAULT_TAU,
    DEFAULT_TAUS,
    active,
    active_fraction,
    capacity,
    mean_gate,
    tau_sweep,
)
from tasknorm.analysis.checkpoint import gated_backbone, gradient_histories, read_checkpoint
from tasknorm.analysis.command import build_report, write_report
from tasknorm.analysis.gates import (
    Gates,
    NoGatesError,
    concatenated,
    gate_matrices,
    model_tasks,
    short_names,
)
from tasknorm.analysis.relationships import (
    active_jaccard,
    chance_cosine,
    chance_jaccard,
    cluster_tasks,
    gate_cosine,
)
from tasknorm.analysis.report import analyze_gates, analyze_gradients
from tasknorm.analysis.specialization import (
    active_task_counts,
    category_sweep,
    channel_groups,
    channel_order,
    specialization,
)

__all__ = [
    "DEFAULT_TAU",
    "DEFAULT_TAUS",
    "Gates",
    "NoGatesError",
    "active",
    "active_fraction",
    "active_jaccard",
    "active_task_counts",
    "analyze_gates",
    "analyze_gradients",
    "build_report",
    "capacity",
    "category_sweep",
    "chance_cosine",
    "chance_jaccard",
    "channel_groups",
    "channel_order",
    "cluster_tasks",
    "concatenated",
    "gate_cosine",
    "gate_matrices",
    "gated_backbone",
    "gradient_histories",
    "mean_gate",
    "model_tasks",
    "read_checkpoint",
    "short_names",
    "specialization",
    "tau_sweep",
    "write_report",
]
