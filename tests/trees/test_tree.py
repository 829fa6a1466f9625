import pytest

from tasknorm.trees import TaskTree

TASKS = ("a", "b", "c", "d")


def test_groups_are_put_in_canonical_order():
    tree = TaskTree.from_groups(TASKS, [[["d", "b", "c", "a"]], [["d", "c"], ["b", "a"]],
                                        [["c"], ["b", "a"], ["d"]]])
    assert tree.levels == ((("a", "b", "c", "d"),), (("a", "b"), ("c", "d")),
                           (("a", "b"), ("c",), ("d",)))
    assert tree.group_names(2) == ("a+b", "c", "d")
    assert tree.parents(0) == (0,)
    assert tree.parents(1) == (0, 0)
    assert tree.parents(2) == (0, 1, 1)
    assert tree.groups_per_level == (1, 2, 3)
    assert [tree.group_of(2, t) for t in TASKS] == [0, 0, 1, 2]
    assert str(tree) == "a+b+c+d | a+b, c+d | a+b, c, d"
    assert TaskTree.from_groups(TASKS, tree.to_lists()) == tree


def test_separate_and_shared_trees():
    assert TaskTree.separate(TASKS, 2).groups_per_level == (4, 4)
    assert TaskTree.shared(TASKS, 3).groups_per_level == (1, 1, 1)
    assert TaskTree.separate(TASKS, 2).parents(1) == (0, 1, 2, 3)


@pytest.mark.parametrize(("levels", "message"), [
    ([], "needs a list of levels"),
    ("a", "needs a list of levels"),
    ([[]], "level 0 .* non-empty list of groups"),
    ([[[]]], "level 0 .* the group \\[\\]"),
    ([["ab"]], "the group 'ab'"),
    ([[["a", "b", "c", "e"]]], "unknown tasks \\['e'\\]"),
    ([[["a", "b"], ["c"]]], "level 0 .* misses \\['d'\\]"),
    ([[["a", "b"], ["b", "c", "d"]]], "repeats \\['b'\\]"),
    ([[["a", "b"], ["c", "d"]], [["a", "c"], ["b"], ["d"]]],
     "group \\['a', 'c'\\] of level 1 takes tasks from"),
])
def test_bad_trees_are_refused(levels, message):
    with pytest.raises(ValueError, match=message):
        TaskTree.from_groups(TASKS, levels)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'e'"):
        TaskTree.separate(TASKS, 1).group_of(0, "e")
