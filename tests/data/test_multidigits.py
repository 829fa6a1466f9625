import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tasknorm.data import MultiDigitsDataModule, MultiDigitsSpec, generate, load_multidigits
from tasknorm.data.multidigits import PAIR_TASKS

SMALL = MultiDigitsSpec(sizes=(200, 50, 50))


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def test_shapes_and_label_ranges(small):
    size = SMALL.image_size
    for split, n in zip(("train", "val", "test"), SMALL.sizes, strict=True):
        assert small[split]["image"].shape == (n, size, size)
        assert small[split]["image"].dtype == np.uint8
        for task in ("left", "right"):
            labels = small[split][task]
            assert labels.min() >= 0 and labels.max() <= 9


def test_generation_is_deterministic_and_seeded(small):
    again = generate(SMALL)
    for split in small:
        for key in small[split]:
            assert np.array_equal(small[split][key], again[split][key])
    other = generate(MultiDigitsSpec(sizes=(200, 50, 50), seed=1))
    assert not np.array_equal(other["train"]["image"], small["train"]["image"])


def test_composites_are_real_digits_placed_as_documented():
    """Undo the composition independently: the left digit's top-left block is untouched where
    the right digit does not reach, and must be one of the scaled sklearn digits."""
    spec = MultiDigitsSpec(sizes=(20, 5, 5), jitter=0)
    data = generate(spec)["train"]
    digits = load_digits()
    scaled = np.round(digits.images * (255 / 16)).astype(np.uint8).repeat(2, 1).repeat(2, 2)
    corner = spec.shift  # rows/cols [0, shift) are covered by the left digit only
    for image, label in zip(data["image"], data["left"], strict=True):
        matches = [i for i in range(len(scaled))
                   if np.array_equal(scaled[i, :corner, :corner], image[:corner, :corner])
                   and digits.target[i] == label]
        assert matches


def test_even_odd_variant_labels_index_the_even_and_odd_classes():
    spec = MultiDigitsSpec(variant="even_odd", sizes=(300, 20, 20))
    data = generate(spec)["train"]
    assert PAIR_TASKS["left"].num_classes("even_odd") == 5
    assert set(np.unique(data["left"])) == set(range(5))
    assert set(np.unique(data["right"])) == set(range(5))


def test_source_digits_are_disjoint_across_splits(monkeypatch):
    """Record which source images each split draws from: no image feeds two splits."""
    from tasknorm.data import multidigits

    used: list[set[int]] = []
    original = multidigits._draw

    def recording_draw(pool, targets, classes, size, rng):
        drawn = original(pool, targets, classes, size, rng)
        used.append(set(drawn.tolist()))
        return drawn

    monkeypatch.setattr(multidigits, "_draw", recording_draw)
    generate(MultiDigitsSpec(sizes=(2000, 500, 500)))
    train, val, test = used[0] | used[1], used[2] | used[3], used[4] | used[5]
    assert not (train & val) and not (train & test) and not (val & test)


def test_cache_round_trip_and_corrupt_cache_is_regenerated(tmp_path):
    first = load_multidigits(SMALL, tmp_path)
    files = list(tmp_path.glob("multidigits-*.npz"))
    assert len(files) == 1
    cached = load_multidigits(SMALL, tmp_path)
    assert torch.equal(cached["test"].images, first["test"].images)
    files[0].write_bytes(b"not a zip file")
    regenerated = load_multidigits(SMALL, tmp_path)
    assert torch.equal(regenerated["test"].images, first["test"].images)


def test_items_follow_the_batch_convention(tmp_path):
    item = load_multidigits(SMALL, tmp_path)["train"][0]
    assert set(item) == {"image", "left", "right"}
    assert item["image"].shape == (1, SMALL.image_size, SMALL.image_size)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["left"].dtype == torch.long


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="unknown MultiDigits variant 'odd_even'"):
        MultiDigitsSpec(variant="odd_even")
    with pytest.raises(ValueError, match="three positive split sizes"):
        MultiDigitsSpec(sizes=(10, 0, 10))
    with pytest.raises(ValueError, match="summing to 1"):
        MultiDigitsSpec(source_fractions=(0.5, 0.5, 0.5))


