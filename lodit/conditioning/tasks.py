"""Generation tasks and their ids: text-to-audio, text-to-music, text-to-speech.

One DiT can be trained on all three tasks at once (as LoSATok's multi-task run): each example
carries a task id that the DiT embeds. The id of a task is its index in :data:`TASKS`, so the
order of that tuple is part of every multi-task checkpoint and must never change (append only).
A clip's task follows from its manifest ``domain``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lodit.errors import LoditError

TASKS: tuple[str, ...] = ("tta", "ttm", "tts")

# Manifest ``domain`` -> task: speech is spoken from a transcript, music and general audio from a
# caption.
DOMAIN_TASKS: dict[str, str] = {"audio": "tta", "music": "ttm", "speech": "tts"}


def task_id(name: str) -> int:
    """The integer id of task ``name`` (``tta`` -> 0, ``ttm`` -> 1, ``tts`` -> 2)."""
    try:
        return TASKS.index(name)
    except ValueError:
        raise LoditError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def task_ids(names: Sequence[str]) -> torch.Tensor:
    """The ids of a batch of task names, as the DiT's ``task`` input: ``(B,)`` long."""
    return torch.tensor([task_id(name) for name in names], dtype=torch.long)


def task_from_domain(domain: str) -> str:
    """The task a clip of manifest ``domain`` trains: speech -> tts, music -> ttm, audio -> tta."""
    try:
        return DOMAIN_TASKS[domain]
    except KeyError:
        choices = ", ".join(sorted(DOMAIN_TASKS))
        raise LoditError(f"unknown domain {domain!r}; choose one of: {choices}") from None
