import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tasknorm.data.cityscapes import (
    Cityscapes,
    Cityscapes3Task,
    Cityscapes3TaskDataModule,
    CityscapesDataModule,
    write_tiny_cityscapes,
    write_tiny_cityscapes_3task,
)
from tasknorm.data.transforms import RandomScaleCrop

H, W = 8, 16
# cityscapesScripts labels.py, written out independently of the module's table
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@pytest.fixture(scope="module")
def mtan_root(tmp_path_factory):
    return write_tiny_cityscapes(tmp_path_factory.mktemp("cs"), sizes=(6, 4), height=H, width=W)


@pytest.fixture(scope="module")
def al_root(tmp_path_factory):
    return write_tiny_cityscapes_3task(tmp_path_factory.mktemp("cs3"), sizes=(6, 4), height=H,
                                       width=W)


@pytest.fixture
def mtan_copy(mtan_root, tmp_path):
    return shutil.copytree(mtan_root, tmp_path / "cs")


@pytest.fixture
def al_copy(al_root, tmp_path):
    return shutil.copytree(al_root, tmp_path / "cs3")


# --- 2-task, mtan layout -------------------------------------------------------------------

@pytest.mark.parametrize(("num_classes", "folder"), [(7, "label_7"), (19, "label_19")])
def test_mtan_layout_decoding(mtan_root, num_classes, folder):
    dataset = Cityscapes(mtan_root, "train", num_classes=num_classes)
    assert len(dataset) == 6 and len(Cityscapes(mtan_root, "test")) == 4
    sample = dataset[2]
    label = np.load(mtan_root / "train" / folder / "2.npy")
    disparity = np.load(mtan_root / "train/depth/2.npy")[..., 0]
    assert np.array_equal(sample["image"].numpy(),
                          np.load(mtan_root / "train/image/2.npy").transpose(2, 0, 1))
    assert sample["segmentation"].dtype == torch.int64
    assert np.array_equal(sample["segmentation"].numpy(), label)
    assert (label == -1).any() and label.max() < num_classes
    assert sample["disparity"].shape == (1, H, W) and sample["disparity"].dtype == torch.float32
    assert np.array_equal(sample["disparity"][0].isnan().numpy(), disparity == 0)
    assert np.array_equal(sample["disparity"][0].numpy()[disparity > 0], disparity[disparity > 0])


def test_libmtl_label_folder_and_class_range(mtan_copy):
    (mtan_copy / "train/label_7").rename(mtan_copy / "train/label")
    sample = Cityscapes(mtan_copy, "train", num_classes=7)[0]
    assert np.array_equal(sample["segmentation"].numpy(),
                          np.load(mtan_copy / "train/label/0.npy"))
    shutil.rmtree(mtan_copy / "train/label")
    shutil.copytree(mtan_copy / "train/label_19", mtan_copy / "train/label")
    label = np.load(mtan_copy / "train/label/0.npy")
    assert label.max() >= 7  # a 19-class file where 7 classes are expected is rejected
    with pytest.raises(ValueError, match=r"train/label/0\.npy: label \(7 classes"):
        Cityscapes(mtan_copy, "train", num_classes=7)[0]
    shutil.rmtree(mtan_copy / "train/label_19")
    with pytest.raises(FileNotFoundError, match=r"no label_19 folder in .*train"):
        Cityscapes(mtan_copy, "train", num_classes=19)
    assert set(Cityscapes(mtan_copy, "train", ("disparity",), num_classes=19)[0]) == {
        "image", "disparity"}
    with pytest.raises(ValueError, match="must be 7 or 19, got 13"):
        Cityscapes(mtan_copy, "train", num_classes=13)


def test_mtan_errors(mtan_copy, tmp_path):
    missing = re.escape(str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=missing + " is not a directory"):
        Cityscapes(tmp_path / "none", "train")
    with pytest.raises(ValueError, match=r"unknown: \['depth'\].*'segmentation', 'disparity'"):
        Cityscapes(mtan_copy, "train", tasks=("depth",))
    np.save(mtan_copy / "val/depth/3.npy", np.full((H, W, 1), -0.1))
    with pytest.raises(ValueError, match=r"val/depth/3\.npy: depth has negative values"):
        Cityscapes(mtan_copy, "test")[3]
    (mtan_copy / "val/image/1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing Cityscapes file .*val/image/1\.npy"):
        Cityscapes(mtan_copy, "test")


