"""The clips a DiT trains on: each clip's task, caption clips cropped and speech clips whole.

A clip's task is its manifest ``domain`` (speech -> tts, music -> ttm, audio -> tta;
``data.default_task`` when it has none); :func:`resolve_tasks` picks the trained ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from lodit.conditioning.tasks import TASKS, task_from_domain, task_id
from lodit.data.latent_cache import LatentCache, LatentDataset, collate_latents
from lodit.dit.train_config import DiTDataConfig
from lodit.errors import LoditError


def clip_task(domain: str, default: str) -> str:
    return task_from_domain(domain) if domain else default


def resolve_tasks(requested: str | list[str], clip_tasks: Sequence[str], cache_root: Path) -> list[str]:
    """The trained tasks, in :data:`TASKS` order: ``auto`` = those the cache has clips for."""
    present = set(clip_tasks)
    if requested == "auto":
        tasks = [t for t in TASKS if t in present]
    else:
        for name in requested:
            task_id(name)  # unknown names are an error naming the choices
        tasks = [t for t in TASKS if t in requested]
        missing = [t for t in tasks if t not in present]
        if missing:
            raise LoditError(f"tasks lists {', '.join(missing)} but latent cache {cache_root} has no clip for it "
                             f"(clip domains decide the task); fix tasks or the cache")
    if not tasks:
        raise LoditError(f"latent cache {cache_root} has no clips for the requested tasks {requested}")
    return tasks


class DiTDataset(Dataset):
    """The trained clips of a latent cache: caption clips cropped, speech clips whole, with their task."""

    def __init__(
        self, cache: LatentCache, indices: Sequence[int], tasks: Sequence[str], data: DiTDataConfig, seed: int
    ):
        self.indices = list(indices)
        self.tasks = list(tasks)  # per selected clip
        self.cropped = LatentDataset(cache, crop_frames=data.crop_frames, random_crop=data.random_crop, seed=seed)
        self.whole = LatentDataset(cache, crop_frames=None, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.cropped.set_epoch(epoch)

    @property
    def lengths(self) -> list[int]:
        cropped, whole = self.cropped.lengths, self.whole.lengths
        return [whole[i] if task == "tts" else cropped[i] for i, task in zip(self.indices, self.tasks)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        task = self.tasks[position]
        source = self.whole if task == "tts" else self.cropped
        return {**source[self.indices[position]], "task": task}


def collate_dit(items: Sequence[dict]) -> dict:
    """:func:`collate_latents` plus each row's task name (``tasks``)."""
    return {**collate_latents(items), "tasks": [item["task"] for item in items]}
