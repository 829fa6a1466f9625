"""LightningDataModules: each benchmark's splits, loaders and tasks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tasknorm.data.multidigits import (
    DEFAULT_TASKS,
    PAIR_TASKS,
    MultiDigitsSpec,
    Variant,
    check_tasks,
    load_multidigits,
)
from tasknorm.tasks import ClassificationTask, Task


class BenchmarkDataModule(L.LightningDataModule, ABC):
    """The loaders every benchmark shares; subclasses supply ``tasks`` and ``build_splits``.

    Training batches are shuffled by a ``DistributedSampler`` seeded with ``seed`` (one replica
    per process), whose order depends only on the epoch, so resuming from a checkpoint replays
    exactly the batches an uninterrupted run would have seen.

    The constructor arguments (the subclass's too) are saved as hyper-parameters, so checkpoints
    record the data they were trained on. Before any training step, :meth:`setup` checks that
    the first sample of every split is readable and holds the image and every task's target,
    and :meth:`train_dataloader` that every process gets at least one training batch.

    Args:
        batch_size: samples per batch (per process).
        num_workers: data-loading worker processes (kept alive between epochs).
        seed: seed of the training order (and of any split carved by the subclass).
    """

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, Dataset] = {}

    @property
    @abstractmethod
    def tasks(self) -> list[Task]:
        """The benchmark's tasks, in the order of the model's heads."""

    @abstractmethod
    def build_splits(self) -> dict[str, Dataset]:
        """The ``"train"``, ``"val"`` and ``"test"`` datasets."""

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            splits = self.build_splits()
            self.check_splits(splits)
            self.splits = splits

    def check_splits(self, splits: dict[str, Dataset]) -> None:
        """Raise ValueError unless the first sample of every split holds the image and each
        task's target (reading it decodes and checks its files; random augmentations draw from
        a forked generator)."""
        keys = {"image", *(task.name for task in self.tasks)}
        for name, dataset in splits.items():
            if len(dataset) == 0:
                raise ValueError(f"the {name} split is empty")
            with torch.random.fork_rng(devices=[]):
                sample = dataset[0]
            missing = keys - set(sample)
            if missing:
                raise ValueError(f"the {name} split's samples lack {sorted(missing)}; the tasks "
                                 f"need {sorted(keys)}")

    def train_dataloader(self) -> DataLoader:
        """The training batches; ValueError if a process would get none (batches are full)."""
        dataset = self.splits["train"]
        trainer = self.trainer
        processes = trainer.world_size if trainer else 1
        if len(dataset) < self.batch_size * processes:
            raise ValueError(f"the training split has {len(dataset)} samples, fewer than one "
                             f"batch ({self.batch_size} per process × {processes}): no training "
                             "step would run")
        sampler = DistributedSampler(
            dataset, num_replicas=processes, rank=trainer.global_rank if trainer else 0,
            shuffle=True, seed=self.seed, drop_last=True)
        return self._loader(dataset, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"])

    def _loader(self, dataset: Dataset, **kwargs: object) -> DataLoader:
        workers = self.num_workers
        return DataLoader(dataset, self.batch_size, num_workers=workers,
                          persistent_workers=workers > 0, **kwargs)


def carve_validation(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded random ``fraction`` of ``size`` training samples held out for
    validation, and of the rest (both sorted): ``(train, val)``.

    For benchmarks whose public layout has no validation split (NYUv2, Cityscapes), so that
    model selection never looks at the test split.

    Example:
        >>> train, val = carve_validation(10, 0.2, seed=0)
        >>> len(train), len(val), sorted({*train, *val}) == list(range(10))
        (8, 2, True)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    held_out = max(1, round(size * fraction))
    if held_out >= size:
        raise ValueError(f"cannot hold out {held_out} of {size} training samples for validation")
    order = np.random.default_rng(seed).permutation(size)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


class MultiDigitsDataModule(BenchmarkDataModule):
    """MultiDigits (see :mod:`tasknorm.data.multidigits`) with the tasks named in ``tasks``
    (keys of :data:`~tasknorm.data.multidigits.PAIR_TASKS`), in that order.

    Example:
        >>> data = MultiDigitsDataModule(tasks=["left", "sum_parity", "larger"])
        >>> [(task.name, task.num_classes) for task in data.tasks]
        [('left', 10), ('sum_parity', 2), ('larger', 3)]
    """

    def __init__(
        self,
        variant: Variant = "left_right",
        sizes: tuple[int, int, int] = (10_000, 2_000, 2_000),
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        cache_dir: str | None = None,
        tasks: Sequence[str] = DEFAULT_TASKS,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.spec = MultiDigitsSpec(variant=variant, sizes=tuple(sizes), seed=seed)
        self.task_names = check_tasks(tasks, variant)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    @property
    def tasks(self) -> list[Task]:
        return [ClassificationTask(name, PAIR_TASKS[name].num_classes(self.spec.variant))
                for name in self.task_names]

    def prepare_data(self) -> None:
        load_multidigits(self.spec, self.cache_dir, self.task_names)

    def build_splits(self) -> dict[str, Dataset]:
        return dict(load_multidigits(self.spec, self.cache_dir, self.task_names))
