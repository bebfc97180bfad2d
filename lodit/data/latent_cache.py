"""The latent cache: a dataset pre-encoded by a tokenizer, written once and streamed shard by shard.

Layout of a cache folder::

    meta.json                  format, version, producer (tokenizer identity), counts, dim, dtype, shard list
    index.jsonl                one row per clip: key, shard (file name), offset and length in frames, fields
    stats.json                 per-channel mean and std (population) over every frame, with the frame count
    shard-00000.safetensors    ONE tensor "latents" (frames, dim): its clips concatenated along frames,
    shard-00001.safetensors    in index order; its own index rows are also in the file's metadata
    ...

A shard closes once it holds ``shard_frames`` frames (by default ~``shard_mb`` MiB); clips are
never split across shards. Statistics are accumulated exactly in float64 with Chan et al.'s
pairwise update, one clip at a time, over the values as stored (after any dtype rounding).

Writes are atomic: everything goes to ``<root>.tmp-<pid>`` and is renamed to ``<root>`` by
:meth:`LatentCacheWriter.close`; ``meta.json`` is written last, so a folder without it is never
read as a cache. Each shard carries its index rows, and until its shard is written each clip is
also kept as ``pending-<shard>-<clip>.safetensors``, so an interrupted encode can be resumed from
every clip it finished (``resume=True``), with the same final files as an uninterrupted one.

The producer (``name``, ``config_hash``, ``latent_dim``, ``frame_rate``, ``sample_rate``)
identifies the tokenizer; :meth:`LatentCache.check_producer` refuses a cache made by another.
Reading opens one shard at a time, memory-mapped (``safetensors.safe_open``), so memory does not
grow with the dataset.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from lodit.data.batching import collate_text_fields, pad_sequences
from lodit.data.dataset import crop_start
from lodit.errors import LoditError
from lodit.files import TEMP_FILE_GLOB, read_json, replace_folder, write_atomically, write_json, write_jsonl

log = logging.getLogger(__name__)

CACHE_FORMAT = "lodit-latent-cache"
CACHE_VERSION = 1
PRODUCER_FIELDS = ("name", "config_hash", "latent_dim", "frame_rate", "sample_rate")
TENSOR_NAME = "latents"
SHARD_INDEX_KEY = "lodit_index"  # safetensors metadata entry holding a shard's own index rows
STD_FLOOR = 1e-5  # dead channels (std 0) are divided by this instead of by zero
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- normalisation


def normalize(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(latents - mean) / std`` per channel (last axis); inverse of :func:`denormalize`."""
    mean = mean.to(latents.device, latents.dtype)
    std = std.to(latents.device, latents.dtype).clamp_min(STD_FLOOR)
    return (latents - mean) / std


