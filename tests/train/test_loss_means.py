import pytest
import torch

from tasknorm.train.loss_means import TaskLossMeans


def test_means_equal_the_per_sample_mean_of_each_task():
    torch.manual_seed(0)
    per_sample = [torch.rand(size, 3) for size in (5, 2, 7)]
    means = TaskLossMeans(3)
    for batch in per_sample:
        means.update(batch.mean(dim=0), len(batch))
    torch.testing.assert_close(means.compute(), torch.cat(per_sample).mean(dim=0))


def test_a_non_finite_batch_makes_only_its_task_non_finite():
    means = TaskLossMeans(2)
    means.update(torch.tensor([1.0, float("nan")]), 4)
    means.update(torch.tensor([3.0, 1.0]), 4)
    first, second = means.compute().tolist()
    assert first == 2.0 and second != second


def test_wrong_number_of_losses():
    with pytest.raises(ValueError, match="expected 2 task losses, got shape \\(3,\\)"):
        TaskLossMeans(2).update(torch.zeros(3), 1)
