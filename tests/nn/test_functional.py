import pytest
import torch

from tasknorm.nn.functional import fold_tasks, unfold_tasks


@pytest.mark.parametrize("layout", ["task_major", "sample_major"])
@pytest.mark.parametrize("shape", [(12, 4), (12, 4, 3), (12, 4, 3, 5)])
def test_unfold_inverts_fold(layout, shape):
    x = torch.randn(shape)
    folded = fold_tasks(x, 3, layout)
    assert folded.shape == (4, 12, *shape[2:])
    assert torch.equal(unfold_tasks(folded, 3, layout), x)


@pytest.mark.parametrize("layout", ["task_major", "sample_major"])
def test_fold_puts_task_t_channel_c_at_t_times_c(layout):
    num_tasks, n, channels = 3, 2, 4
    x = torch.randn(num_tasks * n, channels, 5)
    folded = fold_tasks(x, num_tasks, layout)
    for t in range(num_tasks):
        for s in range(n):
            row = t * n + s if layout == "task_major" else s * num_tasks + t
            for c in range(channels):
                assert torch.equal(folded[s, t * channels + c], x[row, c])


def test_sample_major_fold_is_a_view():
    x = torch.randn(6, 4, 3, 3)
    assert fold_tasks(x, 2, "sample_major").data_ptr() == x.data_ptr()
    assert fold_tasks(x, 2, "sample_major")._base is x