def denormalize(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``latents * std + mean`` per channel: back to the tokenizer's scale before decoding."""
    mean = mean.to(latents.device, latents.dtype)
    std = std.to(latents.device, latents.dtype).clamp_min(STD_FLOOR)
    return latents * std + mean


class RunningStats:
    """Exact streaming per-channel mean / variance in float64 (Chan et al. pairwise merge)."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dtype=torch.float64)  # sum of squared deviations from the mean

    def update(self, frames: torch.Tensor) -> None:
        """Merge a block of frames ``(T, D)``."""
        block = frames.detach().to("cpu", torch.float64)
        n = block.shape[0]
        if n == 0:
            return
        block_mean = block.mean(dim=0)
        block_m2 = ((block - block_mean) ** 2).sum(dim=0)
        total = self.count + n
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + block_m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per channel."""
        return (self.m2 / max(self.count, 1)).sqrt()


# ----------------------------------------------------------------------------- writing


class LatentCacheWriter:
    """Writes a latent cache clip by clip; use as a context manager or call :meth:`close`.

    ``producer`` must hold ``name``, ``config_hash``, ``latent_dim``, ``frame_rate`` and
    ``sample_rate`` (more JSON values may follow). Shards close at ``shard_frames`` frames, or
    at ``shard_mb`` MiB when ``shard_frames`` is not given. ``dtype`` is the storage type
    (``float32``, ``float16`` or ``bfloat16``); reads always return float32.

    An existing complete cache at ``root`` is replaced only with ``overwrite=True``; a non-empty
    folder that is not a cache is never replaced. With ``resume=True`` the complete shards of an
    interrupted write of the same producer (``<root>.tmp-*`` of a process no longer running) are
    taken over: ``key in writer`` tells which clips are already there, so they can be skipped.
    If the ``with`` block raises, the partial folder is kept for such a resume (it is never
    mistaken for a cache; :meth:`discard` deletes it).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        producer: dict,
        shard_frames: int | None = None,
        shard_mb: float = 64.0,
        dtype: str = "float32",
        overwrite: bool = False,
        resume: bool = False,
    ):
        self.root = Path(root)
        self.producer = _checked_producer(producer)
        if dtype not in _DTYPES:
            raise LoditError(f"latent cache dtype {dtype!r} is not supported; choose one of {', '.join(_DTYPES)}")
        self.dtype_name = dtype
        self.dtype = _DTYPES[dtype]
        self.dim = int(self.producer["latent_dim"])
        if shard_frames is None:
            bytes_per_frame = self.dim * self.dtype.itemsize
            shard_frames = max(1, int(shard_mb * 2**20 // bytes_per_frame))
        if shard_frames < 1:
            raise ValueError(f"shard_frames must be >= 1, got {shard_frames}")
        self.shard_frames = int(shard_frames)
        self.overwrite = overwrite
        _check_target(self.root, overwrite)

        self.tmp = self.root.with_name(f"{self.root.name}.tmp-{os.getpid()}")
        self.stats = RunningStats(self.dim)
        self.rows: list[dict] = []  # index rows of the shards already written
        self.shards: list[dict] = []  # {"file", "frames", "clips"} per written shard
        self._keys: set[str] = set()
        self._pending: list[torch.Tensor] = []  # clips of the shard being filled, (T_i, D) each
        self._pending_rows: list[dict] = []
        self._pending_frames = 0
        self._closed = False

        adopted = self._adopt_interrupted() if resume else None
        if adopted is None:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
            write_json(self.tmp / "producer.json", {"producer": self.producer, "dtype": self.dtype_name}, indent=1)
        else:
            log.debug("resuming latent cache %s from %s: %d clips in %d shards", self.root, adopted,
                     len(self.rows), len(self.shards))
        self._warn_about_other_interrupted_writes()

    # --- adding clips

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    @property
    def num_clips(self) -> int:
        return len(self._keys)

    @property
    def num_frames(self) -> int:
        return self.stats.count

    def add(self, key: str, latents: torch.Tensor, fields: dict | None = None) -> None:
        """Append one clip: ``latents`` (T, D) with its text ``fields`` (caption, transcript, ...)."""
        if self._closed:
            raise RuntimeError("LatentCacheWriter.add after close")
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache keys are non-empty strings, got {key!r}")
        if key in self._keys:
            raise LoditError(f"clip key {key!r} appears twice; manifest ids (or audio paths) must be unique")
        if latents.ndim != 2 or latents.shape[1] != self.dim or latents.shape[0] < 1:
            raise ValueError(f"latents for {key!r} must be (T >= 1, {self.dim}), got {tuple(latents.shape)}")
        stored = latents.detach().to("cpu", self.dtype).contiguous()  # (T, D)
        if not torch.isfinite(stored).all():
            raise LoditError(f"latents for clip {key!r} contain NaN or inf; check the tokenizer on that audio")
        fields = dict(fields or {})
        json.dumps(fields)  # fail here, naming nothing half-written, if a field is not JSON
        self.stats.update(stored)
        self._pending_rows.append({"key": key, "shard": self._shard_name(len(self.shards)),
                                   "offset": self._pending_frames, "length": stored.shape[0], "fields": fields})
        self._pending.append(stored)
        self._pending_frames += stored.shape[0]
        self._keys.add(key)
        self._save_pending_clip()
        if self._pending_frames >= self.shard_frames:
            self._flush_shard()

    # --- finishing

    def close(self) -> Path:
        """Write the last shard, index, stats and meta, then move the cache into place."""
        if self._closed:
            return self.root
        self._flush_shard()
        if not self.rows:
            raise LoditError(f"no clips were written to latent cache {self.root}; is the manifest empty?")
        write_jsonl(self.tmp / "index.jsonl", self.rows)
        write_json(self.tmp / "stats.json", {"count": self.stats.count, "mean": self.stats.mean.tolist(),
                                             "std": self.stats.std.tolist()}, indent=1)
        (self.tmp / "producer.json").unlink(missing_ok=True)
        write_json(self.tmp / "meta.json", {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "producer": self.producer,
            "latent_dim": self.dim,
            "dtype": self.dtype_name,
            "num_clips": len(self.rows),
            "num_frames": self.stats.count,
            "shards": self.shards,
        }, indent=1)
        self._move_into_place()
        self._closed = True
        return self.root

    def discard(self) -> None:
        """Delete the partial folder (nothing is resumable afterwards)."""
        self._closed = True
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LatentCacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        # On an error the partial folder stays (no meta.json, so never read as a cache) for resume.

    # --- internals

    @staticmethod
    def _shard_name(number: int) -> str:
        return f"shard-{number:05d}.safetensors"

    @staticmethod
    def _pending_name(shard: int, clip: int) -> str:
        return f"pending-{shard:05d}-{clip:06d}.safetensors"

    def _save_pending_clip(self) -> None:
        """Keep the newest clip of the unfinished shard on disk until its shard is written.

        A shard holds up to ``shard_mb`` MiB, so a small dataset is one shard; without these files
        an interrupted write would lose every clip of it. They are deleted once their shard exists.
        """
        name = self._pending_name(len(self.shards), len(self._pending) - 1)
        metadata = {SHARD_INDEX_KEY: json.dumps(self._pending_rows[-1])}
        clip = self._pending[-1]
        write_atomically(self.tmp / name, lambda tmp: save_file({TENSOR_NAME: clip}, str(tmp), metadata=metadata))

    def _flush_shard(self) -> None:
        if not self._pending:
            return
        number = len(self.shards)
        name = self._shard_name(number)
        tensor = torch.cat(self._pending, dim=0)  # (frames, D)
        metadata = {SHARD_INDEX_KEY: json.dumps(self._pending_rows)}
        write_atomically(self.tmp / name, lambda tmp: save_file({TENSOR_NAME: tensor}, str(tmp), metadata=metadata))
        self.rows.extend(self._pending_rows)
        self.shards.append({"file": name, "frames": int(tensor.shape[0]), "clips": len(self._pending_rows)})
        self._pending, self._pending_rows, self._pending_frames = [], [], 0
        for clip in self.tmp.glob(f"pending-{number:05d}-*.safetensors"):
            clip.unlink()

    def _move_into_place(self) -> None:
        _check_target(self.root, self.overwrite)  # something may have appeared while encoding
        replace_folder(self.tmp, self.root)

    def _interrupted_writes(self) -> list[Path]:
        """``<root>.tmp-<pid>`` folders of processes that are no longer running (not ours)."""
        found = []
        for path in self.root.parent.glob(f"{glob.escape(self.root.name)}.tmp-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if path.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                found.append(path)
        return sorted(found)

    def _adopt_interrupted(self) -> Path | None:
        """Take over the complete shards of an interrupted write by the same producer."""
        candidates = []
        for path in self._interrupted_writes():
            try:
                state = json.loads((path / "producer.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if state == {"producer": self.producer, "dtype": self.dtype_name}:
                finished = len(list(path.glob("shard-*.safetensors"))) + len(list(path.glob("pending-*.safetensors")))
                candidates.append((finished, path))
        if not candidates:
            return None
        _, source = max(candidates)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        os.replace(source, self.tmp)
        for part in self.tmp.glob(TEMP_FILE_GLOB):  # a file an interrupted write left half-written
            part.unlink()
        number = 0
        while (self.tmp / self._shard_name(number)).is_file():
            self._adopt_shard(self._shard_name(number))
            number += 1
        for stray in self.tmp.glob("shard-*.safetensors"):  # after a gap: not reachable, drop
            if stray.name not in {s["file"] for s in self.shards}:
                stray.unlink()
        clip = 0
        while (self.tmp / self._pending_name(len(self.shards), clip)).is_file():
            self._adopt_pending_clip(self._pending_name(len(self.shards), clip))
            clip += 1
        adopted = {self._pending_name(len(self.shards), i) for i in range(clip)}
        for stray in self.tmp.glob("pending-*.safetensors"):  # of a shard written since, or after a gap
            if stray.name not in adopted:
                stray.unlink()
        if self._pending_frames >= self.shard_frames:  # interrupted between its last clip and its write
            self._flush_shard()
        return source

    def _adopt_pending_clip(self, name: str) -> None:
        with safe_open(str(self.tmp / name), framework="pt") as f:
            row = json.loads(f.metadata()[SHARD_INDEX_KEY])
            stored = f.get_tensor(TENSOR_NAME)
        self.stats.update(stored)  # in the order of the first write: bit-identical statistics
        self._pending_rows.append(row)
        self._pending.append(stored)
        self._pending_frames += stored.shape[0]
        self._keys.add(row["key"])

    def _adopt_shard(self, name: str) -> None:
        with safe_open(str(self.tmp / name), framework="pt") as f:
            rows = json.loads(f.metadata()[SHARD_INDEX_KEY])
            latents = f.get_slice(TENSOR_NAME)
            for row in rows:
                # Same clip-by-clip order as the first write, so the stats come out bit-identical.
                self.stats.update(latents[row["offset"] : row["offset"] + row["length"]])
                self._keys.add(row["key"])
            frames = latents.get_shape()[0]
        self.rows.extend(rows)
        self.shards.append({"file": name, "frames": int(frames), "clips": len(rows)})

    def _warn_about_other_interrupted_writes(self) -> None:
        others = self._interrupted_writes()
        if others:
            log.warning("found interrupted latent-cache writes %s; resume one with resume=True "
                        "(lodit encode --resume) or delete them to free disk", ", ".join(map(str, others)))


def _checked_producer(producer: dict) -> dict:
    missing = [name for name in PRODUCER_FIELDS if name not in producer]
    if missing:
        raise ValueError(f"latent cache producer lacks {', '.join(missing)}; it needs {', '.join(PRODUCER_FIELDS)}")
    if int(producer["latent_dim"]) < 1:
        raise ValueError(f"producer latent_dim must be >= 1, got {producer['latent_dim']}")
    return json.loads(json.dumps(producer))  # a JSON-clean copy: what meta.json will hold


def _looks_like_cache(path: Path) -> bool:
    return any((path / name).exists() for name in ("meta.json", "index.jsonl")) or any(path.glob("shard-*.safetensors"))


def _check_target(root: Path, overwrite: bool) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise LoditError(f"{root} exists and is not a folder; choose another path for the latent cache")
    if not any(root.iterdir()):
        return
    if not _looks_like_cache(root):
        raise LoditError(f"{root} is a non-empty folder that is not a latent cache; choose a new or empty folder")
    if not overwrite:
        raise LoditError(f"latent cache {root} already exists; pass overwrite (lodit encode --overwrite) "
                         f"to replace it, or choose another folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LatentItem:
    key: str
    latents: torch.Tensor  # (T, D) float32
    fields: dict


class LatentCache:
    """Read access to a complete latent cache folder.

    ``meta``, ``producer``, ``dim``, ``mean`` and ``std`` (float32, (D,)), ``lengths`` (frames
    per clip), ``cache[i]`` (random access; keeps one shard memory-mapped at a time) and
    :meth:`iter_items` (sequential, shard by shard). Only the index (keys, positions, text) is
    held in memory, never the latents.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise LoditError(f"latent cache {self.root} not found; create it with `lodit encode`")
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise LoditError(f"{self.root} is not a complete latent cache (no meta.json): its encode was "
                             f"interrupted or it is another folder; re-run `lodit encode`")
        self.meta = _read_cache_json(meta_path)
        if self.meta.get("format") != CACHE_FORMAT or self.meta.get("version") != CACHE_VERSION:
            raise LoditError(f"{meta_path}: not a version-{CACHE_VERSION} lodit latent cache "
                             f"(format {self.meta.get('format')!r}, version {self.meta.get('version')!r}); "
                             f"re-run `lodit encode`")
        self.producer: dict = self.meta["producer"]
        self.dim = int(self.meta["latent_dim"])
        self.shard_files = [s["file"] for s in self.meta["shards"]]
        for name in self.shard_files:
            if not (self.root / name).is_file():
                raise LoditError(f"latent cache {self.root} is missing {name}; re-run `lodit encode`")

        stats = _read_cache_json(self.root / "stats.json")
        self.mean = torch.tensor(stats["mean"], dtype=torch.float64).float()
        self.std = torch.tensor(stats["std"], dtype=torch.float64).float()

        self._load_index()
        self._handle: tuple[int, Any] | None = None  # (shard number, open safe_open) for random access

    def _load_index(self) -> None:
        index_path = self.root / "index.jsonl"
        if not index_path.is_file():
            raise LoditError(f"latent cache {self.root} has no index.jsonl; re-run `lodit encode`")
        shard_number = {name: i for i, name in enumerate(self.shard_files)}
        self.keys: list[str] = []
        self._field_json: list[str] = []  # fields kept as JSON text: far smaller than dicts
        shards, offsets, lengths = [], [], []
        with open(index_path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                    shards.append(shard_number[row["shard"]])
                    offsets.append(int(row["offset"]))
                    lengths.append(int(row["length"]))
                    self.keys.append(str(row["key"]))
                    self._field_json.append(json.dumps(row.get("fields", {}), ensure_ascii=False))
                except (ValueError, KeyError, TypeError):
                    raise LoditError(f"{index_path}:{line_no}: malformed index row; re-run `lodit encode`") from None
        if len(self.keys) != self.meta["num_clips"]:
            raise LoditError(f"{index_path} has {len(self.keys)} rows but meta.json says {self.meta['num_clips']}; "
                             f"re-run `lodit encode`")
        self.shard_of = np.asarray(shards, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)

    # --- identity

    def check_producer(self, expected: dict) -> None:
        """Raise :class:`LoditError` unless this cache was made by the tokenizer ``expected`` describes."""
        order = [name for name in PRODUCER_FIELDS if name in expected] + \
                [name for name in expected if name not in PRODUCER_FIELDS]
        for name in order:
            have = self.producer.get(name)
            want = json.loads(json.dumps(expected[name]))
            if have is None and name == "weights_hash":
                raise LoditError(f"latent cache {self.root} does not record which tokenizer weights made it (an "
                                 f"older lodit wrote it); re-run `lodit encode` to tie it to this tokenizer")
            if have != want:
                raise LoditError(f"latent cache {self.root} was made by a tokenizer with {name} {have!r}, but "
                                 f"the given tokenizer has {name} {want!r}; re-run `lodit encode` with this "
                                 f"tokenizer or use its cache")

    # --- access

    def __len__(self) -> int:
        return len(self.keys)

    def fields(self, i: int) -> dict:
        return json.loads(self._field_json[i])

    def read(self, i: int, start: int = 0, length: int | None = None) -> torch.Tensor:
        """Frames ``[start, start + length)`` of clip ``i`` as float32 ``(frames, D)``."""
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range for a cache of {len(self)}")
        total = int(self.lengths[i])
        length = total - start if length is None else min(length, total - start)
        begin = int(self.offsets[i]) + start
        return self._slice(int(self.shard_of[i]))[begin : begin + length].float()

    def __getitem__(self, i: int) -> LatentItem:
        i = int(i)
        return LatentItem(self.keys[i], self.read(i), self.fields(i))

    def iter_items(self) -> Iterator[LatentItem]:
        """All clips in storage order, opening one shard at a time."""
        self._handle = None  # release the random-access shard: only one shard is open at a time
        order = np.argsort(self.shard_of, kind="stable")
        boundaries = np.searchsorted(self.shard_of[order], np.arange(len(self.shard_files) + 1))
        for number, name in enumerate(self.shard_files):
            rows = order[boundaries[number] : boundaries[number + 1]]
            if len(rows) == 0:
                continue
            with safe_open(str(self.root / name), framework="pt") as f:
                latents = f.get_slice(TENSOR_NAME)
                for i in rows.tolist():
                    begin = int(self.offsets[i])
                    frames = latents[begin : begin + int(self.lengths[i])].float()  # (T, D)
                    yield LatentItem(self.keys[i], frames, self.fields(i))

    def _slice(self, number: int):
        if self._handle is None or self._handle[0] != number:
            self._handle = None  # drop the previous shard before mapping the next
            self._handle = (number, safe_open(str(self.root / self.shard_files[number]), framework="pt"))
        return self._handle[1].get_slice(TENSOR_NAME)

    def __getstate__(self) -> dict:
        # Open shard handles can't cross process boundaries (DataLoader workers); they reopen lazily.
        state = self.__dict__.copy()
        state["_handle"] = None
        return state


def _read_cache_json(path: Path) -> Any:
    return read_json(path, hint="re-run `lodit encode`",
                     missing=f"{path} is missing; the latent cache is incomplete: re-run `lodit encode`")


# ----------------------------------------------------------------------------- training data


class LatentDataset(Dataset):
    """Map-style dataset over a latent cache for DiT training.

    Items: ``latents`` (T, D) float32 (normalised with the cache's per-channel mean/std when
    ``normalize``), ``length``, ``index``, ``key``, ``caption``, ``transcript``, ``domain``,
    ``speaker`` and the full ``fields``. ``crop_frames`` takes a window of at most that many
    frames, random per ``(seed, epoch, index)`` (or the clip's start with ``random_crop=False``);
    only that window is read from disk. ``lengths`` are the item lengths, for length bucketing.
    """

    def __init__(
        self,
        cache: LatentCache | str | os.PathLike,
        *,
        crop_frames: int | None = None,
        random_crop: bool = True,
        seed: int = 0,
        normalize: bool = True,
    ):
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache(cache)
        if crop_frames is not None and crop_frames < 1:
            raise LoditError(f"crop_frames must be >= 1, got {crop_frames}")
        self.crop_frames = crop_frames
        self.random_crop = random_crop
        self.seed = int(seed)
        self.normalize = normalize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def lengths(self) -> list[int]:
        lengths = self.cache.lengths
        return (lengths if self.crop_frames is None else np.minimum(lengths, self.crop_frames)).tolist()

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        total = int(self.cache.lengths[index])
        crop = total if self.crop_frames is None else min(total, self.crop_frames)
        start = crop_start(total, crop, random=self.random_crop, seed=self.seed, epoch=self.epoch, index=index)
        latents = self.cache.read(index, start, crop)  # (T, D)
        if self.normalize:
            latents = normalize(latents, self.cache.mean, self.cache.std)
        fields = self.cache.fields(index)
        return {
            "latents": latents,
            "length": latents.shape[0],
            "index": index,
            "key": self.cache.keys[index],
            **{name: str(fields.get(name) or "") for name in ("caption", "transcript", "domain", "speaker")},
            "fields": fields,
        }


def collate_latents(items: Sequence[dict]) -> dict:
    """Batch latent items: ``latents`` (B, T_max, D) zero-padded, ``mask`` (B, T_max) bool (True on
    real frames), ``lengths`` (B,), ``index`` (B,), ``keys``/``captions``/``transcripts``/``domains``/
    ``speakers`` lists and ``fields`` (list of dicts)."""
    latents, mask, lengths = pad_sequences([item["latents"] for item in items], dim=0)
    return {
        "latents": latents,  # (B, T_max, D)
        "mask": mask,
        "lengths": lengths,
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        **collate_text_fields(items),
        "fields": [item.get("fields", {}) for item in items],
    }
