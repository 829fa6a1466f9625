"""Dense tasks: losses against hand computations, zero loss on all-invalid batches, metrics."""

import numpy as np
import pytest
import torch

from tasknorm.tasks import (
    DepthAbsError,
    DepthRelError,
    DepthRMSE,
    DepthTask,
    EdgeTask,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalsTask,
    NormalWithinAngle,
    SaliencyTask,
    SegmentationTask,
)

RNG = np.random.default_rng(1)


def tensor(array, grad=False):
    return torch.tensor(array, dtype=torch.float32, requires_grad=grad)


def log_sigmoid(x):
    return -np.logaddexp(0, -x)


def test_segmentation_loss_is_cross_entropy_over_valid_pixels():
    task = SegmentationTask("segmentation", num_classes=4)
    logits = RNG.normal(size=(2, 4, 3, 3))
    target = RNG.integers(0, 4, size=(2, 3, 3))
    target[0, 0] = -1
    target[1, 2, 2] = 9  # outside [0, 4): ignored as well
    terms = []
    for b, i, j in np.ndindex(target.shape):
        if 0 <= target[b, i, j] < 4:
            z = logits[b, :, i, j]
            terms.append(np.log(np.exp(z).sum()) - z[target[b, i, j]])
    loss = task.loss(tensor(logits), torch.tensor(target))
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-6)


def test_depth_loss_is_l1_over_finite_targets():
    task = DepthTask("depth")
    target = RNG.uniform(1, 3, size=(2, 1, 4, 4))
    target[RNG.random(target.shape) < 0.3] = np.nan
    preds = RNG.normal(size=target.shape)
    valid = np.isfinite(target)
    expected = np.abs(preds[valid] - target[valid]).mean()
    assert task.loss(tensor(preds), tensor(target)).item() == pytest.approx(expected, rel=1e-6)


def test_normals_loss_is_one_minus_mean_cosine_of_normalised_predictions():
    task = NormalsTask("normals")
    target = RNG.normal(size=(2, 3, 3, 4))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    target[:, :, 0] = 0  # invalid row
    preds = RNG.normal(size=target.shape)
    cosines = []
    for b, i, j in np.ndindex(2, 3, 4):
        g, p = target[b, :, i, j], preds[b, :, i, j]
        if np.any(g != 0):
            cosines.append(p @ g / np.linalg.norm(p))
    loss = task.loss(tensor(preds), tensor(target))
    assert loss.item() == pytest.approx(1 - np.mean(cosines), rel=1e-6)
    prediction = task.prediction(tensor(preds))
    np.testing.assert_allclose(prediction.norm(dim=1).numpy(), 1, rtol=1e-6)


def test_saliency_and_edge_losses():
    logits = RNG.normal(size=(2, 1, 3, 3))
    target = (RNG.random(logits.shape) < 0.3).astype(float)
    target[0, 0, 0] = np.nan
    valid = ~np.isnan(target)
    t, z = target[valid], logits[valid]
    bce = -(t * log_sigmoid(z) + (1 - t) * log_sigmoid(-z))
    saliency = SaliencyTask("saliency")
    assert saliency.loss(tensor(logits), tensor(target)).item() == pytest.approx(
        bce.mean(), rel=1e-6)
    edges = EdgeTask("edges", pos_weight=0.9)
    weighted = np.where(t > 0.5, 0.9, 0.1) * bce
    assert edges.loss(tensor(logits), tensor(target)).item() == pytest.approx(
        weighted.mean(), rel=1e-6)
    for task in (saliency, edges):
        probabilities = task.prediction(tensor(logits)).numpy()
        np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-6)


ALL_INVALID = [
    (SegmentationTask("segmentation", 3), (1, 3, 2, 2), torch.full((1, 2, 2), -1)),
    (DepthTask("depth"), (1, 1, 2, 2), torch.full((1, 1, 2, 2), float("nan"))),
    (NormalsTask("normals"), (1, 3, 2, 2), torch.zeros(1, 3, 2, 2)),
    (SaliencyTask("saliency"), (1, 1, 2, 2), torch.full((1, 1, 2, 2), float("nan"))),
    (EdgeTask("edges"), (1, 1, 2, 2), torch.full((1, 1, 2, 2), float("nan"))),
]


