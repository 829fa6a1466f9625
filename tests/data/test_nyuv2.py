import re
import shutil

import numpy as np
import pytest
import torch

from tasknorm.data.nyuv2 import NYUv2, NYUv2DataModule, write_tiny_nyuv2
from tasknorm.data.transforms import RandomScaleCrop

H, W = 12, 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_nyuv2(tmp_path_factory.mktemp("nyuv2"), sizes=(6, 4), height=H, width=W)


@pytest.fixture
def copy(root, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(root, tmp_path / "nyuv2")


def test_written_files_have_the_mtan_format(root):
    assert sorted(p.name for p in (root / "train").iterdir()) == ["depth", "image", "label",
                                                                   "normal"]
    assert len(list((root / "train/image").glob("*.npy"))) == 6
    assert len(list((root / "val/normal").glob("*.npy"))) == 4
    label = np.load(root / "train/label/0.npy")
    depth, normal = np.load(root / "train/depth/0.npy"), np.load(root / "train/normal/0.npy")
    assert np.load(root / "train/image/0.npy").shape == (H, W, 3)
    assert label.shape == (H, W) and label.dtype.kind == "f" and (label == -1).any()
    assert set(np.unique(label)) <= set(range(-1, 13))
    assert depth.shape == (H, W, 1) and (depth == 0).any() and depth.min() >= 0
    norms = np.linalg.norm(normal, axis=-1)
    assert ((norms == 0) | np.isclose(norms, 1, atol=1e-6)).all() and (norms == 0).any()


def test_loader_decodes_every_encoding(root):
    dataset = NYUv2(root, "train")
    assert len(dataset) == 6 and len(NYUv2(root, "test")) == 4
    sample = dataset[3]
    image = np.load(root / "train/image/3.npy")
    label = np.load(root / "train/label/3.npy")
    depth = np.load(root / "train/depth/3.npy")[..., 0]
    normal = np.load(root / "train/normal/3.npy")
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    assert np.array_equal(sample["image"].numpy(), image.transpose(2, 0, 1))
    assert sample["segmentation"].dtype == torch.int64
    assert np.array_equal(sample["segmentation"].numpy(), label.astype(np.int64))
    assert (sample["segmentation"] == -1).sum() == (label == -1).sum() > 0
    assert sample["depth"].shape == (1, H, W) and sample["depth"].dtype == torch.float32
    assert np.array_equal(sample["depth"][0].isnan().numpy(), depth == 0)
    assert np.array_equal(sample["depth"][0].numpy()[depth > 0], depth[depth > 0])
    assert np.array_equal(sample["normals"].numpy(), normal.transpose(2, 0, 1))


def test_test_split_reads_the_val_folder(root):
    sample = NYUv2(root, "test", tasks=("depth",))[1]
    assert set(sample) == {"image", "depth"}
    assert np.array_equal(sample["image"].numpy(),
                          np.load(root / "val/image/1.npy").transpose(2, 0, 1))


def test_task_subset_and_unknown_tasks(root):
    assert set(NYUv2(root, "train", tasks=("normals", "segmentation"))[0]) == {
        "image", "normals", "segmentation"}
    with pytest.raises(ValueError, match=r"unknown: \['semantic'\].*'segmentation', 'depth'"):
        NYUv2(root, "train", tasks=("semantic",))
    with pytest.raises(ValueError, match="without repeats"):
        NYUv2(root, "train", tasks=("depth", "depth"))
    with pytest.raises(ValueError, match="split 'val'"):
        NYUv2(root, "val")
    with pytest.raises(IndexError, match="indices \\[6\\]"):
        NYUv2(root, "train", indices=[0, 6])


def test_missing_root_and_missing_file(tmp_path, copy):
    missing = re.escape(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=missing + ".*mtan layout"):
        NYUv2(tmp_path / "nope", "train")
    (copy / "train/depth/2.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing NYUv2 file .*train/depth/2\.npy"):
        NYUv2(copy, "train")
    assert len(NYUv2(copy, "train", tasks=("segmentation",))) == 6  # depth not needed
    shutil.rmtree(copy / "val/image")
    with pytest.raises(FileNotFoundError, match=r"no <i>\.npy files in .*val/image"):
        NYUv2(copy, "test")


@pytest.mark.parametrize(("folder", "array", "message"), [
    ("image", np.zeros((H, W), np.float32), r"image array of shape \(H, W, 3\), got float32"),
    ("image", np.full((H, W, 3), np.nan, np.float32), "NaN or infinite"),
    ("image", np.full((H, W, 3), 255.0), r"image values span \[255, 255\], expected \[0, 1\]"),
    ("label", np.full((H, W), 13.0), r"label \(13 classes, -1 = ignore\) values span \[13, 13\]"),
    ("label", np.full((H, W), -2.0), "values span"),
    ("label", np.full((H, W), 1.5), "non-integer"),
    ("label", np.zeros((H, W, 1)), r"shape \(H, W\)"),
    ("depth", -np.ones((H, W, 1)), "negative"),
    ("depth", np.ones((H, W)), r"shape \(H, W, 1\)"),
    ("normal", np.full((H, W, 3), 2.0), r"expected \[-1, 1\]"),
    ("normal", np.zeros((H, W, 3), dtype=bool), "numeric normal array"),
    ("label", np.zeros((H + 1, W)), r"segmentation is \(13, 16\) pixels but the image is"),
])
def test_malformed_arrays_are_reported_with_their_file(copy, folder, array, message):
    np.save(copy / "train" / folder / "1.npy", array)
    dataset = NYUv2(copy, "train")
    dataset[0]  # other files are fine
    with pytest.raises(ValueError, match=message) as error:
        dataset[1]
    assert f"train/{folder}/1.npy" in str(error.value)


def test_unreadable_file(copy):
    (copy / "train/normal/0.npy").write_text("not an array")
    with pytest.raises(ValueError, match=r"normal/0\.npy: not a readable \.npy array"):
        NYUv2(copy, "train")[0]


def test_datamodule_splits_and_batch(root):
    module = NYUv2DataModule(str(root), val_fraction=0.34, augment=True, batch_size=2, seed=3)
    module.setup("fit")
    train, val, test = (module.splits[k] for k in ("train", "val", "test"))
    assert len(train) == 4 and len(val) == 2 and len(test) == 4
    assert not set(train.indices) & set(val.indices)
    assert sorted(train.indices + val.indices) == list(range(6))
    assert train.split_dir.name == val.split_dir.name == "train" and test.split_dir.name == "val"
    assert isinstance(train.transform.transforms[0], RandomScaleCrop)
    assert val.transform is None and test.transform is None
    other = NYUv2DataModule(str(root), val_fraction=0.34, seed=4)
    other.setup()
    assert other.splits["val"].indices != val.indices  # the carve follows the seed
    assert other.splits["train"].transform is None

    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, H, W) and batch["image"].dtype == torch.float32
    assert batch["segmentation"].shape == (2, H, W) and batch["segmentation"].dtype == torch.int64
    assert batch["depth"].shape == (2, 1, H, W) and batch["depth"].dtype == torch.float32
    assert batch["normals"].shape == (2, 3, H, W) and batch["normals"].dtype == torch.float32
    val_batch = next(iter(module.val_dataloader()))
    assert torch.equal(val_batch["image"][0], NYUv2(root, "train")[val.indices[0]]["image"])


