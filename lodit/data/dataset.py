"""Audio datasets over a manifest: clips (or random crops of them) with their text, and collation.

Two datasets yield the same items, ``dict(wav (C, S) float32, length, index, key, crop_start,
caption, transcript, domain, speaker)``; ``crop_start`` is where the item starts in its clip, in
samples (0 for whole clips):

- :class:`AudioClipDataset` (map-style) reads the manifest once, line by line, and keeps only a
  small record per clip (path, offset, length, text) — never audio. It knows every clip's length,
  so it can be batched by :class:`~lodit.data.batching.BucketBatchSampler` and resumed exactly
  by skipping batches. Use it unless the manifest is so large (tens of millions of clips) that
  even those records don't fit in memory, or probing files without a ``duration`` up front takes
  too long.
- :class:`IterableAudioDataset` streams the manifest on every pass and shuffles within a bounded
  buffer: memory stays constant whatever the manifest size, at the cost of no length bucketing, no
  ``len()``, an approximate (windowed) shuffle and resume by skipping items.

Randomness (which crop of a clip) comes from a generator seeded by ``(seed, epoch, index)`` only,
so an item is the same whichever worker loads it and whenever, and a resumed run sees the same
crops. ``crop_multiple`` restricts random crop starts to multiples of that many samples (e.g. the
tokenizer hop, so a crop maps onto whole latent frames of features computed for the whole clip).
Call ``set_epoch(epoch)`` before iterating a new epoch. With ``DataLoader(...,
persistent_workers=True)`` the workers keep their own copy of the dataset, so set the epoch
before the loader's iterator is created (non-persistent workers, the default, pick it up).

A manifest is given as its path (read line by line with :func:`lodit.data.manifest.iter_manifest`;
``on_error`` decides whether a bad line stops the read or is skipped and logged) or as rows
(``ManifestRow`` objects, or dicts validated like manifest lines).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lodit.data.audio import ChannelPolicy, audio_info, load_audio, normalize_loudness
from lodit.data.batching import collate_text_fields, epoch_rng, pad_sequences
from lodit.data.manifest import (
    SKIP_HINT,
    KeyTracker,
    ManifestReport,
    ManifestRow,
    OnError,
    RowError,
    check_on_error,
    iter_manifest,
    resolve_audio,
)
from lodit.errors import LoditError

log = logging.getLogger(__name__)

ManifestSource = str | os.PathLike | Iterable[ManifestRow | dict]


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """What a dataset keeps per clip: where its audio is and its text, never the audio itself."""

    path: str
    offset: float  # seconds into the file where the clip starts
    duration: float | None  # seconds of the clip; None = to the end of the file
    key: str
    caption: str
    transcript: str
    domain: str
    speaker: str
    line: int = 0  # its line in the manifest file (0: given as a row, not read from a file)


def as_manifest_row(row: ManifestRow | dict) -> ManifestRow:
    """A row given as a dict is validated like a manifest line."""
    if isinstance(row, ManifestRow):
        return row
    try:
        return ManifestRow.from_dict(row)
    except RowError as exc:
        raise LoditError(f"manifest row {row!r}: {exc}") from None


def clip_record(row: ManifestRow | dict, root: Path, line: int = 0) -> ClipRecord:
    """The small per-clip record for a manifest row; relative audio paths are taken from ``root``."""
    row = as_manifest_row(row)
    return ClipRecord(
        line=line,
        path=str(resolve_audio(row, root)),
        offset=row.offset,
        duration=row.duration,
        key=row.id or row.audio,
        caption=row.caption or "",
        transcript=row.transcript or "",
        domain=row.domain or "",
        speaker=row.speaker or "",
    )


def iter_rows(manifest: ManifestSource, on_error: OnError = "fail") -> tuple[Iterable[ManifestRow | dict], Path]:
    """``(rows, root)``: rows streamed from a manifest file (``root`` = its folder) or given directly.

    Bad lines of a file fail or are skipped (and logged) per ``on_error``. Given rows (any
    re-iterable of ``ManifestRow`` or dicts) resolve relative paths from the current directory.
    """
    numbered, root = iter_numbered_rows(manifest, on_error)
    return (row for _, row in numbered), root


def iter_numbered_rows(manifest: ManifestSource, on_error: OnError = "fail",
                       report: ManifestReport | None = None) -> tuple[Iterable[tuple[int, ManifestRow | dict]], Path]:
    """Like :func:`iter_rows`, with each row's manifest line number (0 for given rows)."""
    if isinstance(manifest, (str, os.PathLike)):
        path = Path(manifest)
        return iter_manifest(path, on_error=on_error, report=report), path.parent
    return ((0, row) for row in manifest), Path(".")