@pytest.mark.parametrize(("task", "shape", "target"), ALL_INVALID, ids=lambda x: str(x)[:20])
def test_loss_is_zero_with_a_graph_when_no_pixel_is_valid(task, shape, target):
    output = torch.randn(shape, requires_grad=True)
    loss = task.loss(output, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(output.grad, torch.zeros(shape))


def test_keys_primaries_directions_heads():
    expected = {
        SegmentationTask("s", 5): ("miou", 5, {"miou": True, "pixel_accuracy": True}),
        DepthTask("d"): ("abs_err", 1, {"abs_err": False, "rel_err": False, "rmse": False}),
        NormalsTask("n"): ("mean_angle", 3, {
            "mean_angle": False, "median_angle": False, "within_11_25": True,
            "within_22_5": True, "within_30": True}),
        SaliencyTask("sal"): ("miou", 1, {"max_f": True, "miou": True}),
        EdgeTask("e"): ("f_measure", 1, {"f_measure": True}),
    }
    for task, (primary, channels, directions) in expected.items():
        assert (task.primary, task.out_channels, task.higher_is_better) == (
            primary, channels, directions)
        assert task.build_head(6)(torch.randn(2, 6, 5, 7)).shape == (2, channels, 5, 7)
    assert DepthTask("d", primary="rmse").primary == "rmse"
    assert SaliencyTask("sal", primary="max_f").primary == "max_f"


def test_task_metrics_match_standalone_metrics_over_two_batches():
    """The collections' shared (compute-group) states give each metric its own value."""
    depth, normals = DepthTask("depth", aggregation="mtan"), NormalsTask("normals")
    depth_metrics, normal_metrics = depth.build_metrics(), normals.build_metrics()
    standalone = {"abs_err": DepthAbsError("mtan"), "rel_err": DepthRelError("mtan"),
                  "rmse": DepthRMSE("mtan"), "mean_angle": NormalMeanAngle(),
                  "median_angle": NormalMedianAngle(), "within_11_25": NormalWithinAngle(11.25),
                  "within_22_5": NormalWithinAngle(22.5), "within_30": NormalWithinAngle(30)}
    for b in (3, 1):
        d_target = tensor(RNG.uniform(1, 2, size=(b, 1, 4, 4)))
        d_preds = d_target + tensor(RNG.normal(size=(b, 1, 4, 4)))
        n_target = torch.nn.functional.normalize(tensor(RNG.normal(size=(b, 3, 4, 4))), dim=1)
        n_preds = normals.prediction(n_target + tensor(RNG.normal(size=(b, 3, 4, 4))))
        depth_metrics.update(depth.prediction(d_preds), d_target)
        normal_metrics.update(n_preds, n_target)
        for name, metric in standalone.items():
            metric.update(*((d_preds, d_target) if name in depth_metrics else (n_preds, n_target)))
    values = {**depth_metrics.compute(), **normal_metrics.compute()}
    assert set(values) == set(standalone)
    for name, metric in standalone.items():
        assert values[name].item() == pytest.approx(metric.compute().item(), rel=1e-6)
    assert len({values[k].item() for k in ("within_11_25", "within_22_5", "within_30")}) == 3


def test_errors():
    with pytest.raises(ValueError, match=r"task 'depth': expected an output of shape \(1, 1, 4"):
        DepthTask("depth").loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"expected an output of shape \(1, 3, 2, 2\)"):
        SegmentationTask("seg", 3).loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2).long())
    with pytest.raises(ValueError, match="unknown aggregation 'batch'"):
        NormalsTask("normals", aggregation="batch")
    with pytest.raises(ValueError, match="primary metric 'mean_angle' of task 'depth'"):
        DepthTask("depth", primary="mean_angle")
    with pytest.raises(ValueError, match="pos_weight of task 'edges'"):
        EdgeTask("edges", pos_weight=1.5)
    with pytest.raises(ValueError, match="at least 2 classes"):
        SegmentationTask("seg", 1)
