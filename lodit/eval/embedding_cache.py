"""On-disk cache of clip embeddings, so a reference set is embedded once per embedder.

Layout::

    <dir>/<embedder key>/identity.txt            the embedder's full identity string
    <dir>/<embedder key>/<clip key>.safetensors  one tensor "embedding" (dim,), with the file path in
                                                 its metadata

``embedder key`` hashes :meth:`Embedder.identity() <lodit.eval.embedders.Embedder.identity>`
(model, weights, options); ``clip key`` hashes the file's resolved path, size and modification
time (and the segment, when only part of the file is embedded), so editing or replacing a file
re-embeds it. Writes are atomic (temp file + rename), so
parallel or interrupted runs never leave a half-written entry. Entries are plain safetensors:
nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lodit.errors import LoditError
from lodit.eval.embedders import Embedder, normalize_segments
from lodit.files import write_atomically, write_text

TENSOR_NAME = "embedding"


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


class EmbeddingCache:
    """Clip embeddings keyed by (embedder identity, file path, size, mtime)."""

    def __init__(self, directory: str | os.PathLike):
        self.root = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0

    def folder(self, embedder: Embedder) -> Path:
        """The embedder's sub-folder (created, with its identity written next to the entries)."""
        identity = embedder.identity()
        folder = self.root / _digest(identity, 16)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / "identity.txt"
        if not marker.is_file():
            write_text(marker, identity + "\n")
        return folder

    @staticmethod
    def clip_key(path: str | os.PathLike, offset: float = 0.0, duration: float | None = None) -> str:
        resolved = Path(path).expanduser().resolve()
        try:
            stat = resolved.stat()
        except FileNotFoundError:
            raise LoditError(f"{path}: audio file not found") from None
        segment = "" if (offset, duration) == (0.0, None) else f"|{offset!r}|{duration!r}"
        return _digest(f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}{segment}", 24)

    def embed_set(
        self,
        embedder: Embedder,
        paths: Sequence[str | os.PathLike],
        *,
        segments: Sequence[tuple[float, float | None]] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """``(N, dim)`` float32 embeddings of ``paths`` (or of their ``(offset, duration)``
        ``segments``); only clips not yet cached are embedded."""
        paths = list(paths)
        if not paths:
            raise LoditError("cannot embed an empty set of audio files")
        segments = normalize_segments(paths, segments)
        folder = self.folder(embedder)
        entries = [folder / f"{self.clip_key(p, *seg)}.safetensors" for p, seg in zip(paths, segments)]
        missing = [i for i, entry in enumerate(entries) if not entry.is_file()]
        self.hits += len(paths) - len(missing)
        self.misses += len(missing)
        todo = missing
        if progress and missing:
            from tqdm import tqdm

            todo = tqdm(missing, desc=f"embedding ({embedder.name})", unit="clip")
        for i in todo:
            vector = embedder.embed(embedder.load(paths[i], *segments[i])).detach().float().cpu().contiguous()
            _atomic_save(entries[i], vector, str(Path(paths[i]).expanduser().resolve()))
        return torch.stack([self._read(entry, embedder.dim) for entry in entries])

    @staticmethod
    def _read(entry: Path, dim: int) -> torch.Tensor:
        try:
            vector = load_file(str(entry))[TENSOR_NAME]
        except (SafetensorError, OSError, KeyError):
            raise LoditError(
                f"{entry}: unreadable embedding cache entry; delete it (or the cache folder) and re-run"
            ) from None
        if vector.shape != (dim,):
            raise LoditError(
                f"{entry}: cached embedding has shape {tuple(vector.shape)}, expected ({dim},); delete it and re-run"
            )
        return vector


def _atomic_save(entry: Path, vector: torch.Tensor, source: str) -> None:
    write_atomically(entry, lambda tmp: save_file({TENSOR_NAME: vector}, str(tmp), metadata={"path": source}))
