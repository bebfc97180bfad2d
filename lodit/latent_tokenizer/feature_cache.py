"""A disk cache of frozen-teacher features, so a tokenizer run computes each clip's semantic
features once instead of every epoch.

:class:`FeatureCache` stores one safetensors file per key under
``<root>/<hash of the encoder identity>/<2 hex chars>/<hash of the key>.safetensors`` (sharded
by hash prefix so no folder grows huge). A different encoder identity (model, weights, layer,
rate, dtype — see :meth:`SemanticEncoder.identity`) gets its own folder, so features from one
teacher are never served for another. Writes are atomic (temp file + ``os.replace``), so
concurrent workers or an interrupted run never leave a half-written entry. Each file records its
key; a file that is unreadable or holds another key is recomputed and overwritten (the cache only
holds data that can be derived again).

Keys are chosen by the caller and must identify the audio exactly (e.g. path, offset and
duration of the clip). To use random crops, cache whole clips and slice frames: at hop 640 a crop
starting at a multiple of 640 samples maps onto whole feature frames.

May import: torch, safetensors, lodit's top-level helpers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lodit.files import write_atomically, write_text

_TENSOR = "features"
_IDENTITY_FILE = "identity.txt"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Cached features of one encoder identity under ``root``."""

    def __init__(self, root: str | os.PathLike, encoder_identity: str):
        self.identity = encoder_identity
        self.folder = Path(root) / _digest(encoder_identity)[:16]
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        digest = _digest(key)
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.find(key) is not None

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached tensor for ``key`` (on the CPU), or ``compute()``'s result, stored first."""
        cached = self.find(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        tensor = compute().detach().to("cpu").contiguous()
        self._write(key, tensor)
        return tensor

    def find(self, key: str) -> torch.Tensor | None:
        """The cached tensor for ``key`` (on the CPU), or None when it is not (readably) cached."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                if (f.metadata() or {}).get("key") != key:
                    return None  # a hash collision or a foreign file: recompute
                return f.get_tensor(_TENSOR)
        except (SafetensorError, OSError):
            return None  # unreadable (e.g. a damaged disk): recompute

    def _write(self, key: str, tensor: torch.Tensor) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        identity_file = self.folder / _IDENTITY_FILE
        if not identity_file.is_file():
            # Written for people browsing the cache; lookups never read it.
            write_text(identity_file, self.identity + "\n")
        write_atomically(path, lambda tmp: save_file({_TENSOR: tensor}, str(tmp), metadata={"key": key}))
