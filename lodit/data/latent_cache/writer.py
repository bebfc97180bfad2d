"""Writing a latent cache: atomically, shard by shard, resumable after a crash (see the package docstring).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lodit.data.latent_cache.format import (
    CACHE_FORMAT,
    CACHE_VERSION,
    DTYPES,
    PRODUCER_FIELDS,
    SHARD_INDEX_KEY,
    TENSOR_NAME,
)
from lodit.data.latent_cache.stats import RunningStats
from lodit.errors import LoditError
from lodit.files import TEMP_FILE_GLOB, replace_folder, write_atomically, write_json, write_jsonl

log = logging.getLogger(__name__)



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
        if dtype not in DTYPES:
            raise LoditError(f"latent cache dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
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
