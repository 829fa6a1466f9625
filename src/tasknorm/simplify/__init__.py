"""Simplifying a trained TSσBN model into a cheaper task tree (``tasknorm simplify``, see
:mod:`tasknorm.simplify.command`): candidate trees from the gates under a FLOPs budget, merged
group norms, the search and its report."""

from tasknorm.simplify.candidates import (
    Candidate,
    candidate_trees,
    flops_ratio,
    level_flops,
    level_gates,
    random_candidates,
    random_tree,
)

__all__ = ["Candidate", "candidate_trees", "flops_ratio", "level_flops", "level_gates",
           "random_candidates", "random_tree"]
