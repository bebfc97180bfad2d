"""Endless, exactly resumable batch iteration for training (:class:`ResumableLoader`).

An epoch's batch order comes from a *batch sampler* that is deterministic for its seed and
``set_epoch(epoch)`` (``lodit.data.batching.FixedBatchSampler`` by default, or e.g. a
``BucketBatchSampler``). The loader's position is just ``{epoch, batches_in_epoch}``: to resume,
it rebuilds that epoch's list of index batches and starts after the ones already consumed, so the
skipped items are never loaded and the next batch is the one an uninterrupted run would see.

Loading runs through a ``torch.utils.data.DataLoader`` created afresh for every epoch. That
costs a worker start per epoch but makes ``dataset.set_epoch(epoch)`` (epoch-dependent crops)
reach the worker processes, and the DataLoader gets its own seeded generator, so creating it never
draws from the global torch RNG (which would shift dropout noise between a resumed and an
uninterrupted run). For exact resume with ``num_workers > 0``, a dataset's own randomness must come
from ``(seed, epoch, index)`` — as lodit's datasets do — not from the worker's global RNG, because
batches are dealt to workers relative to where the iteration (re)started.

Several processes (``accelerate launch``): every process walks the same *global* batches and
keeps the strided share ``batch[process_index::num_processes]`` of each (a batch with fewer items
than processes is first padded by repeating its items, so no process ever gets an empty batch).
The position is therefore identical on every process, and the batch size in the config is the
global one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from lodit.cores import choose_workers
from lodit.data.batching import FixedBatchSampler
from lodit.errors import LoditError
from lodit.training.config import TrainingConfig


class EpochBatchSampler(Protocol):
    """Lists of dataset indices, the same for the same seed and epoch."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[list[int]]: ...


class ResumableLoader:
    """An endless iterator of collated batches over epochs, with a resumable position.

    ``batch_sampler`` (optional) yields each epoch's index lists; without one, a seeded shuffled
    :class:`~lodit.data.batching.FixedBatchSampler` of ``batch_size`` items is used.
    ``next(loader)`` returns the next batch; ``state_dict()`` / ``load_state_dict()`` save and
    restore the position. The trainer calls :meth:`shard` with the process layout.
    """

    def __init__(
        self,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        *,
        batch_sampler: EpochBatchSampler | None = None,
        batch_size: int = 8,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ):
        self.dataset = dataset
        self.collate_fn = collate_fn
        if batch_sampler is None:
            batch_sampler = FixedBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.batch_sampler = batch_sampler
        self.seed = int(seed)
        # -1 = chosen from the cores (none while the CPU itself trains the model; lodit.cores)
        self.num_workers = choose_workers(int(num_workers), on_gpu=torch.cuda.is_available())
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.num_processes = 1
        self.process_index = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self._batches: Iterator[Any] | None = None

    @classmethod
    def from_config(
        cls,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], Any] | None,
        config: TrainingConfig,
        *,
        batch_sampler: EpochBatchSampler | None = None,
    ) -> ResumableLoader:
        """A loader with the config's batch size, seed and workers (memory pinned when CUDA is used)."""
        return cls(
            dataset,
            collate_fn,
            batch_sampler=batch_sampler,
            batch_size=config.batch_size,
            seed=config.seed,
            num_workers=config.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    # ------------------------------------------------------------------ position

    def state_dict(self) -> dict[str, int]:
        """Where the next batch comes from: the epoch and how many of its batches were consumed."""
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.close()
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])

    def shard(self, num_processes: int, process_index: int) -> None:
        """Take only this process's share of every global batch from now on."""
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
        self.close()
        self.num_processes = int(num_processes)
        self.process_index = int(process_index)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> Any:
        empty_epochs = 0
        while True:
            if self._batches is None:
                self._batches = self._start_epoch()
            try:
                batch = next(self._batches)
            except LoditError as exc:
                # From a worker, torch re-raises the error with the worker's whole traceback as its text.
                raise LoditError(_worker_message(exc)) from None
            except StopIteration:
                self.close()
                self.epoch += 1
                self.batches_in_epoch = 0
                empty_epochs += 1
                if empty_epochs > 1:  # a fresh epoch gave nothing either
                    raise LoditError(
                        f"the training data gives no batches ({len(self.dataset)} items); "
                        "add data or lower batch_size (or turn off drop_last)"
                    ) from None
                continue
            self.batches_in_epoch += 1
            return batch

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self._epoch_index_batches())

    def close(self) -> None:
        """Stop the current epoch's DataLoader (and its workers)."""
        self._batches = None

    def _epoch_index_batches(self) -> list[list[int]]:
        self.batch_sampler.set_epoch(self.epoch)
        return [list(batch) for batch in self.batch_sampler]

    def _start_epoch(self) -> Iterator[Any]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        remaining = self._epoch_index_batches()[self.batches_in_epoch :]
        shares = [self._share(batch) for batch in remaining]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        loader = DataLoader(
            self.dataset,
            batch_sampler=_FixedBatches(shares),
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            generator=generator,
            worker_init_fn=_ignore_ctrl_c if self.num_workers > 0 else None,
        )
        return iter(loader)

    def _share(self, batch: list[int]) -> list[int]:
        if self.num_processes == 1:
            return batch
        padded = [batch[i % len(batch)] for i in range(max(len(batch), self.num_processes))]
        return padded[self.process_index :: self.num_processes]


class _FixedBatches:
    """A batch sampler over a precomputed list of index batches."""

    def __init__(self, batches: Sequence[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _ignore_ctrl_c(worker_id: int) -> None:
    # Ctrl-C reaches every process of the terminal's group; the trainer answers the first one by
    # finishing its step and saving, which needs the workers alive. The second one ends the trainer,
    # and the workers with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_message(exc: LoditError) -> str:
    """The original message of a LoditError raised in a DataLoader worker (the text after the
    traceback torch wraps it in), or the message itself when it came from this process."""
    text = str(exc)
    marker = "LoditError: "
    return text.rsplit(marker, 1)[-1].strip() if "Original Traceback" in text and marker in text else text
