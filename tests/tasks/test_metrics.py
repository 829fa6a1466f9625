"""Each metric against an independent numpy computation (loops over pixels / images)."""

import math

import numpy as np
import pytest
import torch

from tasknorm.tasks import (
    ANGLE_BINS_PER_DEGREE,
    DepthAbsError,
    DepthRelError,
    DepthRMSE,
    EdgeFMeasure,
    MeanIoU,
    NormalMeanAngle,
    NormalMedianAngle,
    NormalWithinAngle,
    PixelAccuracy,
    SaliencyMaxF,
    SaliencyMeanIoU,
    disk_max_pool,
)

RNG = np.random.default_rng(0)


def run(metric, batches):
    for preds, target in batches:
        metric.update(torch.as_tensor(preds), torch.as_tensor(target))
    return metric.compute().item()


# --- segmentation ---------------------------------------------------------------------------


def segmentation_batches(num_classes=5):
    """Labels 0..3 only (class 4 absent everywhere), some -1 and out-of-range (7) targets."""
    batches = []
    for b in (3, 2):
        target = RNG.integers(0, 4, size=(b, 6, 7))
        target[RNG.random(target.shape) < 0.2] = -1
        target[RNG.random(target.shape) < 0.05] = 7
        logits = RNG.normal(size=(b, num_classes, 6, 7)).astype(np.float32)
        logits[:, 4] = -10  # never predicted
        batches.append((logits, target))
    return batches


def numpy_confusion(batches, num_classes):
    confmat = np.zeros((num_classes, num_classes))
    for logits, target in batches:
        labels = logits.argmax(1)
        for t, p in zip(target.ravel(), labels.ravel(), strict=True):
            if 0 <= t < num_classes:
                confmat[t, p] += 1
    return confmat


def test_mean_iou_and_pixel_accuracy_skip_ignored_pixels_and_absent_classes():
    batches = segmentation_batches()
    confmat = numpy_confusion(batches, 5)
    ious = [confmat[c, c] / (confmat[c].sum() + confmat[:, c].sum() - confmat[c, c])
            for c in range(4)]  # class 4: 0 / 0, left out
    assert run(MeanIoU(5), batches) == pytest.approx(np.mean(ious), rel=1e-6)
    assert run(PixelAccuracy(5), batches) == pytest.approx(np.trace(confmat) / confmat.sum())
    labels = [(logits.argmax(1), target) for logits, target in batches]
    assert run(MeanIoU(5), labels) == pytest.approx(np.mean(ious), rel=1e-6)


def test_class_missing_from_predictions_scores_zero_and_ignore_index_is_honoured():
    target = torch.tensor([[0, 0, 1, 2]])
    preds = torch.tensor([[0, 0, 0, 2]])  # class 1 present but never predicted: IoU 0
    assert run(MeanIoU(3), [(preds, target)]) == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert run(MeanIoU(3, ignore_index=1), [(preds, target)]) == pytest.approx(1.0)
    assert math.isnan(run(PixelAccuracy(3), [(preds, torch.full_like(target, -1))]))


def test_segmentation_input_errors():
    with pytest.raises(ValueError, match=r"logits must be \(B, 3, ...\)"):
        MeanIoU(3).update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"predicted labels must lie in \[0, 3\)"):
        MeanIoU(3).update(torch.tensor([[3]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="do not match"):
        MeanIoU(3).update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2"):
        MeanIoU(1)


# --- depth ----------------------------------------------------------------------------------


def depth_batches():
    """Uneven batches (4, 1 and an all-invalid one), NaN at invalid pixels."""
    batches = []
    for b in (4, 1, 2):
        target = RNG.uniform(0.5, 5, size=(b, 1, 5, 6)).astype(np.float32)
        target[RNG.random(target.shape) < 0.3] = np.nan
        preds = (target + RNG.normal(size=target.shape)).astype(np.float32)
        preds[np.isnan(preds)] = 1.0
        batches.append((preds, target))
    batches[2][1][:] = np.nan
    return batches


def numpy_depth_errors(preds, target):
    p, g = preds[np.isfinite(target)].astype(np.float64), target[np.isfinite(target)]
    return (np.abs(p - g).mean(), (np.abs(p - g) / g).mean(), np.sqrt(((p - g) ** 2).mean()))


def test_depth_global_is_the_pixel_mean_and_mtan_the_mean_of_batch_means():
    batches = depth_batches()
    preds = np.concatenate([p.ravel() for p, _ in batches])
    target = np.concatenate([t.ravel() for _, t in batches])
    pooled = numpy_depth_errors(preds, target)
    per_batch = np.array([numpy_depth_errors(p, t) for p, t in batches[:2]]).mean(0)
    for metric, index in ((DepthAbsError, 0), (DepthRelError, 1), (DepthRMSE, 2)):
        assert run(metric(), batches) == pytest.approx(pooled[index], rel=1e-5)
        assert run(metric("mtan"), batches) == pytest.approx(per_batch[index], rel=1e-5)
        assert abs(pooled[index] - per_batch[index]) > 1e-3  # the two really differ here


def test_depth_errors():
    with pytest.raises(ValueError, match="unknown aggregation 'batch'"):
        DepthAbsError("batch")
    with pytest.raises(ValueError, match="do not match"):
        DepthAbsError().update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))


