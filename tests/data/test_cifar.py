import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tasknorm.data.cifar import CIFAR, CifarDataModule, load_cifar, write_tiny_cifar
from tasknorm.data.imagefolder import ImageFolderDataset


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_tiny_release_round_trip(tmp_path, name, classes):
    folder = write_tiny_cifar(tmp_path, name, per_file=3)
    images, labels = load_cifar(tmp_path, name, "train")
    assert images.shape == ((15 if name == "cifar10" else 3), 3, 32, 32)
    assert images.dtype == np.uint8 and labels.max() < classes
    # channel-planar layout: the first 1024 bytes of a row are the red plane
    first = "data_batch_1" if name == "cifar10" else "train"
    with open(folder / first, "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    assert np.array_equal(images[0, 0].reshape(-1), raw[:1024])
    # the release folder itself is accepted too
    assert len(CIFAR(folder, name, "test")) == 3


def test_samples_are_normalised_dicts(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", per_file=2)
    sample = CIFAR(tmp_path, "cifar10", "test")[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert isinstance(sample["label"], int)


def test_missing_files_are_named(tmp_path):
    folder = write_tiny_cifar(tmp_path, "cifar10", per_file=2)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing: data_batch_3"):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*train, test, meta"):
        load_cifar(tmp_path, "cifar100")


def test_datamodule_splits(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", per_file=4)
    dm = CifarDataModule(str(tmp_path), "cifar10", batch_size=4, val_split=0.2)
    dm.setup()
    assert len(dm.train_set) == 16 and len(dm.val_set) == 4 and len(dm.test_set) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4,)
    dm = CifarDataModule(str(tmp_path), "cifar10", batch_size=4, val_split="test")
    dm.setup()
    assert dm.val_set is dm.test_set


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / split / cls / "a.JPEG")
    data = ImageFolderDataset(tmp_path, "val")
    assert data.classes == ["n01", "n02"] and len(data) == 2
    sample = data[1]
    assert sample["image"].shape == (3, 224, 224) and sample["label"] == 1
    with pytest.raises(FileNotFoundError, match="<class>/<image>"):
        ImageFolderDataset(tmp_path, "test")