def test_datamodule_tasks_and_loaders(tmp_path):
    module = MultiDigitsDataModule(variant="even_odd", sizes=(64, 16, 16), batch_size=8,
                                   cache_dir=str(tmp_path))
    assert [(t.name, t.num_classes) for t in module.tasks] == [("left", 5), ("right", 5)]
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].shape == (8, 1, module.spec.image_size, module.spec.image_size)


def test_training_order_depends_only_on_seed_and_epoch(tmp_path):
    """What makes resuming exact: a fresh loader at epoch e replays epoch e's batches."""
    module = MultiDigitsDataModule(sizes=(64, 16, 16), batch_size=8, cache_dir=str(tmp_path))
    module.setup("fit")

    def epoch_labels(epoch):
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["left"] for b in loader])

    assert torch.equal(epoch_labels(1), epoch_labels(1))
    assert not torch.equal(epoch_labels(0), epoch_labels(1))
    assert len(epoch_labels(0)) == 64


# hand-made digit pairs and each task's expected labels and number of classes, per variant
PAIRS = {
    "left_right": ([3, 7, 4, 0, 9, 5], [7, 3, 4, 9, 9, 0]),
    "even_odd": ([0, 8, 4, 2, 6], [1, 3, 5, 9, 7]),
}
EXPECTED = {
    "left_right": {
        "left": (10, [3, 7, 4, 0, 9, 5]),
        "right": (10, [7, 3, 4, 9, 9, 0]),
        "sum": (19, [10, 10, 8, 9, 18, 5]),
        "difference": (10, [4, 4, 0, 9, 0, 5]),
        "larger": (3, [1, 0, 2, 1, 2, 0]),
        "sum_parity": (2, [0, 0, 0, 1, 0, 1]),
        "product_parity": (2, [1, 1, 0, 0, 1, 0]),
        "left_even": (2, [0, 0, 1, 1, 0, 0]),
        "left_large": (2, [0, 1, 0, 0, 1, 1]),
        "left_prime": (2, [1, 1, 0, 0, 0, 1]),
        "left_loop": (2, [0, 0, 0, 1, 1, 0]),
        "left_mod3": (3, [0, 1, 1, 0, 0, 2]),
        "right_even": (2, [0, 0, 1, 0, 0, 1]),
        "right_large": (2, [1, 0, 0, 1, 1, 0]),
        "right_prime": (2, [1, 1, 0, 0, 0, 0]),
        "right_loop": (2, [0, 0, 0, 1, 1, 1]),
        "right_mod3": (3, [1, 0, 1, 0, 0, 0]),
        "equal": (2, [0, 0, 1, 0, 1, 0]),
        "sum_large": (2, [1, 1, 0, 0, 1, 0]),
        "both_large": (2, [0, 0, 0, 0, 1, 0]),
        "close": (2, [0, 0, 1, 0, 1, 0]),
        "sum_mod3": (3, [1, 1, 2, 0, 0, 2]),
    },
    "even_odd": {  # classes: the values a task takes on (even, odd) pairs, in increasing order
        "left": (5, [0, 4, 2, 1, 3]),
        "right": (5, [0, 1, 2, 4, 3]),
        "sum": (9, [0, 5, 4, 5, 6]),  # odd sums 1, 3, ..., 17
        "difference": (5, [0, 2, 0, 3, 0]),  # odd differences 1, 3, ..., 9
        "larger": (2, [1, 0, 1, 1, 1]),  # never equal
        "left_large": (2, [0, 1, 0, 0, 1]),
        "left_prime": (2, [0, 0, 0, 1, 0]),
        "left_loop": (2, [1, 1, 0, 0, 1]),
        "left_mod3": (3, [0, 2, 1, 2, 0]),
        "right_large": (2, [0, 0, 1, 1, 1]),
        "right_prime": (2, [0, 1, 1, 0, 1]),
        "right_loop": (2, [0, 0, 0, 1, 0]),
        "right_mod3": (3, [1, 0, 2, 0, 1]),
        "sum_large": (2, [0, 1, 0, 1, 1]),
        "both_large": (2, [0, 0, 0, 0, 1]),
        "close": (2, [1, 0, 1, 0, 1]),
        "sum_mod3": (3, [1, 2, 0, 2, 1]),
    },
}