def test_augmented_depth_is_divided_by_the_zoom(root):
    module = NYUv2DataModule(str(root), tasks=("depth",), augment=True, val_fraction=0.2)
    module.setup()
    train = module.splits["train"]
    raw = NYUv2(root, "train", tasks=("depth",))
    torch.manual_seed(0)
    zoomed = 0
    for position in range(len(train)):
        depth = train[position]["depth"]
        original = raw[train.indices[position]]["depth"]
        values = depth[~depth.isnan()]
        matches = [s for s in (1.0, 1.2, 1.5)
                   if torch.isin(values, original[~original.isnan()] / s).all()]
        assert matches  # every value is an original depth divided by one zoom factor
        zoomed += 1.0 not in matches
    assert zoomed > 0


def test_datamodule_tasks_and_validation(root):
    module = NYUv2DataModule(str(root), tasks=("segmentation", "normals"), num_classes=13)
    tasks = module.tasks
    assert [t.name for t in tasks] == ["segmentation", "normals"]
    assert [t.out_channels for t in tasks] == [13, 3]
    with pytest.raises(ValueError, match="unknown: \\['edges'\\]"):
        NYUv2DataModule(str(root), tasks=("edges",))


def test_setup_reads_the_first_sample_of_each_split_without_drawing_random_numbers(root, copy):
    """A malformed file is found when the data is set up, before any step; checking the
    augmented training split leaves the global random state as it was."""
    module = NYUv2DataModule(str(root), augment=True, batch_size=2)
    state = torch.random.get_rng_state()
    module.setup("fit")
    assert torch.equal(torch.random.get_rng_state(), state)
    first = copy / "val" / "depth" / "0.npy"  # the test split's first depth map
    np.save(first, np.full((H, W, 1), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"val/depth/0\.npy: depth contains NaN"):
        NYUv2DataModule(str(copy), batch_size=2).setup("fit")


def test_setup_refuses_a_training_split_without_a_full_batch(root):
    with pytest.raises(ValueError, match=r"the training split has 5 samples, fewer than one batch "
                                         r"\(8 per process × 1\): no training step would run"):
        module = NYUv2DataModule(str(root), batch_size=8, val_fraction=0.2)
        module.setup("fit")
        module.train_dataloader()