def crop_start(total: int, crop: int, *, random: bool, seed: int, epoch: int, index: int, multiple: int = 1) -> int:
    """Start of a ``crop``-long window in ``total`` frames: random per ``(seed, epoch, index)`` or 0.

    A random start is a multiple of ``multiple`` (every such start whose window fits is equally
    likely); with ``multiple=1`` any start is.
    """
    if multiple < 1:
        raise LoditError(f"crop_multiple must be at least 1, got {multiple}")
    if not random or total <= crop:
        return 0
    choices = (total - crop) // multiple + 1
    return multiple * int(epoch_rng(seed, epoch, index).integers(0, choices))


class ClipLoader:
    """Reads one clip (or a crop of it) as a fixed-rate waveform; shared by both datasets."""

    def __init__(
        self,
        sample_rate: int,
        *,
        segment_seconds: float | None,
        random_crop: bool,
        seed: int,
        channels: ChannelPolicy,
        loudness: float | None,
        crop_multiple: int = 1,
    ):
        if segment_seconds is not None and segment_seconds <= 0:
            raise LoditError(f"segment_seconds must be positive, got {segment_seconds}")
        if crop_multiple < 1:
            raise LoditError(f"crop_multiple must be at least 1 sample, got {crop_multiple}")
        self.sample_rate = int(sample_rate)
        self.segment = None if segment_seconds is None else max(1, round(segment_seconds * sample_rate))
        self.random_crop = random_crop
        self.seed = int(seed)
        self.channels = channels
        self.loudness = loudness
        self.crop_multiple = int(crop_multiple)
        self.on_error: OnError = "fail"
        self.source = ""  # the manifest, named in errors
        self._left_out: set[str] = set()

    def clip_samples(self, record: ClipRecord) -> int:
        """Length of the whole clip in samples at ``sample_rate`` (reads the file header if no duration)."""
        if record.duration is not None:
            return max(0, round(record.duration * self.sample_rate))
        native_rate, frames, _ = audio_info(record.path)
        return max(0, round((frames / native_rate - record.offset) * self.sample_rate))

    def item_samples(self, clip_samples: int) -> int:
        """Real (unpadded) samples of an item made from a clip of ``clip_samples``."""
        return clip_samples if self.segment is None else min(clip_samples, self.segment)

    def load(self, record: ClipRecord, index: int, epoch: int, clip_samples: int | None = None) -> dict:
        """The item of ``record``; audio that can't be used (unreadable, NaN/inf samples) fails with
        the manifest line, or with ``on_error="skip"`` becomes a silent item of length 0 (all masked)."""
        try:
            return self._load(record, index, epoch, clip_samples)
        except LoditError as exc:
            where = f"{self.source} line {record.line}: " if record.line else ""
            if self.on_error == "fail":
                raise LoditError(f"{where}{exc} (or leave such clips out: {SKIP_HINT})") from None
            if record.key not in self._left_out:  # once per clip, not once per epoch
                self._left_out.add(record.key)
                log.warning("%sleft out of training: %s", where, exc)
            return self._item(record, index, torch.zeros(1, 0), 0)

    def _load(self, record: ClipRecord, index: int, epoch: int, clip_samples: int | None) -> dict:
        if clip_samples is None:
            clip_samples = self.clip_samples(record)
        start = 0
        if self.segment is None:
            wav = load_audio(record.path, self.sample_rate, channels=self.channels,
                             offset=record.offset, duration=record.duration)
        else:
            start = crop_start(clip_samples, self.segment, random=self.random_crop,
                               seed=self.seed, epoch=epoch, index=index, multiple=self.crop_multiple)
            wav = load_audio(record.path, self.sample_rate, channels=self.channels,
                             offset=record.offset + start / self.sample_rate,
                             duration=self.segment / self.sample_rate)
            # Resampling a window can give a sample more or less than asked; a clip can end early.
            wav = wav[:, : min(self.segment, clip_samples)]
        if self.loudness is not None:
            wav = normalize_loudness(wav, self.sample_rate, self.loudness)
        return self._item(record, index, wav, start)

    @staticmethod
    def _item(record: ClipRecord, index: int, wav: torch.Tensor, start: int) -> dict:
        return {
            "wav": wav,
            "length": wav.shape[-1],
            "index": index,
            "key": record.key,
            "crop_start": start,
            "caption": record.caption,
            "transcript": record.transcript,
            "domain": record.domain,
            "speaker": record.speaker,
        }


