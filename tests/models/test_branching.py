import pytest
import torch

from tasknorm.models import MultiTaskModel, count_flops, digits_cnn
from tasknorm.models.stages import initial_state, split_stages
from tasknorm.tasks import ClassificationTask

TASKS = [ClassificationTask("left", 10), ClassificationTask("right", 5)]
X = torch.randn(4, 1, 23, 23)


def model(architecture, **args):
    torch.manual_seed(0)
    return MultiTaskModel(lambda: digits_cnn(width=8), TASKS, architecture,
                          architecture_args=args or None)


def set_logits(ltb, parents):
    """Put (almost) all probability on the given parents: ``parents[j][child]``."""
    with torch.no_grad():
        for logits, chosen in zip([*ltb.branch_logits, ltb.task_logits], parents, strict=True):
            logits.zero_()
            logits[torch.arange(len(chosen)), chosen] = 1e4


@pytest.mark.parametrize("hard", [False, True])
def test_all_probability_on_one_node_per_stage_is_hard_sharing(hard):
    net = model("ltb", hard=hard)
    ltb = net.backbone
    set_logits(ltb, [[0, 0]] * 3 + [[0, 0]])
    reference = model("hard")
    reference.backbone.load_state_dict(ltb.copies[0].backbone.state_dict())
    reference.heads.load_state_dict(net.heads.state_dict())
    for train in (True, False):  # Gumbel samples in training, the argmax tree in evaluation
        net.train(train)
        reference.train(train)
        expected = reference(X)
        for task, output in net(X).items():
            torch.testing.assert_close(output, expected[task], rtol=1e-5, atol=1e-5)
    assert ltb.tree() == [[0, 0]] * 4
    net.eval()
    reference.eval()
    assert count_flops(net, X[:1]) == count_flops(reference, X[:1])  # only the path runs


def test_evaluation_runs_the_hard_tree():
    """Stage 2: both nodes read node 1; stage 3: node 0 reads 1, node 1 reads 0; stage 4: each
    its own; left reads node 1, right node 0. Back from the leaves, left runs copies 1, 0, 1, 1
    at stages 1-4, right 1, 1, 0, 0."""
    net = model("ltb", nodes=2).eval()
    ltb = net.backbone
    parents = [[1, 1], [1, 0], [0, 1], [1, 0]]
    set_logits(ltb, parents)
    assert ltb.tree() == parents
    stages = [split_stages(copy.backbone) for copy in ltb.copies]

    def path(copies):
        state = initial_state(X)
        for index, copy in enumerate(copies):
            state = stages[copy][index](state)
        return state.features

    with torch.no_grad():
        outputs = net(X)
        for task, copies in (("left", [1, 0, 1, 1]), ("right", [1, 1, 0, 0])):
            torch.testing.assert_close(outputs[task], net.heads[task](path(copies)))


def test_training_mixes_parents_with_gumbel_softmax_samples():
    net = model("ltb", nodes=3, temperature=0.5).train()
    ltb = net.backbone
    assert [tuple(p.shape) for p in ltb.branch_logits] == [(3, 3)] * 3
    assert ltb.task_logits.shape == (2, 3)
    weights = ltb._sample(ltb.task_logits)  # one-hot by default: training runs one tree
    assert torch.equal(weights.sort(dim=1).values, torch.tensor([[0.0, 0, 1]] * 2))
    torch.manual_seed(1)
    first = net(X)["left"]
    torch.manual_seed(1)
    torch.testing.assert_close(net(X)["left"], first)  # the samples come from torch's RNG
    assert not torch.equal(net(X)["left"], first)
    sum(output.sum() for output in net(X).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in [*ltb.branch_logits, ltb.task_logits])


@pytest.mark.parametrize(("args", "message"), [
    ({"nodes": 0}, "nodes must be an integer >= 1, got 0"),
    ({"temperature": 0}, "temperature must be a positive number, got 0"),
    ({"hard": "yes"}, "hard must be true or false, got 'yes'"),
])
def test_bad_options(args, message):
    with pytest.raises(ValueError, match=message):
        model("ltb", **args)