@pytest.mark.parametrize("variant", ["left_right", "even_odd"])
def test_every_task_labels_hand_made_pairs(variant):
    left, right = (np.array(digits) for digits in PAIRS[variant])
    constant = ({"sum_parity", "product_parity", "left_even", "right_even", "equal"}
                if variant == "even_odd" else set())
    assert set(EXPECTED[variant]) | constant == set(PAIR_TASKS)
    for name, (num_classes, labels) in EXPECTED[variant].items():
        task = PAIR_TASKS[name]
        assert task.num_classes(variant) == num_classes, name
        assert task.labels(left, right, variant).tolist() == labels, name
    for name in constant:
        assert PAIR_TASKS[name].num_classes(variant) == 1


def test_datamodule_with_configured_tasks(tmp_path):
    tasks = ["larger", "sum_parity", "left", "difference"]
    module = MultiDigitsDataModule(sizes=(64, 16, 16), batch_size=64, cache_dir=str(tmp_path),
                                   tasks=tasks)
    assert [(t.name, t.num_classes) for t in module.tasks] == [
        ("larger", 3), ("sum_parity", 2), ("left", 10), ("difference", 10)]
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert list(batch) == ["image", *tasks]
    digits = MultiDigitsDataModule(sizes=(64, 16, 16), cache_dir=str(tmp_path))
    digits.setup("fit")
    left, right = (digits.splits["test"].targets[side].numpy() for side in ("left", "right"))
    targets = module.splits["test"].targets
    assert np.array_equal(targets["sum_parity"], (left + right) % 2)
    assert np.array_equal(targets["difference"], np.abs(left - right))
    assert np.array_equal(targets["larger"], np.select([left > right, right > left], [0, 1], 2))


def test_default_tasks_are_the_generated_left_and_right_labels(tmp_path):
    """The default tasks, cache name and labels are those of the two-task dataset."""
    assert MultiDigitsSpec().key() == "070aa933cdc6fd0b"
    for variant in ("left_right", "even_odd"):
        spec = MultiDigitsSpec(variant=variant, sizes=(64, 16, 16))
        module = MultiDigitsDataModule(variant=variant, sizes=spec.sizes, cache_dir=str(tmp_path))
        assert [t.name for t in module.tasks] == ["left", "right"]
        module.setup("fit")
        for split, arrays in generate(spec).items():
            targets = module.splits[split].targets
            assert list(targets) == ["left", "right"]
            for task in targets:
                assert np.array_equal(targets[task].numpy(), arrays[task])


def test_bad_task_lists_are_rejected():
    with pytest.raises(ValueError, match=r"unknown MultiDigits task 'top'; expected some of "
                                         r"left, right, sum, difference, larger"):
        MultiDigitsDataModule(tasks=["left", "top"])
    with pytest.raises(ValueError, match=r"must be distinct, got \['left', 'larger', 'left'\]"):
        MultiDigitsDataModule(tasks=["left", "larger", "left"])
    with pytest.raises(ValueError, match="'sum_parity' has a single value in variant 'even_odd'"):
        MultiDigitsDataModule(variant="even_odd", tasks=["left", "sum_parity"])
    with pytest.raises(ValueError, match="at least one task"):
        load_multidigits(SMALL, tasks=[])


def test_datamodule_options_are_recorded_as_hyperparameters(tmp_path):
    """They reach every checkpoint, which is how resuming compares the data options."""
    module = MultiDigitsDataModule(variant="even_odd", sizes=(64, 16, 16), batch_size=8,
                                   cache_dir=str(tmp_path), tasks=["left", "larger"])
    assert dict(module.hparams) == {"variant": "even_odd", "sizes": (64, 16, 16), "seed": 0,
                                    "batch_size": 8, "num_workers": 0,
                                    "cache_dir": str(tmp_path), "tasks": ["left", "larger"]}