class AudioClipDataset(Dataset):
    """Map-style dataset of manifest clips, cropped to ``segment_seconds`` when given.

    ``manifest`` is a manifest path (streamed line by line) or rows (dicts / ``ManifestRow``).
    ``segment_seconds``: items are crops that long (shorter clips stay whole; :func:`collate_audio`
    pads them and masks the padding); the crop is random per ``(seed, epoch, index)`` or the
    clip's start (``random_crop=False``); ``crop_multiple`` makes random starts multiples of that
    many samples. Without it, items are whole clips. ``loudness`` (LUFS)
    normalises each item's loudness; ``min_seconds`` drops shorter clips (counted in
    ``num_too_short``); ``on_error`` (``fail`` | ``skip``) is for bad manifest lines. ``lengths``
    are the items' real lengths in samples, for length bucketing.
    """

    def __init__(
        self,
        manifest: ManifestSource,
        sample_rate: int,
        *,
        segment_seconds: float | None = None,
        random_crop: bool = True,
        seed: int = 0,
        channels: ChannelPolicy = "mix",
        loudness: float | None = None,
        min_seconds: float = 0.0,
        on_error: OnError = "fail",
        crop_multiple: int = 1,
    ):
        check_on_error(on_error)
        self.loader = ClipLoader(sample_rate, segment_seconds=segment_seconds, random_crop=random_crop,
                                 seed=seed, channels=channels, loudness=loudness, crop_multiple=crop_multiple)
        self.loader.on_error = on_error
        self.loader.source = str(manifest) if isinstance(manifest, (str, os.PathLike)) else "<rows>"
        self.report = ManifestReport(self.loader.source)
        rows, root = iter_numbered_rows(manifest, on_error, self.report)
        min_samples = math.ceil(min_seconds * sample_rate)
        self.min_seconds = min_seconds
        self.records: list[ClipRecord] = []
        clip_lengths: list[int] = []
        self.num_too_short = 0
        keys = KeyTracker()
        for line, row in rows:
            record = clip_record(row, root, line)
            try:
                keys.check(record.key, line)
                samples = self.loader.clip_samples(record)
            except (RowError, LoditError) as exc:  # a repeated key, or a file whose header can't be read
                where = f"line {line}" if line else f"row {record.key!r}"
                if on_error == "fail":
                    raise LoditError(f"{self.loader.source} {where}: {exc}; fix the row or {SKIP_HINT}") from None
                self.report.kept -= 1
                self.report.drop(where, str(exc))
                log.warning("%s %s left out: %s", self.loader.source, where, exc)
                continue
            if samples < max(1, min_samples):
                self.num_too_short += 1
                continue
            self.records.append(record)
            clip_lengths.append(samples)
        if self.num_too_short:
            log.debug("skipped %d clips shorter than %.3g s (or empty)", self.num_too_short, min_seconds)
        self.clip_lengths = torch.tensor(clip_lengths, dtype=torch.long)  # whole clips, in samples
        self.epoch = 0

    @property
    def sample_rate(self) -> int:
        return self.loader.sample_rate

    def why_empty(self) -> str:
        """Why there are no clips, for the one-line error of a trainer that got none."""
        if self.report.kept == 0 and not self.report.dropped:
            return f"{self.loader.source}: the manifest has no rows; add clips (build one with `lodit prepare`)"
        if self.report.kept == 0:
            return f"{self.loader.source}: every row was left out ({self.report.summary()}); fix the rows"
        return (f"{self.loader.source}: no clips to train on ({self.num_too_short} shorter than "
                f"data.min_seconds={self.min_seconds:g}); add audio or lower data.min_seconds")

    @property
    def lengths(self) -> list[int]:
        """Real length in samples of each item (a crop is at most ``segment_seconds`` long)."""
        return [self.loader.item_samples(n) for n in self.clip_lengths.tolist()]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.loader.load(self.records[index], int(index), self.epoch, int(self.clip_lengths[index]))


