"""LightningDataModules: each benchmark's splits, loaders and tasks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tasknorm.data.multidigits import MultiDigitsSpec, Variant, load_multidigits
from tasknorm.tasks import ClassificationTask, Task


class MultiDigitsDataModule(L.LightningDataModule):
    """MultiDigits (see :mod:`tasknorm.data.multidigits`) with tasks ``left`` and ``right``.

    Training batches are shuffled by a ``DistributedSampler`` seeded with ``seed`` (one replica
    per process), whose order depends only on the epoch, so resuming from a checkpoint replays
    exactly the batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        variant: Variant = "left_right",
        sizes: tuple[int, int, int] = (10_000, 2_000, 2_000),
        seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.spec = MultiDigitsSpec(variant=variant, sizes=tuple(sizes), seed=seed)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.splits: dict[str, Dataset] = {}

    @property
    def tasks(self) -> list[Task]:
        return [ClassificationTask(name, self.spec.num_classes) for name in ("left", "right")]

    def prepare_data(self) -> None:
        load_multidigits(self.spec, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = load_multidigits(self.spec, self.cache_dir)

    def train_dataloader(self) -> DataLoader:
        dataset = self.splits["train"]
        trainer = self.trainer
        sampler = DistributedSampler(
            dataset, num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0, shuffle=True, seed=self.spec.seed,
            drop_last=True)
        return DataLoader(dataset, self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], self.batch_size, num_workers=self.num_workers)