def test_mtan_datamodule(mtan_root):
    module = CityscapesDataModule(str(mtan_root), num_classes=19, augment=True,
                                  disparity_scaling="multiply", val_fraction=0.5, batch_size=3)
    module.setup()
    train, val, test = (module.splits[k] for k in ("train", "val", "test"))
    assert len(train) == len(val) == 3 and len(test) == 4
    assert sorted(train.indices + val.indices) == list(range(6))
    assert test.split_dir.name == "val" and val.split_dir.name == "train"
    zoom = train.transform.transforms[0]
    assert isinstance(zoom, RandomScaleCrop) and zoom.depth_scaling == "multiply"
    assert val.transform is None and test.transform is None
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (3, 3, H, W) and batch["segmentation"].shape == (3, H, W)
    assert batch["segmentation"].dtype == torch.int64 and batch["disparity"].shape == (3, 1, H, W)
    assert [(t.name, t.out_channels) for t in module.tasks] == [("segmentation", 19),
                                                               ("disparity", 1)]
    assert CityscapesDataModule(str(mtan_root)).tasks[0].out_channels == 7
    with pytest.raises(ValueError, match="depth_scaling"):
        CityscapesDataModule(str(mtan_root), augment=True, disparity_scaling="inverse")


# --- 3-task, Auto-Lambda layout -------------------------------------------------------------

def test_writer_uses_the_auto_lambda_file_formats(al_root):
    for sub, suffix, mode in (("image", "png", "RGB"), ("seg", "png", "L"),
                              ("depth", "png", "I;16"), ("part_seg", "tif", "I")):
        files = sorted((al_root / "val" / sub).iterdir())
        assert [f.name for f in files] == [f"{i}.{suffix}" for i in range(4)]
        with Image.open(files[0]) as image:
            assert image.mode == mode and image.size == (W, H)


def write_targets(root, index=0, *, image=None, ids=None, raw=None, uids=None):
    folder = root / "train"
    if image is not None:
        Image.fromarray(image).save(folder / "image" / f"{index}.png")
    if ids is not None:
        Image.fromarray(ids).save(folder / "seg" / f"{index}.png")
    if raw is not None:
        Image.fromarray(raw).save(folder / "depth" / f"{index}.png")
    if uids is not None:
        Image.fromarray(uids).save(folder / "part_seg" / f"{index}.tif")


def test_segmentation_maps_label_ids_to_19_train_ids(al_copy):
    ids = np.resize(np.arange(34, dtype=np.uint8), (H, W))
    write_targets(al_copy, ids=ids)
    decoded = Cityscapes3Task(al_copy, "train", tasks=("segmentation",))[0]["segmentation"]
    expected = np.vectorize(lambda i: TRAIN_ID.get(int(i), -1))(ids)
    assert decoded.dtype == torch.int64 and np.array_equal(decoded.numpy(), expected)
    assert sorted(set(decoded.unique().tolist())) == list(range(-1, 19))
    write_targets(al_copy, ids=np.full((H, W), 40, np.uint8))
    with pytest.raises(ValueError, match=r"seg/0\.png: labelIds up to 40, expected 0\.\.33"):
        Cityscapes3Task(al_copy, "train")[0]


def test_disparity_decoding_reads_16_bit_png_exactly(al_copy):
    raw = np.resize(np.array([0, 1, 1025, 65535, 257, 0, 30001, 2], np.uint16), (H, W))
    write_targets(al_copy, raw=raw)
    disparity = Cityscapes3Task(al_copy, "train", tasks=("disparity",))[0]["disparity"]
    assert disparity.shape == (1, H, W) and disparity.dtype == torch.float32
    row = disparity[0, 0, :8].tolist()
    assert np.isnan(row[0]) and np.isnan(row[5])
    assert row[1:5] + row[6:] == [0.0, 1.0, 65534 / 1024, 0.25, 30000 / 1024, 1 / 1024]


