import math
import shutil

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import tv_tensors

from tasknorm.data.boundaries import label_boundaries, thin
from tasknorm.data.pascal_context import (
    NORMALS_VALID_CLASSES,
    PascalContext,
    PascalContextDataModule,
    images_with_person,
    read_person_parts,
)
from tasknorm.data.pascal_context_writer import write_tiny_pascal_context
from tasknorm.data.transforms import Normals, RandomScaleRotate, pascal_transform
from tasknorm.tasks import EdgeTask, NormalsTask, SaliencyTask, SegmentationTask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_pascal_context(tmp_path_factory.mktemp("pascal"), sizes=(6, 3), seed=1)


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """Square images, so that resizing to their own size is the identity."""
    return write_tiny_pascal_context(tmp_path_factory.mktemp("square"), sizes=(4, 1),
                                     height=16, width=16, seed=2)


@pytest.fixture
def copy(tiny, tmp_path):
    return shutil.copytree(tiny, tmp_path / "pascal")


def png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def test_layout_matches_the_reference_loader(tiny):
    ids = (tiny / "ImageSets/Context/train.txt").read_text().split()
    assert len(ids) == 6 and len((tiny / "ImageSets/Context/val.txt").read_text().split()) == 3
    image_id = ids[1]  # a person with parts
    assert png(tiny / "JPEGImages" / f"{image_id}.jpg").shape == (20, 28, 3)
    assert png(tiny / "normals_distill" / f"{image_id}.png").shape == (20, 28, 3)
    assert png(tiny / "sal_distill" / f"{image_id}.png").dtype == np.uint8
    label_map = scipy.io.loadmat(tiny / "pascal-context/trainval" / f"{image_id}.mat")["LabelMap"]
    assert label_map.dtype == np.uint16 and label_map.shape == (20, 28)
    # The reference indexes the PASCAL-Part struct by position: anno[0][0][1][0] = objects,
    # object[1][0][0] = class_ind, object[2] = mask, object[3][0][i][0][0] = part name.
    objects = scipy.io.loadmat(tiny / "human_parts" / f"{image_id}.mat")["anno"][0][0][1][0]
    person = objects[0]
    assert person[1][0][0] == 15 and person[2].shape == (20, 28) and len(person[3]) == 1
    assert isinstance(person[3][0][0][0][0], str)
    dog = scipy.io.loadmat(tiny / "human_parts" / f"{ids[0]}.mat")["anno"][0][0][1][0][0]
    assert dog[1][0][0] == 12 and len(dog[3]) == 0


def test_splits_list_the_split_files(tiny):
    train, val = PascalContext(tiny, "train"), PascalContext(tiny, "val")
    assert train.ids == (tiny / "ImageSets/Context/train.txt").read_text().split()
    assert len(train) == 6 and len(val) == 3 and not set(train.ids) & set(val.ids)


def test_raw_sample_decodes_every_encoding(tiny):
    data = PascalContext(tiny, "train")
    for index, image_id in enumerate(data.ids):
        sample = data[index]
        image = png(tiny / "JPEGImages" / f"{image_id}.jpg")
        expected_image = torch.from_numpy(image / 255).permute(2, 0, 1).float()
        assert torch.allclose(sample["image"], expected_image)

        semantic = png(tiny / "semseg/pascal-context" / f"{image_id}.png").astype(np.int64)
        assert (semantic == 255).any()
        expected = np.where(semantic == 255, -1, semantic)
        assert sample["segmentation"].dtype == torch.int64
        assert np.array_equal(sample["segmentation"].numpy(), expected)

        grey = png(tiny / "sal_distill" / f"{image_id}.png")
        assert sample["saliency"].shape == (1, 20, 28)
        assert np.array_equal(sample["saliency"][0].numpy(), (grey >= 128).astype(np.float32))

        label_map = scipy.io.loadmat(tiny / "pascal-context/trainval" / f"{image_id}.mat")[
            "LabelMap"]
        assert np.array_equal(sample["edges"][0].numpy(), label_boundaries(label_map))

        raw = png(tiny / "normals_distill" / f"{image_id}.png").astype(np.float64) * 2 / 255 - 1
        raw /= np.linalg.norm(raw, axis=-1, keepdims=True)
        valid = np.isin(label_map, [158, 284, 427, 440])  # floor, person, tvmonitor, wall
        assert set(np.unique(label_map)) <= {0, 2, 98, 158, 284, 427, 440}
        normals = sample["normals"].permute(1, 2, 0).numpy()
        assert np.allclose(normals[valid], raw[valid], atol=1e-6)
        assert (normals[~valid] == 0).all()


