import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2

from tasknorm.data.transforms import (
    Depth,
    Normals,
    RandomScaleCrop,
    train_transform,
    unwrap_sample,
    wrap_sample,
)

KINDS = {"image": "image", "segmentation": "label", "depth": "depth", "normals": "normals"}
H, W = 24, 32


def normals_from_height(height: np.ndarray) -> np.ndarray:
    """Unit normals (x right, y down, z) of the surface z = height[row, col], by central
    differences; computed on the array given, so a flipped surface gets its own normals."""
    dz_dy, dz_dx = np.gradient(height)
    normals = np.stack([-dz_dx, -dz_dy, np.ones_like(height)])
    return normals / np.linalg.norm(normals, axis=0, keepdims=True)


def surface_sample(height: np.ndarray) -> dict[str, torch.Tensor]:
    normals = torch.from_numpy(normals_from_height(height)).float()
    normals[:, :3, :4] = 0  # invalid pixels
    return {"image": torch.from_numpy(np.stack([height] * 3)).float() / height.max(),
            "depth": torch.from_numpy(height[None]).float(), "normals": normals}


def bumpy_height() -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    return 2 + np.sin(cols / 3) + 0.05 * cols * rows / W + 0.3 * np.cos(rows / 4)


def test_flipped_normals_are_the_normals_of_the_flipped_surface():
    height = bumpy_height()
    out = unwrap_sample(v2.RandomHorizontalFlip(p=1.0)(wrap_sample(surface_sample(height), KINDS)))
    expected = torch.from_numpy(normals_from_height(height[:, ::-1].copy())).float()
    valid = out["normals"].abs().sum(0) > 0
    assert torch.allclose(out["normals"][:, valid], expected[:, valid], atol=1e-6)
    assert valid.sum() == H * W - 12 and not out["normals"][:, :3, -4:].any()  # invalid moved
    assert torch.equal(out["depth"][0], torch.from_numpy(height[:, ::-1].copy()).float())
    # the x component really changes sign (the surface is not symmetric)
    assert (out["normals"][0] * torch.from_numpy(normals_from_height(height)).float().flip(-1)[0]
            < 0).sum() > H * W / 2


def test_vertical_flip_negates_the_y_component():
    height = bumpy_height()
    out = unwrap_sample(v2.RandomVerticalFlip(p=1.0)(wrap_sample(surface_sample(height), KINDS)))
    expected = torch.from_numpy(normals_from_height(height[::-1].copy())).float()
    valid = out["normals"].abs().sum(0) > 0
    assert torch.allclose(out["normals"][:, valid], expected[:, valid], atol=1e-6)


def coordinate_sample() -> dict[str, torch.Tensor]:
    """Fields made from pixel coordinates: the label and depth name their source pixel."""
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    label = rows * W + cols
    label[5:12, 20:30] = -1
    depth = (rows * W + cols + 1).float()[None]
    depth[0, 14:20, 2:9] = float("nan")
    image = torch.stack([cols.float(), rows.float(), torch.zeros(H, W)])
    normals = torch.stack([cols.float(), rows.float(), torch.ones(H, W)])
    return {"image": image, "segmentation": label, "depth": depth, "normals": normals}


@pytest.mark.parametrize("depth_scaling", ["divide", "multiply"])
def test_scale_crop_keeps_every_target_aligned(depth_scaling):
    sample = coordinate_sample()
    transform = RandomScaleCrop(depth_scaling=depth_scaling)
    seen_scales, seen_ignored = set(), 0
    for seed in range(12):
        torch.manual_seed(seed)
        out = unwrap_sample(transform(wrap_sample(sample, KINDS)))
        torch.manual_seed(seed)
        params = transform.make_params([tv_tensors.Image(sample["image"])])
        s, top, left, h, w = (params[k] for k in ("scale", "top", "left", "height", "width"))
        seen_scales.add(s)
        assert (h, w) == (int(H / s), int(W / s))
        assert 0 <= top <= H - h and 0 <= left <= W - w

        def crop(x, top=top, left=left, h=h, w=w):
            return x[..., top:top + h, left:left + w][None].float()

        # independent computation with torch.nn.functional on the crop
        assert torch.equal(out["segmentation"],
                           nnf.interpolate(crop(sample["segmentation"][None]), (H, W))[0, 0].long())
        near = nnf.interpolate(crop(sample["depth"]), (H, W))[0]
        expected = near / s if depth_scaling == "divide" else near * s
        torch.testing.assert_close(out["depth"], expected, rtol=0, atol=0, equal_nan=True)
        bilinear = nnf.interpolate(crop(sample["image"]), (H, W), mode="bilinear",
                                   align_corners=False)[0]
        assert torch.allclose(out["image"], bilinear, atol=1e-5)

        # alignment read off the fields themselves
        label, depth = out["segmentation"], out["depth"][0]
        both = (label >= 0) & ~depth.isnan()
        index = ((label + 1).float() / s) if depth_scaling == "divide" else (label + 1).float() * s
        assert torch.equal(depth[both], index[both])
        src_rows, src_cols = torch.div(label, W, rounding_mode="floor"), label % W
        for field in ("image", "normals"):
            assert (out[field][0][label >= 0] - src_cols[label >= 0]).abs().max() <= 1
            assert (out[field][1][label >= 0] - src_rows[label >= 0]).abs().max() <= 1
        # ignore labels stay -1, are never blended into other values, and sit where they were
        assert set(label.unique().tolist()) <= {-1, *sample["segmentation"].unique().tolist()}
        source = torch.round(depth * s if depth_scaling == "divide" else depth / s).long() - 1
        ignored = (label == -1) & ~depth.isnan()
        seen_ignored += int(ignored.sum())
        assert torch.equal(sample["segmentation"].flatten()[source[ignored]],
                           torch.full((int(ignored.sum()),), -1))
        # NaN depth stays NaN exactly where the source pixel was invalid
        invalid = sample["depth"][0].flatten().isnan()
        assert torch.equal(depth.isnan()[label >= 0], invalid[label[label >= 0]])
    assert seen_scales == {1.0, 1.2, 1.5} and seen_ignored > 0