# --- normals --------------------------------------------------------------------------------


def unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def normals_batches():
    """Random normals, invalid (zero) targets, and angles just either side of each threshold."""
    batches = []
    for b in (3, 1):
        invalid = RNG.random((b, 4, 5)) < 0.2
        target = np.where(invalid[:, None], 0.0, unit(RNG.normal(size=(b, 3, 4, 5))))
        preds = target + 0.6 * RNG.normal(size=target.shape)
        preds[invalid[:, None].repeat(3, 1)] = RNG.normal(size=3 * invalid.sum())
        batches.append((preds.astype(np.float32), target.astype(np.float32)))
    angles = np.deg2rad([a + d for a in (11.25, 22.5, 30.0) for d in (-1e-9, 1e-9)])
    target = np.zeros((1, 3, 1, 6))
    target[0, 2] = 1
    preds = np.stack([np.sin(angles), np.zeros(6), np.cos(angles)])[None, :, None]
    batches.append((preds, target))
    return batches


def numpy_angles(preds, target):
    valid = np.linalg.norm(target, axis=1) > 0
    p = np.moveaxis(preds, 1, -1)[valid].astype(np.float64)
    g = np.moveaxis(target, 1, -1)[valid].astype(np.float64)
    cosine = (p / np.linalg.norm(p, axis=1, keepdims=True) * g).sum(1)
    return np.degrees(np.arccos(np.clip(cosine, -1, 1)))


def numpy_normal_stats(angles):
    return [angles.mean(), np.median(angles)] + [(angles < t).mean() for t in (11.25, 22.5, 30)]


def normal_metrics(aggregation):
    return [NormalMeanAngle(aggregation), NormalMedianAngle(aggregation),
            NormalWithinAngle(11.25, aggregation), NormalWithinAngle(22.5, aggregation),
            NormalWithinAngle(30, aggregation)]


def test_normals_global_exact_mean_and_thresholds_histogram_median():
    batches = normals_batches()
    angles = np.concatenate([numpy_angles(p, t) for p, t in batches])
    expected = numpy_normal_stats(angles)
    values = [run(metric, batches) for metric in normal_metrics("global")]
    assert values[0] == pytest.approx(expected[0], rel=1e-6)
    assert abs(values[1] - expected[1]) <= 1 / (2 * ANGLE_BINS_PER_DEGREE)
    assert values[2:] == pytest.approx(expected[2:], abs=1e-7)
    # the pixels just either side of each threshold are counted on the right side
    last = [run(metric, batches[2:]) for metric in normal_metrics("global")[2:]]
    assert last == pytest.approx([1 / 6, 3 / 6, 5 / 6])


def test_normals_mtan_averages_batch_statistics():
    batches = normals_batches()
    expected = np.mean([numpy_normal_stats(numpy_angles(p, t)) for p, t in batches], axis=0)
    values = [run(metric, batches) for metric in normal_metrics("mtan")]
    assert values == pytest.approx(list(expected), rel=1e-6)


