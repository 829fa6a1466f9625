import copy

import lightning as L
import pytest
import torch

from tasknorm.data import MultiDigitsDataModule
from tasknorm.nn import TaskSigmaBatchNorm2d
from tasknorm.simplify.model import recalibrate, simplified_module
from tasknorm.train import MultiTaskModule
from tasknorm.trees import TaskTree

TASKS = ("left", "right", "sum_parity")


@pytest.fixture
def trained(tmp_path):
    """A TSσBN module with random gates and statistics (so that tasks differ)."""
    data = MultiDigitsDataModule(sizes=(64, 16, 16), batch_size=16, cache_dir=str(tmp_path),
                                 tasks=list(TASKS))
    torch.manual_seed(0)
    module = MultiTaskModule(data.tasks, backbone_args={"width": 8})
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, TaskSigmaBatchNorm2d):
                layer.gate_logit.normal_()
                layer.running_mean.normal_()
                layer.running_var.uniform_(0.5, 2.0)
    return module.eval()


X = torch.randn(5, 1, 23, 23)


def test_the_separate_tree_computes_what_the_trained_model_computes(trained):
    simplified = simplified_module(trained, TaskTree.separate(TASKS, 4))
    assert simplified.hparams.architecture == "tree"
    assert not simplified.training
    expected, actual = trained(X), simplified(X)
    for task in TASKS:
        torch.testing.assert_close(actual[task], expected[task])


def test_groups_start_from_their_members_and_the_trained_model_is_untouched(trained):
    before = copy.deepcopy(trained.state_dict())
    tree = TaskTree.from_groups(TASKS, [[list(TASKS)], [["left", "sum_parity"], ["right"]]])
    simplified = simplified_module(trained, tree, merge="mean")
    first = trained.model.backbone.features[1]
    grouped = simplified.model.backbone.backbone.features[1]
    assert grouped.tasks == ("left+right+sum_parity",)
    torch.testing.assert_close(grouped.gate_logit[0], first.gate_logit.mean(0))
    last = trained.model.backbone.features[10]
    grouped = simplified.model.backbone.backbone.features[10]
    assert grouped.tasks == ("left+sum_parity", "right")
    torch.testing.assert_close(grouped.running_mean[1], last.running_mean[1])
    torch.testing.assert_close(grouped.running_mean[0], last.running_mean[[0, 2]].mean(0))
    for name, value in trained.state_dict().items():
        same = torch.equal(value, before[name]) if torch.is_tensor(value) else value == before[name]
        assert same, name


def test_a_checkpoint_of_the_simplified_module_loads_as_a_tree(trained, tmp_path):
    tree = TaskTree.from_groups(TASKS, [[list(TASKS)], [["left", "sum_parity"], ["right"]]])
    simplified = simplified_module(trained, tree)
    fit = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    fit.strategy.connect(simplified)
    fit.save_checkpoint(tmp_path / "simplified.ckpt")
    loaded = MultiTaskModule.load_from_checkpoint(tmp_path / "simplified.ckpt",
                                                  tasks=list(trained.tasks.values())).eval()
    assert loaded.model.backbone.tree == tree
    expected, actual = simplified(X), loaded(X)
    for task in TASKS:
        torch.testing.assert_close(actual[task], expected[task])


def test_errors(trained):
    with pytest.raises(ValueError, match="tree is for tasks"):
        simplified_module(trained, TaskTree.separate(("left", "right"), 2))
    hard = MultiTaskModule(list(trained.tasks.values()), architecture="hard",
                           backbone_args={"width": 8})
    with pytest.raises(ValueError, match="needs a TSσBN model"):
        simplified_module(hard, TaskTree.separate(TASKS, 2))


def test_recalibration_gives_the_statistics_of_the_new_inputs(trained):
    tree = TaskTree.from_groups(TASKS, [[list(TASKS)], [["left", "sum_parity"], ["right"]]])
    simplified = simplified_module(trained, tree)
    batches = [torch.randn(8, 1, 23, 23) for _ in range(3)]
    recalibrate(simplified, batches)
    assert not simplified.training
    first = simplified.model.backbone.backbone.features[1]
    conv = simplified.model.backbone.backbone.features[0]
    means = torch.stack([conv(b).mean((0, 2, 3)) for b in batches]).mean(0).detach()
    torch.testing.assert_close(first.running_mean[0], means)
    assert first.momentum == 0.1 and first.num_batches_tracked.tolist() == [3]
