"""A deterministic, resumable sampler: torch's ``DistributedSampler`` order (seeded by seed
and epoch), starting after the first ``skip`` indices when a run resumes mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int,
                 shuffle: bool = True) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank,
                                        shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    @property
    def per_epoch(self) -> int:
        """Indices this process sees in a whole epoch."""
        return len(self.inner)