def test_normals_prediction_length_does_not_matter_and_errors():
    preds, target = normals_batches()[0]
    reference = run(NormalMeanAngle(), [(preds, target)])
    assert run(NormalMeanAngle(), [(7 * preds, target)]) == pytest.approx(reference, rel=1e-6)
    with pytest.raises(ValueError, match="multiple of 1/256"):
        NormalWithinAngle(11.3)
    with pytest.raises(ValueError, match="aggregation='mtan' supports"):
        NormalWithinAngle(45, "mtan")
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        NormalMeanAngle().update(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))


# --- saliency -------------------------------------------------------------------------------


def numpy_saliency(batches):
    """Vandenhende's eval_sal, with NaN targets as void pixels."""
    thresholds = np.linspace(0.2, 0.9, 15)
    jaccards, precisions, recalls = [], [], []
    for preds, target in batches:
        for p, g in zip(preds, target, strict=True):
            valid = ~np.isnan(g)
            truth = (np.nan_to_num(g) > 0.5) & valid
            rows = []
            for t in thresholds:
                mask = (p > t) & valid
                tp, fp, fn = (mask & truth).sum(), (mask & ~truth).sum(), (~mask & truth).sum()
                jaccard = 1.0 if truth.sum() == 0 and mask.sum() == 0 else tp / (tp + fp + fn)
                rows.append((jaccard, tp / (tp + fp + 1e-12), tp / (tp + fn + 1e-12)))
            j, p_, r = np.array(rows).T
            jaccards.append(j)
            precisions.append(p_)
            recalls.append(r)
    precision, recall = np.mean(precisions, 0), np.mean(recalls, 0)
    f = 2 * precision * recall / (precision + recall + 1e-12)
    return f.max(), np.mean(jaccards, 0).max()


def saliency_batches():
    batches = []
    for b in (3, 2):
        target = (RNG.random((b, 1, 6, 6)) < 0.4).astype(np.float32)
        preds = np.clip(0.5 * target + 0.6 * RNG.random(target.shape), 0, 1).astype(np.float32)
        target[RNG.random(target.shape) < 0.1] = np.nan
        batches.append((preds, target))
    batches[1][1][0] = 0  # an image without salient pixels
    batches[1][0][0] = 0.1  # ... and without predicted ones: Jaccard 1
    return batches


def test_saliency_max_f_and_miou_match_vandenhende():
    batches = saliency_batches()
    max_f, miou = numpy_saliency(batches)
    assert run(SaliencyMaxF(), batches) == pytest.approx(max_f, rel=1e-6)
    assert run(SaliencyMeanIoU(), batches) == pytest.approx(miou, rel=1e-6)


