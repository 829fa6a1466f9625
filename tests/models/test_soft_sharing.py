import pytest
import torch
import torch.nn.functional as F

from tasknorm.models import MultiTaskModel, digits_cnn
from tasknorm.models.soft_sharing import CallerStatistics, CrossStitchUnit, resize_like
from tasknorm.models.stages import initial_state
from tasknorm.tasks import ClassificationTask

TASKS = [ClassificationTask("left", 10), ClassificationTask("right", 5)]
X = torch.randn(4, 1, 23, 23)


def model(architecture, **kwargs):
    torch.manual_seed(0)
    return MultiTaskModel(lambda: digits_cnn(width=8), TASKS, architecture, **kwargs)


def assert_same_outputs(net, reference, x=X):
    """Equal outputs in training mode (batch statistics) and in evaluation mode."""
    for train in (True, False):
        net.train(train)
        reference.train(train)
        expected = reference(x)
        for task, output in net(x).items():
            torch.testing.assert_close(output, expected[task], rtol=1e-5, atol=1e-5)


def test_cross_stitch_units_start_near_identity():
    unit = CrossStitchUnit(3, 4, "map", self_weight=0.8)
    expected = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    for channel in range(4):
        torch.testing.assert_close(unit.alpha.detach()[:, :, channel], expected)
    assert CrossStitchUnit(1, 4, "map").alpha.detach().eq(1).all()
    with pytest.raises(ValueError, match="self_weight must lie in"):
        CrossStitchUnit(2, 4, "map", self_weight=1.5)


@pytest.mark.parametrize(("form", "shape", "channel_dim"), [
    ("map", (2, 3, 4, 5), 1), ("vector", (2, 3), 1), ("tokens", (2, 6, 3), 2)])
def test_cross_stitch_unit_mixes_each_channel_with_its_own_matrix(form, shape, channel_dim):
    torch.manual_seed(0)
    unit = CrossStitchUnit(2, 3, form)
    with torch.no_grad():
        unit.alpha.normal_()
    features = [torch.randn(shape), torch.randn(shape)]
    outputs = unit(features)
    alpha = unit.alpha.detach()
    for t in range(2):
        for c in range(3):
            expected = sum(alpha[t, s, c] * features[s].select(channel_dim, c) for s in range(2))
            torch.testing.assert_close(outputs[t].select(channel_dim, c), expected)


def test_cross_stitch_with_identity_units_is_separate_networks():
    net = model("cross_stitch")
    with torch.no_grad():
        for unit in net.backbone.units:
            unit.alpha.copy_(torch.eye(2)[:, :, None].expand_as(unit.alpha))
    single = model("single_task")
    for task in ("left", "right"):
        single.backbones[task].load_state_dict(net.backbone.columns[task].backbone.state_dict())
        single.heads[task].load_state_dict(net.heads[task].state_dict())
    assert_same_outputs(net, single)
    assert len(net.backbone.units) == 4  # after every stage, the last included


def test_mtan_with_masks_fixed_to_one_is_hard_sharing():
    net = model("mtan")
    with torch.no_grad():
        for masks in net.backbone.attention:
            for mask in masks.values():  # h's norm outputs 100: sigmoid(100) == 1 in float32
                mask.h.norm.weight.zero_()
                mask.h.norm.bias.fill_(100.0)
    hard = model("hard")
    hard.backbone.load_state_dict(net.backbone.shared.backbone.state_dict())
    hard.heads.load_state_dict(net.heads.state_dict())
    assert_same_outputs(net, hard)


def test_mtan_follows_the_attention_recursion():
    """â_1 = h(g(p_1)) ⊙ p_1, â_j = h(g([p_j; resize(f_j(â_{j-1}))])) ⊙ p_j, written out."""
    net = model("mtan").eval()
    mtan = net.backbone
    state = initial_state(X)
    attended = {}
    with torch.no_grad():
        for j, stage in enumerate(mtan.shared.stages):
            state = stage(state)
            p = state.features
            for index, task in enumerate(("left", "right")):
                mask = mtan.attention[j][task]
                if j == 0:
                    inputs = p
                else:
                    previous = mtan.extractors[j - 1](attended[task], index)
                    previous = (previous.mean(dim=(2, 3)) if p.dim() == 2 else
                                F.adaptive_avg_pool2d(previous, p.shape[-2:]))
                    inputs = torch.cat([p, previous], dim=1)
                attended[task] = mask(inputs) * p
        outputs = net(X)
    for task in ("left", "right"):
        torch.testing.assert_close(outputs[task], net.heads[task](attended[task]))
    assert len(mtan.extractors) == 3  # f_j is shared by the tasks; masks are per task


def test_resize_like():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(resize_like(x, torch.zeros(1, 1, 2, 2)),
                               torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert resize_like(x, torch.zeros(1, 1, 7, 9)).shape == (1, 1, 7, 9)
    torch.testing.assert_close(resize_like(x, torch.zeros(1, 1)), torch.tensor([[7.5]]))
    tokens = torch.arange(7.0).reshape(1, 7, 1)  # a prefix token, then a 2 × 3 grid
    torch.testing.assert_close(resize_like(tokens, torch.zeros(1, 1, 2, 3)),
                               torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]]))
    torch.testing.assert_close(resize_like(tokens, torch.zeros(1, 1)), torch.tensor([[3.0]]))


def test_caller_statistics_are_a_batch_norm_per_caller_with_shared_affine():
    torch.manual_seed(0)
    norm = CallerStatistics(3, 2)
    with torch.no_grad():
        norm.weight.uniform_()
        norm.bias.uniform_()
    references = [torch.nn.BatchNorm2d(3) for _ in range(2)]
    for reference in references:
        reference.load_state_dict({"weight": norm.weight, "bias": norm.bias}, strict=False)
    inputs = [torch.randn(4, 3, 5, 5), 3 + 2 * torch.randn(4, 3, 5, 5)]
    for train in (True, False):
        norm.train(train)
        for caller, (x, reference) in enumerate(zip(inputs, references, strict=True)):
            torch.testing.assert_close(norm(x, caller), reference.train(train)(x))
    for caller, reference in enumerate(references):
        torch.testing.assert_close(norm.running_mean[caller], reference.running_mean)
        torch.testing.assert_close(norm.running_var[caller], reference.running_var)
