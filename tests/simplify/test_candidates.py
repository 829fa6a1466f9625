import itertools
import random
from functools import partial

import pytest
import torch

from tasknorm.models import MultiTaskModel, StagedBackbone, count_flops, digits_cnn
from tasknorm.nn import convert
from tasknorm.simplify import (
    candidate_trees,
    candidates,
    flops_ratio,
    level_flops,
    level_gates,
    random_candidates,
    random_tree,
)
from tasknorm.tasks import ClassificationTask
from tasknorm.trees import TaskTree

TASKS = ("a", "b", "c", "d")
# a and b use the first half of the channels, c and d the second; b and d a little less
PATTERN = torch.tensor([[0.9] * 4 + [0.1] * 4, [0.8] * 4 + [0.2] * 4,
                        [0.1] * 4 + [0.9] * 4, [0.2] * 4 + [0.8] * 4])


def test_groups_follow_the_gates_and_stay_within_budget():
    gates = [torch.full((4, 8), 0.5), PATTERN, PATTERN]
    candidates = candidate_trees(TASKS, gates, [10, 10, 10], budget=2.0)
    trees = [str(c.tree) for c in candidates]
    assert trees[0] == "a+b+c+d | a+b+c+d | a+b+c+d"
    assert "a+b+c+d | a+b+c+d | a+b, c+d" in trees
    assert "a+b+c+d | a+b, c+d | a+b, c+d" in trees
    for candidate in candidates:
        assert candidate.flops_ratio <= 2.0
        for level in candidate.tree.levels[1:]:  # all tasks together, or within one half
            assert all(group == TASKS or set(group) <= {"a", "b"} or set(group) <= {"c", "d"}
                       for group in level)
    assert [c.flops_ratio for c in candidates] == sorted(c.flops_ratio for c in candidates)
    assert len(set(trees)) == len(trees)


def test_a_large_budget_allows_every_task_alone_and_the_sample_is_capped_and_seeded():
    gates = [PATTERN] * 3
    everything = candidate_trees(TASKS, gates, [10, 10, 10], budget=4.0, max_trees=1000)
    assert str(everything[-1].tree) == "a, b, c, d | a, b, c, d | a, b, c, d"
    assert everything[-1].flops_ratio == pytest.approx(4.0)
    sample = candidate_trees(TASKS, gates, [10, 10, 10], budget=4.0, max_trees=5, seed=3)
    assert len(sample) == 5 < len(everything)
    assert {str(c.tree) for c in sample} <= {str(c.tree) for c in everything}
    again = candidate_trees(TASKS, gates, [10, 10, 10], budget=4.0, max_trees=5, seed=3)
    assert sample == again


def test_many_tasks_and_levels_are_sampled_without_listing_every_tree(monkeypatch):
    """CelebA's 40 attributes over 5 stages allow far more trees than can be listed: past the
    enumeration limit they are drawn level by level, distinct, within budget and seeded."""
    monkeypatch.setattr(candidates, "ENUMERATION_LIMIT", 200)  # the same path, sooner
    gates = [torch.rand(40, 16, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    tasks = [f"t{i}" for i in range(40)]
    flops = [10, 10, 10, 10, 10]
    drawn = candidate_trees(tasks, gates, flops, budget=6.0, max_trees=30, seed=1)
    assert len(drawn) == 30 == len({str(c.tree) for c in drawn})
    assert all(c.flops_ratio <= 6.0 for c in drawn)
    assert drawn == candidate_trees(tasks, gates, flops, budget=6.0, max_trees=30, seed=1)
    assert drawn != candidate_trees(tasks, gates, flops, budget=6.0, max_trees=30, seed=2)


def test_flops_ratio_is_what_the_flop_counter_measures():
    tasks = [ClassificationTask(name, 2) for name in TASKS]
    build = partial(digits_cnn, width=8)
    x = torch.randn(1, 1, 23, 23)
    hard = count_flops(MultiTaskModel(build, tasks, "hard").eval(), x)
    stages = StagedBackbone(build(), levels=2).stages
    flops = level_flops(stages, x)
    heads = hard - sum(flops)
    assert heads > 0
    tree = TaskTree.from_groups(TASKS, [[list(TASKS)], [["a", "b"], ["c"], ["d"]]])
    model = MultiTaskModel(build, tasks, "tree", architecture_args={"groups": tree.to_lists()})
    measured = count_flops(model.eval(), x) / hard
    assert flops_ratio(tree.groups_per_level, flops, heads) == pytest.approx(measured)


def test_level_gates_are_each_stages_gates_side_by_side():
    backbone = convert(digits_cnn(width=8), TASKS)
    stages = StagedBackbone(backbone, levels=2).stages
    gates = level_gates(backbone, stages)
    assert [tuple(g.shape) for g in gates] == [(4, 8 + 16), (4, 16 + 32)]
    torch.testing.assert_close(gates[0][:, :8], backbone.features[1].gate.detach())
    tsbn = convert(digits_cnn(width=8), TASKS, kind="task")
    with pytest.raises(ValueError, match="stage 0 of DigitsCNN has no σ-gated task norm"):
        level_gates(tsbn, StagedBackbone(tsbn, levels=2).stages)


COUNTS = list(itertools.combinations_with_replacement(range(1, 5), 3))  # non-decreasing


@pytest.mark.parametrize("counts", COUNTS)
def test_random_trees_have_the_asked_groups_and_are_seeded(counts):
    trees = [random_tree(TASKS, counts, random.Random(seed)) for seed in range(20)]
    for tree in trees:  # from_groups in random_tree checks that each level nests in the last
        assert tree.groups_per_level == counts and tree.tasks == TASKS
    assert trees == [random_tree(TASKS, counts, random.Random(seed)) for seed in range(20)]


def test_random_trees_reach_every_partition():
    """All 7 partitions of 4 tasks into 2 groups come up, not a fixed few."""
    rng = random.Random(0)
    seen = {random_tree(TASKS, [2], rng).levels[0] for _ in range(300)}
    assert len(seen) == 7


def test_random_candidates_keep_each_candidates_groups_and_flops():
    gates = [PATTERN] * 3
    candidates = candidate_trees(TASKS, gates, [10, 10, 10], budget=3.0)
    randomised = random_candidates(TASKS, candidates, seed=1)
    assert [c.flops_ratio for c in randomised] == [c.flops_ratio for c in candidates]
    assert [c.tree.groups_per_level for c in randomised] == [
        c.tree.groups_per_level for c in candidates]
    assert randomised != candidates and randomised == random_candidates(TASKS, candidates, 1)


@pytest.mark.parametrize(("counts", "message"), [
    ([0], "level 0 cannot have 0 groups: it needs between 1"),
    ([5], "level 0 cannot have 5 groups: it needs between 1 .* and 4"),
    ([3, 2], "level 1 cannot have 2 groups: it needs between 3"),
])
def test_random_tree_errors(counts, message):
    with pytest.raises(ValueError, match=message):
        random_tree(TASKS, counts, random.Random(0))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget": 0.9}, "budget must be at least 1"),
    ({"max_trees": 0}, "max_trees must be at least 1"),
    ({"flops": [10]}, "2 levels of gates but 1 levels of FLOPs"),
    ({"gates": [PATTERN, PATTERN[:3]]}, "gates of level 1 must be \\(4 tasks, channels\\)"),
])
def test_errors(kwargs, message):
    args = {"gates": [PATTERN, PATTERN], "flops": [10, 10], "budget": 2.0} | kwargs
    with pytest.raises(ValueError, match=message):
        candidate_trees(TASKS, **args)