class IterableAudioDataset(IterableDataset):
    """Streams a manifest on every pass; shuffles within a ``shuffle_buffer``-row window.

    Memory holds at most ``shuffle_buffer`` small row records, whatever the manifest size. Rows
    are split across ``DataLoader`` workers and across ``world_size`` processes (row ordinal
    modulo the number of readers), so each row is read by exactly one reader per pass. The shuffle
    and the crops are seeded by ``(seed, epoch)``; ``index`` in an item is the row's ordinal in
    the manifest. Other arguments as in :class:`AudioClipDataset`.
    """

    def __init__(
        self,
        manifest: ManifestSource,
        sample_rate: int,
        *,
        segment_seconds: float | None = None,
        random_crop: bool = True,
        seed: int = 0,
        channels: ChannelPolicy = "mix",
        loudness: float | None = None,
        min_seconds: float = 0.0,
        on_error: OnError = "fail",
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        crop_multiple: int = 1,
    ):
        if shuffle_buffer < 1:
            raise LoditError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if not 0 <= rank < world_size:
            raise LoditError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        check_on_error(on_error)
        self.manifest = manifest
        self.on_error = on_error
        self.loader = ClipLoader(sample_rate, segment_seconds=segment_seconds, random_crop=random_crop,
                                 seed=seed, channels=channels, loudness=loudness, crop_multiple=crop_multiple)
        self.loader.on_error = on_error
        self.loader.source = str(manifest) if isinstance(manifest, (str, os.PathLike)) else "<rows>"
        self.min_samples = math.ceil(min_seconds * sample_rate)
        self.shuffle = shuffle
        self.shuffle_buffer = int(shuffle_buffer)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        reader = self.rank * workers + worker_id
        too_short = 0
        records = self._records_of_reader(reader, self.world_size * workers)
        for index, record in self._shuffled(records, reader):
            samples = self.loader.clip_samples(record)
            if samples < max(1, self.min_samples):
                too_short += 1
                continue
            yield self.loader.load(record, index, self.epoch, samples)
        if too_short:
            log.debug("reader %d skipped %d clips shorter than min_seconds (or empty)", reader, too_short)

    def _records_of_reader(self, reader: int, readers: int) -> Iterator[tuple[int, ClipRecord]]:
        rows, root = iter_numbered_rows(self.manifest, self.on_error)
        for ordinal, (line, row) in enumerate(rows):
            if ordinal % readers == reader:
                yield ordinal, clip_record(row, root, line)

    def _shuffled(self, stream: Iterator[tuple[int, ClipRecord]], reader: int) -> Iterator[tuple[int, ClipRecord]]:
        if not self.shuffle:
            yield from stream
            return
        rng = epoch_rng(self.loader.seed, self.epoch, reader)
        buffer: list[tuple[int, ClipRecord]] = []
        for entry in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(entry)
                continue
            slot = int(rng.integers(len(buffer)))
            yield buffer[slot]
            buffer[slot] = entry
        for slot in rng.permutation(len(buffer)):
            yield buffer[slot]


def collate_audio(items: Sequence[dict]) -> dict:
    """Batch audio items: ``wav`` (B, C, S_max) zero-padded, ``mask`` (B, S_max) bool (True on real
    samples), ``lengths`` (B,), ``index`` (B,), and ``keys``/``captions``/``transcripts``/``domains``/
    ``speakers`` lists."""
    wav, mask, lengths = pad_sequences([item["wav"] for item in items], dim=-1,
                                       lengths=[item["length"] for item in items])
    return {
        "wav": wav,  # (B, C, S_max)
        "mask": mask,
        "lengths": lengths,
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        **collate_text_fields(items),
    }