def test_saliency_hand_made_and_errors():
    # one image: two salient pixels, predictions 0.85 (found) and 0.3; one background at 0.5
    preds = torch.tensor([[0.85, 0.3, 0.5, 0.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # t < 0.3: P = 2/3, R = 1, F = 0.8, J = 2/3; 0.3 <= t < 0.5: P = R = J * 3/2 = 1/2;
    # 0.5 <= t < 0.85: P = 1, R = 1/2, F = 2/3, J = 1/2; t >= 0.85: all 0
    assert run(SaliencyMaxF(), [(preds, target)]) == pytest.approx(0.8)
    assert run(SaliencyMeanIoU(), [(preds, target)]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="expected probabilities"):
        SaliencyMaxF().update(torch.tensor([[1.5]]), torch.tensor([[1.0]]))


# --- edges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0.0, 1.0, 1.5, 2.3, 3.0])
def test_disk_max_pool_is_a_max_over_the_euclidean_disk(radius):
    x = RNG.normal(size=(2, 1, 7, 9))
    expected = np.full(x.shape, -np.inf)
    for i in range(7):
        for j in range(9):
            for y in range(7):
                for k in range(9):
                    if (y - i) ** 2 + (k - j) ** 2 <= radius**2:
                        expected[:, :, i, j] = np.maximum(expected[:, :, i, j], x[:, :, y, k])
    np.testing.assert_allclose(disk_max_pool(torch.from_numpy(x), radius).numpy(), expected)


def numpy_edge_f(batches, max_dist):
    thresholds = np.arange(1, 100) / 100
    matched_p, total_p = np.zeros(99), np.zeros(99)
    matched_g, total_g = np.zeros(99), 0
    for preds, target in batches:
        h, w = target.shape[-2:]
        radius = max_dist * math.hypot(h, w)
        for p, g in zip(preds[:, 0], target[:, 0], strict=True):
            valid = ~np.isnan(g)
            truth = (np.nan_to_num(g) > 0.5) & valid
            total_g += truth.sum()
            for k, t in enumerate(thresholds):
                edge = (p >= t) & valid
                for i, j in zip(*np.nonzero(edge), strict=True):
                    total_p[k] += 1
                    ys, xs = np.nonzero(truth)
                    matched_p[k] += np.any((ys - i) ** 2 + (xs - j) ** 2 <= radius**2)
                ys, xs = np.nonzero(edge)
                for i, j in zip(*np.nonzero(truth), strict=True):
                    matched_g[k] += np.any((ys - i) ** 2 + (xs - j) ** 2 <= radius**2)
    precision = matched_p / np.maximum(total_p, 1)
    recall = matched_g / max(total_g, 1)
    f = np.where(precision + recall > 0,
                 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    return f.max()


def test_edge_f_measure_matches_brute_force_matching():
    batches = []
    for b in (2, 1):
        target = (RNG.random((b, 1, 9, 10)) < 0.15).astype(np.float32)
        preds = np.clip(np.roll(target, 1, axis=-1) * 0.6 + 0.5 * RNG.random(target.shape),
                        0, 1).astype(np.float32)
        target[RNG.random(target.shape) < 0.1] = np.nan
        batches.append((preds, target))
    for max_dist in (0.0, 0.08, 0.2):  # radius 0, 1.08 and 2.7 pixels
        expected = numpy_edge_f(batches, max_dist)
        assert run(EdgeFMeasure(max_dist), batches) == pytest.approx(expected, rel=1e-6)


def test_edge_f_measure_hand_made():
    target = torch.zeros(1, 1, 10, 10)
    target[0, 0, :, 4] = 1  # a one-pixel vertical edge
    thick = torch.zeros(1, 1, 10, 10)
    thick[0, 0, :, 3:6] = 0.8  # a three-pixel-wide prediction around it
    # within one pixel every predicted pixel has a ground-truth edge: no thinning, no
    # one-to-one matching, so precision is 1 (SEISM would thin the prediction first)
    assert run(EdgeFMeasure(0.1), [(thick, target)]) == pytest.approx(1.0)
    # exact matching: precision 1/3, recall 1, F = 1/2
    assert run(EdgeFMeasure(0.0), [(thick, target)]) == pytest.approx(0.5)
    # (B, H, W) maps are accepted too; predictions >= threshold count as edges
    half = torch.where(target[:, 0] > 0, 0.99, 0.0)
    assert run(EdgeFMeasure(0.0), [(half, target[:, 0])]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fraction of the image diagonal"):
        EdgeFMeasure(2.0)
    with pytest.raises(ValueError, match="expected probabilities"):
        EdgeFMeasure().update(torch.full((1, 2, 2), -1.0), torch.zeros(1, 2, 2))


# --- shared behaviour -----------------------------------------------------------------------


def all_metrics():
    """(metric factory, two batches) for every metric class."""
    seg = segmentation_batches()
    depth = depth_batches()
    normals = normals_batches()
    sal = saliency_batches()
    return [
        (lambda: MeanIoU(5), seg, True), (lambda: PixelAccuracy(5), seg, True),
        (DepthAbsError, depth, False), (lambda: DepthRelError("mtan"), depth, False),
        (DepthRMSE, depth, False), (NormalMeanAngle, normals, False),
        (lambda: NormalMedianAngle("mtan"), normals, False),
        (lambda: NormalWithinAngle(22.5), normals, True), (SaliencyMaxF, sal, True),
        (SaliencyMeanIoU, sal, True), (EdgeFMeasure, sal, True),
    ]


def test_directions_state_reset_and_merge_of_process_states():
    for factory, batches, higher in all_metrics():
        metric = factory()
        assert metric.higher_is_better is higher
        both = run(metric, batches[:2])
        metric.reset()
        assert run(metric, batches[:1]) == pytest.approx(run(factory(), batches[:1]))
        # what DDP does: each process holds its own states, reduced by their dist_reduce_fx
        first, second = factory(), factory()
        first.update(*map(torch.as_tensor, batches[0]))
        second.update(*map(torch.as_tensor, batches[1]))
        first.merge_state(second)
        assert first.compute().item() == pytest.approx(both, rel=1e-6)