def test_scale_one_is_the_identity():
    sample = coordinate_sample()
    out = unwrap_sample(RandomScaleCrop(scales=(1.0,))(wrap_sample(sample, KINDS)))
    for key in sample:
        assert torch.equal(out[key].nan_to_num(-5), sample[key].nan_to_num(-5))


def test_colour_transforms_leave_normals_alone_and_rotations_are_refused():
    sample = surface_sample(bumpy_height())
    wrapped = wrap_sample(sample, KINDS)
    out = unwrap_sample(v2.Compose([v2.ColorJitter(brightness=(0.5, 0.5)),
                                    v2.Normalize([0.5] * 3, [0.2] * 3)])(wrapped))
    assert torch.equal(out["normals"], sample["normals"])
    assert torch.equal(out["depth"], sample["depth"])
    assert torch.allclose(out["image"], (sample["image"] * 0.5 - 0.5) / 0.2, atol=1e-5)
    with pytest.raises(TypeError, match="rotat"):
        v2.RandomRotation(10)(wrapped)


def test_wrap_and_unwrap():
    sample = {**coordinate_sample(), "attribute": torch.tensor(1)}
    wrapped = wrap_sample(sample, {**KINDS, "parts": "label"})
    assert type(wrapped["depth"]) is Depth and type(wrapped["normals"]) is Normals
    assert type(wrapped["segmentation"]) is tv_tensors.Mask
    assert type(wrapped["attribute"]) is torch.Tensor and "parts" not in wrapped
    plain = unwrap_sample(wrapped)
    assert all(type(v) is torch.Tensor for v in plain.values())
    with pytest.raises(ValueError, match="unknown kind 'disparity' for 'depth'"):
        wrap_sample(sample, {"depth": "disparity"})


def test_invalid_arguments_and_mismatched_sizes():
    with pytest.raises(ValueError, match="scales"):
        RandomScaleCrop(scales=(0.5, 1.0))
    with pytest.raises(ValueError, match="depth_scaling"):
        RandomScaleCrop(depth_scaling="inverse")
    with pytest.raises(ValueError, match="one size"):
        RandomScaleCrop()({"image": tv_tensors.Image(torch.zeros(3, 4, 4)),
                           "depth": Depth(torch.zeros(1, 5, 4))})
    with pytest.raises(ValueError, match="unknown benchmark 'pascal'"):
        train_transform("pascal")


def test_train_transform_per_benchmark():
    nyu = train_transform("nyuv2")
    assert isinstance(nyu.transforms[0], RandomScaleCrop)
    city = train_transform("cityscapes", depth_scaling="multiply")
    assert city.transforms[0].depth_scaling == "multiply"
    three = train_transform("cityscapes_3task", crop_size=(8, 8))
    sample = wrap_sample(coordinate_sample(), KINDS)
    out = unwrap_sample(three(sample))
    assert out["image"].shape == (3, 8, 8) and out["segmentation"].shape == (8, 8)
    assert out["depth"].shape == (1, 8, 8)
    label, depth = out["segmentation"], out["depth"][0]
    both = (label >= 0) & ~depth.isnan()
    assert torch.equal(depth[both], (label + 1).float()[both])  # aligned, never rescaled
