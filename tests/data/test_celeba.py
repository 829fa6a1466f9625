import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tasknorm.data.celeba import (
    ATTRIBUTES,
    CelebA,
    CelebADataModule,
    attribute_task_name,
    read_annotations,
    write_tiny_celeba,
)
from tasknorm.tasks import BinaryTask

SIZES = (5, 3, 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_celeba(tmp_path_factory.mktemp("celeba"), sizes=SIZES, seed=3)


@pytest.fixture
def copy(tiny, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(tiny, tmp_path / "celeba")


def file_rows(root):
    """The attribute file parsed independently: names and {file: 0/1 labels}."""
    lines = (root / "Anno/list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    rows = {}
    for line in lines[2:]:
        name, *values = line.split()
        rows[name] = [int(v) for v in values]
    return names, {k: [(v + 1) // 2 for v in values] for k, values in rows.items()}


def test_layout_is_the_official_one(tiny):
    lines = (tiny / "Anno/list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == str(sum(SIZES))
    assert lines[1].split() == list(ATTRIBUTES)
    assert "  1" in lines[2] or "  1" in lines[3]  # doubled whitespace before a positive value
    partition = (tiny / "Eval/list_eval_partition.txt").read_text().splitlines()
    assert partition[0] == "000001.jpg 0" and partition[-1] == f"{sum(SIZES):06d}.jpg 2"
    with Image.open(tiny / "Img/img_align_celeba/000001.jpg") as image:
        assert image.format == "JPEG" and image.size == (178, 218)


def test_splits_follow_the_partition_file(tiny):
    for split, size, first in zip(("train", "val", "test"), SIZES, (1, 6, 9), strict=True):
        data = CelebA(tiny, split)
        assert len(data) == size
        assert data.files[0] == f"{first:06d}.jpg"


def test_labels_map_minus_one_to_zero_and_follow_the_file(tiny):
    names, rows = file_rows(tiny)
    data = CelebA(tiny, "val")
    assert data.tasks == [attribute_task_name(n) for n in names]
    assert data.tasks[0] == "a5_o_clock_shadow" and "smiling" in data.tasks
    for i, file in enumerate(data.files):
        sample = data[i]
        got = [sample[t].item() for t in data.tasks]
        assert got == rows[file]
        assert all(sample[t].dtype == torch.int64 and sample[t].shape == () for t in data.tasks)


def test_images_are_the_listed_files_resized_to_unit_range(tiny):
    data = CelebA(tiny, "train")
    means = []
    for i, file in enumerate(data.files):
        image = data[i]["image"]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        with Image.open(tiny / "Img/img_align_celeba" / file) as original:
            expected = np.asarray(original, dtype=np.float64).mean(axis=(0, 1)) / 255
        assert np.allclose(image.double().mean(dim=(1, 2)).numpy(), expected, atol=2e-3)
        means.append(expected)
    assert len({tuple(np.round(m, 2)) for m in means}) == len(means)  # distinct images


def test_image_size_is_configurable(tiny):
    assert CelebA(tiny, "test", image_size=32)[0]["image"].shape == (3, 32, 32)
    assert CelebA(tiny, "test", image_size=(40, 24))[0]["image"].shape == (3, 40, 24)


def test_attribute_subset_by_file_or_task_name(tiny):
    _, rows = file_rows(tiny)
    data = CelebA(tiny, "train", attributes=["Young", "a5_o_clock_shadow"])
    assert data.tasks == ["young", "a5_o_clock_shadow"]
    sample = data[2]
    assert set(sample) == {"image", "young", "a5_o_clock_shadow"}
    assert [sample["young"].item(), sample["a5_o_clock_shadow"].item()] == [
        rows[data.files[2]][39], rows[data.files[2]][0]]
    with pytest.raises(ValueError, match=r"unknown CelebA attributes \['Beard'\]"):
        CelebA(tiny, "train", attributes=["Beard"])
    with pytest.raises(ValueError, match="distinct and non-empty"):
        CelebA(tiny, "train", attributes=["Young", "young"])


def test_attribute_names_are_read_from_the_file(copy):
    path = copy / "Anno/list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("Smiling", "Grinning")
    path.write_text("\n".join(lines) + "\n")
    assert "grinning" in CelebA(copy, "test").tasks


def test_png_copy_is_accepted_and_decodes_the_same_pixels(tiny, copy):
    jpg_dir, png_dir = copy / "Img/img_align_celeba", copy / "Img/img_align_celeba_png"
    png_dir.mkdir()
    for path in jpg_dir.iterdir():
        with Image.open(path) as image:
            image.save(png_dir / f"{path.stem}.png")
    shutil.rmtree(jpg_dir)
    from_png, from_jpg = CelebA(copy, "val"), CelebA(tiny, "val")
    assert from_png.files[0].endswith(".png")
    assert torch.equal(from_png[1]["image"], from_jpg[1]["image"])


def test_datamodule_batches_and_tasks(tiny):
    dm = CelebADataModule(str(tiny), attributes=("Smiling", "Male", "5_o_Clock_Shadow"),
                          image_size=32, batch_size=4)
    assert [type(t) for t in dm.tasks] == [BinaryTask] * 3
    assert [t.name for t in dm.tasks] == ["smiling", "male", "a5_o_clock_shadow"]
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == list(SIZES)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    for task in ("smiling", "male", "a5_o_clock_shadow"):
        assert batch[task].shape == (4,) and batch[task].dtype == torch.int64
        assert set(batch[task].tolist()) <= {0, 1}
    assert len(CelebADataModule(str(tiny)).tasks) == 40


def test_missing_root_and_files(tiny, copy, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CelebA root .*nowhere is not a folder"):
        CelebA(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="unknown CelebA split 'valid'"):
        CelebA(tiny, "valid")
    (copy / "Eval/list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_eval_partition.txt is missing"):
        read_annotations(copy)
    (copy / "Anno/list_attr_celeba.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_attr_celeba.txt is missing"):
        CelebADataModule(str(copy)).tasks  # noqa: B018


def test_missing_image_folder_and_image(copy):
    (copy / "Img/img_align_celeba/000002.jpg").unlink()
    data = CelebA(copy, "train")
    with pytest.raises(FileNotFoundError, match=r"CelebA image .*000002.jpg is missing"):
        data[1]
    shutil.rmtree(copy / "Img/img_align_celeba")
    with pytest.raises(FileNotFoundError, match="CelebA images not found"):
        CelebA(copy, "train")


def test_unreadable_image_names_the_file(copy):
    (copy / "Img/img_align_celeba/000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read CelebA image .*000003.jpg"):
        CelebA(copy, "train")[2]


def _edit_row(root, line_index, edit):
    path = root / "Anno/list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[line_index] = edit(lines[line_index])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit", [
    lambda line: line.rsplit(" ", 1)[0],  # 39 values
    lambda line: line + "  1",  # 41 values
    lambda line: line[:-2] + " 0",  # a value outside {1, -1}
])
def test_malformed_attribute_row_names_file_and_line(copy, edit):
    _edit_row(copy, 4, edit)
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt line 5: expected a file name "
                                         r"and 40 values in \{1, -1\}"):
        read_annotations(copy)


def test_image_count_line_must_match_the_rows(copy):
    _edit_row(copy, 0, lambda line: "11")
    with pytest.raises(ValueError, match="announces '11' images but 10 attribute rows follow"):
        read_annotations(copy)


def test_partition_must_list_the_attribute_rows_in_order(copy):
    path = copy / "Eval/list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2 lists 000003.jpg where the attribute file "
                                         r"lists 000002.jpg"):
        read_annotations(copy)
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="lists 9 images but the attribute file lists 10"):
        read_annotations(copy)
    path.write_text("\n".join([*sorted(lines[:-1]), "000010.jpg 3"]) + "\n")
    with pytest.raises(ValueError, match=r"line 10: expected '<file> 0\|1\|2'"):
        read_annotations(copy)