def test_saliency_threshold_is_strictly_above_half(tiny):
    """Grey 127 (0.498) is background, 128 (0.502) salient."""
    grey = np.concatenate([png(tiny / "sal_distill" / f"{i}.png").ravel()
                           for i in PascalContext(tiny, "train").ids])
    assert {127, 128} <= set(grey.tolist())


def test_normals_valid_classes_are_the_nyu_compatible_ones():
    assert len(NORMALS_VALID_CLASSES) == 170
    assert {158, 284, 427, 440} <= NORMALS_VALID_CLASSES  # floor, person, tvmonitor, wall
    assert not {0, 2, 98, 207} & NORMALS_VALID_CLASSES  # none, aeroplane, cow, horse


def test_voc12_segmentation_takes_precedence(copy):
    image_id = PascalContext(copy, "val").ids[0]
    voc = np.full((20, 28), 7, dtype=np.uint8)
    voc[0, 0] = 255
    palette_png = Image.fromarray(voc, mode="P")
    palette_png.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    (copy / "semseg/VOC12").mkdir()
    palette_png.save(copy / "semseg/VOC12" / f"{image_id}.png")
    label = PascalContext(copy, "val", tasks=("segmentation",))[0]["segmentation"]
    assert label[0, 0] == -1 and (label.flatten()[1:] == 7).all()


PARTS = {"hair": 1, "head": 1, "lear": 1, "rear": 1, "lebrow": 1, "rebrow": 1, "leye": 1,
         "reye": 1, "mouth": 1, "nose": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3,
         "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4, "luleg": 5, "ruleg": 5, "llleg": 6,
         "rlleg": 6, "lfoot": 6, "rfoot": 6}


