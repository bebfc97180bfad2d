"""The latent cache as a training dataset for the DiT (crops, normalisation, text fields) and its collate."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lodit.data.batching import collate_text_fields, pad_sequences
from lodit.data.dataset import crop_start
from lodit.data.latent_cache.reader import LatentCache
from lodit.data.latent_cache.stats import normalize
from lodit.errors import LoditError


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
