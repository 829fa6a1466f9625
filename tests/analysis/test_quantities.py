"""Capacity, specialization and similarity on gates set by hand, where the answer is known."""

import itertools
import math

import pytest
import torch

from tasknorm.analysis import (
    active_fraction,
    active_jaccard,
    active_task_counts,
    capacity,
    category_sweep,
    chance_cosine,
    chance_jaccard,
    channel_order,
    cluster_tasks,
    gate_cosine,
    gate_matrices,
    mean_gate,
    specialization,
    tau_sweep,
)

HIGH, LOW = 0.95, 0.05


@pytest.fixture
def disjoint():
    """Two tasks using disjoint halves of an 8-channel layer."""
    first = torch.tensor([HIGH] * 4 + [LOW] * 4)
    return torch.stack([first, first.flip(0)])


def test_disjoint_halves(disjoint, gated_model):
    gates = gate_matrices(gated_model(disjoint))["0"]
    torch.testing.assert_close(active_fraction(gates), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(mean_gate(gates), torch.tensor([0.5, 0.5]))
    counts = specialization(gates)
    assert counts["by_k"].tolist() == [0, 8, 0]
    assert (int(counts["unused"]), int(counts["exclusive"]), int(counts["shared"])) == (0, 8, 0)
    assert counts["exclusive_per_task"].tolist() == [4, 4]
    torch.testing.assert_close(active_jaccard(gates), torch.eye(2))
    by_hand = 8 * HIGH * LOW / (4 * (HIGH ** 2 + LOW ** 2))  # a·b / (|a| |b|)
    assert float(gate_cosine(gates)[0, 1]) == pytest.approx(by_hand, rel=1e-5)
    assert float(gate_cosine(gates)[0, 0]) == pytest.approx(1.0)


def test_equal_gates_are_all_shared():
    gates = torch.rand(1, 10, generator=torch.Generator().manual_seed(0)).clamp(0.55, 0.99)
    gates = gates.expand(3, 10)
    counts = specialization(gates)
    assert counts["by_k"].tolist() == [0, 0, 0, 10]
    assert int(counts["shared"]) == int(counts["shared_by_all"]) == 10
    torch.testing.assert_close(gate_cosine(gates), torch.ones(3, 3))
    torch.testing.assert_close(active_jaccard(gates), torch.ones(3, 3))


def test_layer_below_tau_is_unused(disjoint, gated_model):
    closed = torch.full((2, 5), 0.3)
    result = capacity(gate_matrices(gated_model(disjoint, closed)))
    torch.testing.assert_close(result["active_fraction"][:, 1], torch.zeros(2))
    torch.testing.assert_close(result["mean_gate"][:, 1], torch.full((2,), 0.3))
    assert specialization(closed)["by_k"].tolist() == [5, 0, 0]
    assert torch.isnan(active_jaccard(closed)).all()
    assert torch.isnan(chance_jaccard(closed)).all()
    # the network is the channel-weighted average of the layers: (8 · 0.5 + 5 · 0) / 13
    torch.testing.assert_close(result["network_active_fraction"], torch.full((2,), 4 / 13))


def test_tau_moves_the_answer_monotonically():
    gates = torch.rand(4, 200, generator=torch.Generator().manual_seed(0))
    taus = [i / 20 for i in range(21)]
    sweep = tau_sweep(gates, taus)
    assert (sweep[1:] <= sweep[:-1]).all()
    torch.testing.assert_close(sweep[0], torch.ones(4))  # every gate > 0
    torch.testing.assert_close(sweep[-1], torch.zeros(4))  # no gate > 1
    categories = category_sweep(gates, taus)
    total = categories["unused"] + categories["exclusive"] + categories["shared"]
    torch.testing.assert_close(total, torch.ones(21))
    assert (categories["unused"][1:] >= categories["unused"][:-1]).all()
    with pytest.raises(ValueError, match="tau must lie in"):
        active_fraction(gates, 1.5)


def test_shared_by_k_and_exclusive_per_task():
    gates = torch.tensor([[HIGH, HIGH, HIGH, LOW, LOW],
                          [HIGH, HIGH, LOW, HIGH, LOW],
                          [HIGH, LOW, LOW, LOW, LOW]])
    assert active_task_counts(gates).tolist() == [3, 2, 1, 1, 0]
    counts = specialization(gates)
    assert counts["by_k"].tolist() == [1, 2, 1, 1]
    assert counts["exclusive_per_task"].tolist() == [1, 1, 0]
    assert int(counts["shared"]) == 2 and int(counts["shared_by_all"]) == 1
    assert channel_order(gates).tolist() == [0, 1, 2, 3, 4]
    assert channel_order(gates.flip(1)).tolist() == [4, 3, 2, 1, 0]


def test_chance_cosine_is_the_mean_over_permutations():
    gates = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.3, 0.8, 0.5, 0.7]])
    cosines = [float(gate_cosine(torch.stack([gates[0], gates[1, list(p)]]))[0, 1])
               for p in itertools.permutations(range(4))]
    assert float(chance_cosine(gates)[0, 1]) == pytest.approx(sum(cosines) / len(cosines))


def test_jaccard_by_hand():
    gates = torch.tensor([[HIGH, HIGH, HIGH, LOW], [LOW, HIGH, HIGH, HIGH]])
    assert float(active_jaccard(gates)[0, 1]) == pytest.approx(2 / 4)
    # random sets of 3 and 3 among 4: expected intersection 9/4, union 6 − 9/4
    assert float(chance_jaccard(gates)[0, 1]) == pytest.approx((9 / 4) / (6 - 9 / 4))


def test_dendrogram_joins_similar_tasks_first():
    # tasks 0 and 2 use the same channels, 1 and 3 the other ones
    a = torch.tensor([HIGH] * 4 + [LOW] * 4)
    gates = torch.stack([a, a.flip(0), a * 0.9, a.flip(0) * 0.95])
    result = cluster_tasks(gate_cosine(gates))
    first, second, root = result["linkage"]
    assert {frozenset(map(int, row[:2])) for row in (first, second)} == {
        frozenset({0, 2}), frozenset({1, 3})}
    assert root[2] > max(first[2], second[2])
    order = result["order"]
    assert abs(order.index(0) - order.index(2)) == 1 and abs(order.index(1) - order.index(3)) == 1
    assert sorted(order) == [0, 1, 2, 3]
    assert math.isclose(first[2], 0.0, abs_tol=1e-6)  # 0 and 2 (or 1 and 3) are parallel


def test_clustering_input_errors():
    with pytest.raises(ValueError, match="at least 2 tasks"):
        cluster_tasks(torch.ones(1, 1))
    with pytest.raises(ValueError, match="without NaN"):
        cluster_tasks(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="unknown linkage"):
        cluster_tasks(torch.eye(2), method="ward2")
