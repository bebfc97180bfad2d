"""Reading a complete latent cache: one shard memory-mapped at a time."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from lodit.data.latent_cache.format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    PRODUCER_FIELDS,
    TENSOR_NAME,
)
from lodit.errors import LoditError
from lodit.files import read_json


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