def save_annotation(path, objects):
    """PASCAL-Part file built with plain scipy structures (independent of the writer)."""
    dtype = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    records = np.empty((1, len(objects)), dtype=dtype)
    for i, (name, index, mask, parts) in enumerate(objects):
        if parts:
            part_records = np.empty((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            for j, part in enumerate(parts):
                part_records[0, j] = part
        else:
            part_records = np.zeros((0, 0))
        records[0, i] = (name, np.array([[index]], dtype=np.float64), mask, part_records)
    scipy.io.savemat(path, {"anno": {"imname": "x", "objects": records}})


def test_person_part_names_map_to_the_six_groups(tmp_path):
    names = list(PARTS)
    parts = []
    for k, name in enumerate(names):
        mask = np.zeros((1, len(names)), dtype=np.uint8)
        mask[0, k] = 1
        parts.append((name, mask))
    body = np.ones((1, len(names)), dtype=np.uint8)
    dog_head = np.zeros_like(body)
    dog_head[0, 0] = 1
    save_annotation(tmp_path / "a.mat", [("person", 15, body, parts),
                                         ("dog", 12, body, [("head", dog_head)])])
    label = read_person_parts(tmp_path / "a.mat", (1, len(names)))
    assert label.dtype == np.int64
    assert label[0].tolist() == [PARTS[n] for n in names]


def test_parts_paint_in_file_order_over_background(tmp_path):
    body = np.zeros((3, 4), dtype=np.uint8)
    body[:2] = 1
    torso = body.copy()
    leg = np.zeros_like(body)
    leg[1] = 1
    save_annotation(tmp_path / "b.mat", [("person", 15, body, [("torso", torso)]),
                                         ("person", 15, body, [("lfoot", leg)])])
    label = read_person_parts(tmp_path / "b.mat", (3, 4))
    assert label.tolist() == [[2] * 4, [6] * 4, [0] * 4]


def test_images_without_annotated_person_parts_are_ignored(tmp_path):
    mask = np.ones((2, 3), dtype=np.uint8)
    save_annotation(tmp_path / "c.mat", [("cat", 8, mask, [("head", mask)])])
    save_annotation(tmp_path / "d.mat", [("person", 15, mask, [])])
    save_annotation(tmp_path / "e.mat", [])
    for name in ("c", "d", "e"):
        assert (read_person_parts(tmp_path / f"{name}.mat", (2, 3)) == -1).all()


def test_unknown_person_part_is_an_error(tmp_path):
    mask = np.ones((2, 2), dtype=np.uint8)
    save_annotation(tmp_path / "f.mat", [("person", 15, mask, [("tail", mask)])])
    with pytest.raises(ValueError, match=r"f.mat: unknown person part 'tail'"):
        read_person_parts(tmp_path / "f.mat", (2, 2))


def test_tiny_parts_follow_the_four_cases(tiny):
    data = PascalContext(tiny, "train", tasks=("parts",))
    parts = [data[i]["parts"] for i in range(4)]
    assert (parts[0] == -1).all() and (parts[2] == -1).all()  # no person; person without parts
    assert parts[1].min() == 0 and parts[1].max() >= 1 and parts[3].max() >= 1
    assert images_with_person(tiny, data.ids) == [data.ids[i] for i in (1, 2, 3, 5)]


def test_thinning_matches_scikit_image():
    """Expected outputs computed with skimage.morphology.thin (scikit-image 0.26)."""
    label_map = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 2, 2, 2, 2],
                          [3, 3, 3, 3, 2, 2, 2], [3, 3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3, 3]])
    expected = np.array([[0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0],
                         [1, 1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    assert np.array_equal(label_boundaries(label_map), expected)
    block = np.zeros((5, 7), dtype=bool)
    block[1:4, 1:6] = True
    expected_block = np.zeros((5, 7), dtype=bool)
    expected_block[2, 2:5] = True
    assert np.array_equal(thin(block), expected_block)


def test_boundaries_are_thinned_to_one_pixel_per_row():
    """A vertical label change gives a two-pixel-wide Laplacian band (columns 3 and 4);
    thinning keeps at most one pixel per row inside it (scikit-image: column 3, rows 1-4)."""
    label_map = np.zeros((5, 8), dtype=np.uint16)
    label_map[:, 4:] = 3
    edges = label_boundaries(label_map)
    assert edges.sum(axis=1).tolist() == [0, 1, 1, 1, 1]
    assert edges[1:, 3].all()


def identity_pipeline(**kwargs):
    """Real pipeline at the images' own size with no normalisation."""
    return pascal_transform(16, normalize=False, **kwargs)


def test_flip_mirrors_every_target_and_negates_normal_x(square):
    plain = PascalContext(square, "train", transform=identity_pipeline())
    flipped = PascalContext(square, "train", transform=identity_pipeline(
        augment=True, flip=1.0, degrees=0.0, scales=(1.0, 1.0)))
    for index in range(len(plain)):
        a, b = plain[index], flipped[index]
        for key in ("image", "saliency", "edges"):
            assert torch.allclose(b[key], a[key].flip(-1), atol=1e-6), key
        for key in ("segmentation", "parts"):
            assert torch.equal(b[key], a[key].flip(-1)), key
        expected = a["normals"].flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        assert torch.allclose(b["normals"], expected, atol=1e-6)


def test_rotation_by_90_degrees_matches_numpy_rot90(square):
    """Counter-clockwise rotation with y pointing down: a normal pointing right (x = 1) ends up
    pointing up (y = -1), so (x, y, z) -> (y, -x, z)."""
    plain = PascalContext(square, "train", transform=identity_pipeline())
    rotated = PascalContext(square, "train", transform=identity_pipeline(
        augment=True, flip=0.0, degrees=(90.0, 90.0), scales=(1.0, 1.0)))

    def rot90(t):
        return torch.from_numpy(np.rot90(t.numpy(), axes=(-2, -1)).copy())

    a, b = plain[1], rotated[1]
    for key in ("segmentation", "parts", "saliency", "edges"):
        assert torch.equal(b[key], rot90(a[key])), key
    assert torch.allclose(b["image"], rot90(a["image"]), atol=1e-5)
    x, y, z = a["normals"]
    assert torch.allclose(b["normals"], rot90(torch.stack([y, -x, z])), atol=1e-5)


def test_normal_rotation_follows_the_image_gradient():
    """A ramp image increasing along the normal's in-plane direction keeps increasing along the
    rotated normal after any rotation."""
    size, angle = 41, 33.0
    rows, cols = torch.meshgrid(torch.arange(size) - 20.0, torch.arange(size) - 20.0,
                                indexing="ij")
    direction = torch.tensor([0.8, -0.6])  # x right, y down
    ramp = (direction[0] * cols + direction[1] * rows) / 40 + 0.5
    normals = torch.zeros(3, size, size)
    normals[0], normals[1] = direction[0], direction[1]
    sample = {"image": tv_tensors.Image(ramp.expand(3, size, size)), "normals": Normals(normals)}
    out = RandomScaleRotate(degrees=(angle, angle), scales=(1.0, 1.0))(sample)
    image = out["image"][0]
    gradient = torch.stack([image[20, 21] - image[20, 19], image[21, 20] - image[19, 20]])
    in_plane = out["normals"][:2, 20, 20]
    assert torch.allclose(gradient / gradient.norm(), in_plane, atol=1e-2)
    theta = math.radians(angle)  # image rotated counter-clockwise: (0.8, -0.6) turns upwards
    assert in_plane[1] < direction[1] and abs(in_plane.norm() - 1) < 1e-5
    assert math.isclose(math.atan2(-in_plane[1], in_plane[0]),
                        math.atan2(0.6, 0.8) + theta, abs_tol=1e-5)


def test_zoom_out_pads_with_each_tasks_ignore_value(square):
    data = PascalContext(square, "train", transform=identity_pipeline(
        augment=True, flip=0.0, degrees=0.0, scales=(0.5, 0.5)))
    sample = data[1]
    border = (slice(None), slice(0, 2))  # the left columns hold no image content
    assert (sample["segmentation"][border] == -1).all()
    assert (sample["parts"][border] == -1).all()
    assert sample["saliency"][0][border].isnan().all() and sample["edges"][0][border].isnan().all()
    assert (sample["normals"][:, :, :2] == 0).all() and (sample["image"][:, :, :2] == 0).all()


def test_random_augmentation_never_invents_labels(tiny):
    torch.manual_seed(0)
    raw = PascalContext(tiny, "train")
    augmented = PascalContext(tiny, "train", transform=pascal_transform(24, augment=True))
    for _ in range(2):
        for index in range(len(raw)):
            before, after = raw[index], augmented[index]
            assert after["image"].shape == (3, 24, 24)
            for key in ("segmentation", "parts"):
                assert after[key].dtype == torch.int64
                assert set(after[key].unique().tolist()) <= {-1, *before[key].unique().tolist()}
            for key in ("saliency", "edges"):
                values = after[key][~after[key].isnan()]
                assert set(values.unique().tolist()) <= {0.0, 1.0}
            norm = after["normals"].norm(dim=0)
            assert ((norm - 1).abs() < 1e-5).logical_or(norm == 0).all()


def test_evaluation_pipeline_resizes_and_normalises(tiny):
    sample = PascalContext(tiny, "val", transform=pascal_transform(32))[0]
    raw = PascalContext(tiny, "val")[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = torch.nn.functional.interpolate(raw["image"][None], size=(32, 32),
                                               mode="bilinear", antialias=True)[0]
    assert torch.allclose(sample["image"], (expected - mean) / std, atol=1e-5)
    assert sample["segmentation"].shape == (32, 32) and sample["normals"].shape == (3, 32, 32)


def test_datamodule_splits_tasks_and_batch(tiny):
    dm = PascalContextDataModule(str(tiny), image_size=32, batch_size=2)
    assert [type(t) for t in dm.tasks] == [SegmentationTask, SegmentationTask, SaliencyTask,
                                           NormalsTask, EdgeTask]
    assert [t.name for t in dm.tasks] == ["segmentation", "parts", "saliency", "normals", "edges"]
    assert [t.num_classes for t in dm.tasks[:2]] == [21, 7]
    dm.setup("fit")
    train, val, test = (dm.splits[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (5, 1, 3)
    assert sorted(train.ids + val.ids) == PascalContext(tiny, "train").ids
    assert test.ids == PascalContext(tiny, "val").ids
    assert torch.equal(val[0]["image"], val[0]["image"])  # no random augmentation
    batch = next(iter(dm.train_dataloader()))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}
    assert shapes == {"image": ((2, 3, 32, 32), torch.float32),
                      "segmentation": ((2, 32, 32), torch.int64),
                      "parts": ((2, 32, 32), torch.int64),
                      "saliency": ((2, 1, 32, 32), torch.float32),
                      "normals": ((2, 3, 32, 32), torch.float32),
                      "edges": ((2, 1, 32, 32), torch.float32)}


def test_single_parts_task_keeps_only_images_with_a_person(tiny):
    dm = PascalContextDataModule(str(tiny), tasks=("parts",), image_size=16, augment=False)
    dm.setup()
    kept = set(images_with_person(tiny, PascalContext(tiny, "train").ids))
    assert set(dm.splits["train"].ids + dm.splits["val"].ids) == kept
    assert list(dm.splits["train"][0]) == ["image", "parts"]
    everything = PascalContextDataModule(str(tiny), tasks=("parts",), person_images_only=False)
    everything.setup()
    assert len(everything.splits["train"]) + len(everything.splits["val"]) == 6


def test_missing_root_split_and_task_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"PASCAL-Context root .*nowhere is not a folder"):
        PascalContext(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown PASCAL-Context split 'test'"):
        PascalContext(tiny, "test")
    with pytest.raises(ValueError, match=r"tasks must be distinct names from .*got \['depth'\]"):
        PascalContextDataModule(str(tiny), tasks=("depth",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"split list .*Context/train.txt is missing"):
        PascalContext(tmp_path / "empty")


@pytest.mark.parametrize(("folder", "suffix", "task"), [
    ("JPEGImages", ".jpg", "saliency"), ("semseg/pascal-context", ".png", "segmentation"),
    ("human_parts", ".mat", "parts"), ("normals_distill", ".png", "normals"),
    ("sal_distill", ".png", "saliency"), ("pascal-context/trainval", ".mat", "edges"),
])
def test_missing_file_names_the_image_and_path(copy, folder, suffix, task):
    image_id = PascalContext(copy, "val").ids[1]
    (copy / folder / f"{image_id}{suffix}").unlink()
    PascalContext(copy, "train", tasks=(task,))  # other splits do not need the file
    with pytest.raises(FileNotFoundError, match=rf"image {image_id}: .*{folder}/{image_id}"):
        PascalContext(copy, "val", tasks=(task,))


def test_malformed_files_are_reported_with_their_path(copy):
    image_id = PascalContext(copy, "val").ids[0]
    Image.fromarray(np.full((20, 28), 30, dtype=np.uint8)).save(
        copy / "semseg/pascal-context" / f"{image_id}.png")
    with pytest.raises(ValueError, match=rf"{image_id}.png: class ids must be 0-20 or 255 "
                                         r"\(ignore\), found \[30\]"):
        PascalContext(copy, "val", tasks=("segmentation",))[0]
    Image.fromarray(np.zeros((20, 28, 3), dtype=np.uint8)).save(
        copy / "sal_distill" / f"{image_id}.png")
    with pytest.raises(ValueError, match=r"expected an 8-bit PNG of shape \(20, 28\)"):
        PascalContext(copy, "val", tasks=("saliency",))[0]
    scipy.io.savemat(copy / "pascal-context/trainval" / f"{image_id}.mat",
                     {"Labels": np.zeros((20, 28), dtype=np.uint16)})
    with pytest.raises(ValueError, match=r"no variable 'LabelMap'"):
        PascalContext(copy, "val", tasks=("edges",))[0]
    scipy.io.savemat(copy / "pascal-context/trainval" / f"{image_id}.mat",
                     {"LabelMap": np.zeros((10, 28), dtype=np.uint16)})
    with pytest.raises(ValueError, match=r"shape \(10, 28\) does not match the image size"):
        PascalContext(copy, "val", tasks=("normals",))[0]
    (copy / "human_parts" / f"{image_id}.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"cannot read PASCAL-Context file .*{image_id}.mat"):
        PascalContext(copy, "val", tasks=("parts",))[0]
    (copy / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"cannot read PASCAL-Context image .*{image_id}.jpg"):
        PascalContext(copy, "val", tasks=("parts",))[0]
