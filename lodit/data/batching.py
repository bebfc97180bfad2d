"""Batching: which items go together in a batch, and how variable-length items are padded.

Two batch samplers with one interface (``set_epoch(epoch)``, ``__iter__`` yielding lists of
indices, ``__len__``), both deterministic for a ``(seed, epoch)`` pair so that a resumed run can
rebuild an epoch's batch order exactly and skip the batches it already saw:

- :class:`BucketBatchSampler` groups items of similar length so that little of each batch is
  padding; batches hold a fixed number of items or fill a budget of padded frames.
- :class:`FixedBatchSampler` is plain (optionally shuffled) batching of ``n`` items.

:func:`pad_sequences` turns a list of ``(..., T_i)``-style tensors into one padded batch with a
boolean validity mask, and :func:`collate_text_fields` gathers the per-item text; the audio and
latent collate functions are built on these two.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch


def epoch_rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    """A numpy generator determined by ``(seed, epoch, *more)`` alone (no global state)."""
    return np.random.default_rng([int(seed), int(epoch), *(int(m) for m in more)])


class FixedBatchSampler:
    """Batches of ``batch_size`` consecutive indices from a (seeded, per-epoch) permutation of ``range(n)``."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if n < 0 or batch_size < 1:
            raise ValueError(f"FixedBatchSampler needs n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_rng(self.seed, self.epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, self.n), self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)


class BucketBatchSampler:
    """Length-bucketed batches: similar lengths share a batch, so padding stays small.

    Each epoch: indices are sorted by length (ties broken randomly), cut into ``num_buckets``
    contiguous buckets, shuffled within each bucket, and cut into batches; the batches of all
    buckets are then shuffled together. Give exactly one of

    - ``batch_size``: every batch has that many items. Buckets are sized in whole batches, so at
      most one batch per epoch is short; ``drop_last`` drops it.
    - ``max_frames_per_batch``: a batch takes items while ``items × longest length`` (its padded
      size) stays within the budget. An item longer than the budget gets a batch of its own.
      ``drop_last`` is not available here (every batch is "complete").

    ``lengths`` are whatever unit the budget is in (samples, latent frames). With
    ``shuffle=False`` the order is fixed: buckets short to long, each in index order.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int | None = None,
        *,
        max_frames_per_batch: int | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if (batch_size is None) == (max_frames_per_batch is None):
            raise ValueError("BucketBatchSampler needs exactly one of batch_size or max_frames_per_batch")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_frames_per_batch is not None and max_frames_per_batch < 1:
            raise ValueError(f"max_frames_per_batch must be >= 1, got {max_frames_per_batch}")
        if max_frames_per_batch is not None and drop_last:
            raise ValueError("drop_last applies to batch_size batching only, not to max_frames_per_batch")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        self.lengths = np.asarray(lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or (self.lengths < 0).any():
            raise ValueError("lengths must be a 1-D sequence of non-negative integers")
        self.batch_size = batch_size
        self.max_frames_per_batch = max_frames_per_batch
        self.num_buckets = int(num_buckets)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(batch) for batch in self._epoch_batches())

    def __len__(self) -> int:
        return len(self._epoch_batches())

    def _epoch_batches(self) -> list[list[int]]:
        # Cached per epoch: __len__ and __iter__ of one epoch must agree, and rebuilding costs a sort.
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = epoch_rng(self.seed, self.epoch)
        n = len(self.lengths)
        tie_break = rng.random(n) if self.shuffle else np.arange(n)
        by_length = np.lexsort((tie_break, self.lengths))  # indices sorted by (length, tie_break)
        batches: list[list[int]] = []
        for bucket in self._split_buckets(by_length):
            if self.shuffle:
                bucket = rng.permutation(bucket)
            batches.extend(self._cut_batches(bucket))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cached = (self.epoch, batches)
        return batches

    def _split_buckets(self, by_length: np.ndarray) -> list[np.ndarray]:
        n = len(by_length)
        bucket_size = max(1, math.ceil(n / self.num_buckets))
        if self.batch_size is not None:
            # Whole batches per bucket, so only the very last bucket can end in a short batch.
            bucket_size = math.ceil(bucket_size / self.batch_size) * self.batch_size
        return [by_length[start : start + bucket_size] for start in range(0, n, bucket_size)]

    def _cut_batches(self, bucket: np.ndarray) -> list[list[int]]:
        if self.batch_size is not None:
            batches = [bucket[i : i + self.batch_size].tolist() for i in range(0, len(bucket), self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
            return batches
        batches, current, longest = [], [], 0
        for index in bucket.tolist():
            length = int(self.lengths[index])
            padded = (len(current) + 1) * max(longest, length)
            if current and padded > self.max_frames_per_batch:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        return batches


def padding_efficiency(batches: Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray) -> float:
    """Real frames / padded frames over a list of batches (1.0 means no padding at all)."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[list(b)].sum()) for b in batches if len(b))
    padded = sum(len(b) * int(lengths[list(b)].max()) for b in batches if len(b))
    return real / padded if padded else 1.0


def pad_sequences(
    seqs: Sequence[torch.Tensor], dim: int, lengths: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad tensors along ``dim`` to the longest and stack them on a new batch axis 0.

    ``lengths`` gives each tensor's real length when it is already padded (defaults to its
    size along ``dim``). Returns ``(padded, mask, lengths)``: ``padded`` has the batch axis in
    front, ``mask`` is ``(B, T_max)`` bool (True on real frames), ``lengths`` is ``(B,)`` int64.
    All other axes must match.
    """
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    sizes = [s.shape[dim] for s in seqs]
    real = torch.tensor(sizes if lengths is None else [int(n) for n in lengths], dtype=torch.long)
    if (real > torch.tensor(sizes)).any():
        raise ValueError("a real length is longer than its tensor")
    longest = max(sizes)
    padded = []
    for s in seqs:
        shape = list(s.shape)
        shape[dim] = longest - s.shape[dim]
        padded.append(torch.cat([s, s.new_zeros(shape)], dim=dim) if shape[dim] else s)
    mask = torch.arange(longest)[None, :] < real[:, None]  # (B, T_max)
    return torch.stack(padded), mask, real


TEXT_FIELDS = ("key", "caption", "transcript", "domain", "speaker")


def collate_text_fields(items: Sequence[dict]) -> dict[str, list[str]]:
    """``keys``, ``captions``, ``transcripts``, ``domains``, ``speakers``: one list entry per item."""
    return {f"{name}s": [item.get(name, "") for item in items] for name in TEXT_FIELDS}