def test_parts_decoding_from_panoptic_uids(al_copy):
    uids = np.array([
        [7, 24, 24003, 2400101, 2400102, 2500103, 2500104, 2400100],
        [2600101, 2700202, 2800303, 2600104, 2700105, 2800106, 26, 26001],
        [2500105, 2600100, 11, 0, 2400199, 2804501, 2501002, 33],
    ], dtype=np.int32)
    expected = np.array([[0, 0, 0, 1, 2, 3, 4, 0],
                         [5, 6, 7, 8, 9, 0, 0, 0],
                         [0, 0, 0, 0, 0, 5, 2, 0]])
    write_targets(al_copy, uids=np.resize(uids, (H, W)))
    parts = Cityscapes3Task(al_copy, "train", tasks=("parts",))[0]["parts"]
    assert parts.dtype == torch.int64
    assert np.array_equal(parts.numpy(), np.resize(expected, (H, W)))
    for bad in (123, -5, 100_000_000):
        write_targets(al_copy, uids=np.full((H, W), bad, np.int32))
        with pytest.raises(ValueError, match=r"part_seg/0\.tif: invalid panoptic-parts uids"):
            Cityscapes3Task(al_copy, "train", tasks=("parts",))[0]


def test_image_scaling_and_normalize_option(al_root):
    image = np.asarray(Image.open(al_root / "train/image/4.png"))
    plain = Cityscapes3Task(al_root, "train")[4]["image"]
    assert plain.shape == (3, H, W) and plain.dtype == torch.float32
    assert torch.allclose(plain, torch.from_numpy(image.transpose(2, 0, 1) / 255).float())
    signed = Cityscapes3Task(al_root, "train", normalize=True)[4]["image"]
    assert torch.allclose(signed, plain * 2 - 1) and signed.min() < 0


def test_auto_lambda_errors(al_copy, tmp_path):
    missing = re.escape(str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=missing + ".*Auto-Lambda layout"):
        Cityscapes3Task(tmp_path / "none", "train")
    write_targets(al_copy, 1, image=np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match=r"image/1\.png: expected an 8-bit RGB image.*mode L"):
        Cityscapes3Task(al_copy, "train")[1]
    (al_copy / "train/seg/2.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"seg/2\.png: not a readable image file"):
        Cityscapes3Task(al_copy, "train")[2]
    write_targets(al_copy, 3, raw=np.zeros((H + 2, W), np.uint16))
    with pytest.raises(ValueError, match=r"depth/3\.png: disparity is \(10, 16\) pixels"):
        Cityscapes3Task(al_copy, "train")[3]
    (al_copy / "val/part_seg/2.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing .* file .*val/part_seg/2\.tif"):
        Cityscapes3Task(al_copy, "test")
    assert len(Cityscapes3Task(al_copy, "test", tasks=("segmentation", "disparity"))) == 4


def test_auto_lambda_datamodule(al_root):
    module = Cityscapes3TaskDataModule(str(al_root), augment=True, crop_size=(8, 8),
                                       val_fraction=0.34, batch_size=2, normalize=True)
    module.setup()
    train, val, test = (module.splits[k] for k in ("train", "val", "test"))
    assert len(train) == 4 and len(val) == 2 and len(test) == 4
    assert not set(train.indices) & set(val.indices) and val.transform is None
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].min() < 0
    assert batch["segmentation"].shape == batch["parts"].shape == (2, 8, 8)
    assert batch["parts"].dtype == torch.int64 and batch["disparity"].shape == (2, 1, 8, 8)
    val_batch = next(iter(module.val_dataloader()))
    assert val_batch["image"].shape == (2, 3, H, W)  # validation is never cropped
    expected = Cityscapes3Task(al_root, "train", normalize=True)[val.indices[0]]
    assert torch.equal(val_batch["disparity"][0].nan_to_num(-1),
                       expected["disparity"].nan_to_num(-1))
    assert [(t.name, t.out_channels) for t in module.tasks] == [
        ("segmentation", 19), ("parts", 10), ("disparity", 1)]
