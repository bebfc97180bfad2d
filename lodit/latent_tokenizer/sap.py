"""SAP (semantic-acoustic primitives): supervision heads that make a tokenizer's codes carry
linguistic content, vocal attributes and auditory-scene primitives (UniAudio-Token, ANCHORS.md).

The paper decodes the primitives as JSON with a text decoder; lodit uses one light head per
primitive family instead (cheap enough for a CPU), each reading the quantised frames ``(B, T, D)``
and each **masked out where its field is absent** from a clip's manifest row:

* ``linguistic``: a CTC head over characters (``CHARACTERS`` plus the blank) for the row's
  ``transcript``. Each 25 Hz frame emits ``ctc_upsample`` symbols (a Linear to
  ``ctc_upsample x vocab`` logits, unfolded along time), because a 25 Hz frame rate is close to
  the character rate of speech and CTC needs at least one frame per character (two for repeats).
* ``vocal``: one softmax classifier per attribute over the masked mean of the frames: the row's
  ``speaker`` and the keys of its ``labels`` listed in ``vocal_keys`` (e.g. ``gender``, ``accent``).
* ``scene``: multi-label event tags (sigmoid + binary cross-entropy) over the masked mean:
  the string values of the ``labels`` keys listed in ``scene_keys`` (e.g. ``event``), and, with
  ``caption_words``, the caption words that occur in at least ``min_word_clips`` training clips.
  A clip with neither labels nor a caption has no scene target.

Vocabularies (speakers, attribute values, tags) are read from the training manifest by
:func:`build_vocabulary` and stored in the model config, so a saved model rebuilds its heads.

May import: torch, ``lodit.data``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lodit.data.manifest import ManifestRow

CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz0123456789"  # CTC symbols 1..len; 0 is the blank
IGNORE = -100
_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "with",
        "of",
        "at",
        "in",
        "on",
        "to",
        "by",
        "for",
        "from",
        "its",
        "it",
        "is",
        "are",
        "like",
    ]
)


@dataclass
class SAPConfig:
    """``sap:`` in a UniAudio-Token config; each family can be switched off (the ablations)."""

    linguistic: bool = True
    vocal: bool = True
    scene: bool = True
    vocal_keys: list[str] = field(default_factory=lambda: ["speaker"])  # "speaker" = the row's speaker field
    scene_keys: list[str] = field(default_factory=lambda: ["event"])
    caption_words: bool = True
    min_word_clips: int = 2
    ctc_upsample: int = 2
    hidden: int = 0  # width of the heads' shared projection; 0 = none (linear heads)
    linguistic_weight: float = 1.0
    vocal_weight: float = 1.0
    scene_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.ctc_upsample < 1 or self.min_word_clips < 1:
            raise ValueError("sap.ctc_upsample and sap.min_word_clips must be at least 1")
        if min(self.linguistic_weight, self.vocal_weight, self.scene_weight) < 0:
            raise ValueError("sap weights must not be negative")


@dataclass
class SAPVocabulary:
    """The classes each head predicts, read from a training manifest (saved with the model)."""

    vocal: dict[str, list[str]] = field(default_factory=dict)  # attribute -> sorted values
    tags: list[str] = field(default_factory=list)


def transcript_ids(text: str) -> list[int]:
    """CTC target ids of ``text``: lower-cased, other characters dropped, spaces collapsed."""
    clean = re.sub(r"\s+", " ", "".join(c for c in text.lower() if c in CHARACTERS)).strip()
    return [CHARACTERS.index(c) + 1 for c in clean]


def row_attribute(row: ManifestRow, key: str) -> str | None:
    """The row's value for vocal attribute ``key`` (``speaker`` is the row field), as a string."""
    if key == "speaker" and row.speaker:
        return str(row.speaker)
    labels = row.labels if isinstance(row.labels, dict) else {}
    value = labels.get(key)
    return None if value is None or isinstance(value, (list, dict)) else str(value)


def caption_words(caption: str | None) -> set[str]:
    words = re.findall(r"[a-z]+", (caption or "").lower())
    return {w for w in words if len(w) > 2 and w not in _STOP_WORDS}


def row_tags(row: ManifestRow, config: SAPConfig) -> set[str] | None:
    """The row's scene tags (before vocabulary filtering), or None if it has no scene information."""
    labels = row.labels if isinstance(row.labels, dict) else {}
    tags: set[str] = set()
    known = False
    for key in config.scene_keys:
        value = labels.get(key)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, (str, int)) and not isinstance(item, bool):
                tags.add(f"{key}={item}")
                known = True
    if config.caption_words and row.caption:
        tags |= {f"word={w}" for w in caption_words(row.caption)}
        known = True
    return tags if known else None


def build_vocabulary(rows: Sequence[ManifestRow], config: SAPConfig) -> SAPVocabulary:
    """Classes of every head from the training rows (attributes with fewer than two values are dropped)."""
    vocal = {}
    for key in config.vocal_keys:
        values = sorted({v for v in (row_attribute(r, key) for r in rows) if v is not None})
        if len(values) >= 2:
            vocal[key] = values
    counts: Counter[str] = Counter()
    for row in rows:
        counts.update(row_tags(row, config) or ())
    limit = max(2, len(rows) // 2)  # caption words in most clips say nothing
    tags = sorted(
        t
        for t, n in counts.items()
        if (t.startswith("word=") and config.min_word_clips <= n <= limit) or (not t.startswith("word=") and n >= 1)
    )
    return SAPVocabulary(vocal=vocal, tags=tags)


def sap_targets(row: ManifestRow, config: SAPConfig, vocabulary: SAPVocabulary) -> dict:
    """Per-clip targets: ``transcript`` (list of ids or None), ``vocal`` {key: class or IGNORE},
    ``tags`` (multi-hot float tensor) and ``has_tags``."""
    text = transcript_ids(row.transcript) if row.transcript else []
    vocal = {}
    for key, values in vocabulary.vocal.items():
        value = row_attribute(row, key)
        vocal[key] = values.index(value) if value in values else IGNORE
    tags = row_tags(row, config)
    multi_hot = torch.zeros(len(vocabulary.tags))
    for tag in tags or ():
        if tag in vocabulary.tags:
            multi_hot[vocabulary.tags.index(tag)] = 1.0
    return {"transcript": text or None, "vocal": vocal, "tags": multi_hot, "has_tags": tags is not None}


def collate_targets(targets: Sequence[dict]) -> dict:
    """Batch :func:`sap_targets`: CTC targets concatenated with lengths and a presence mask."""
    present = torch.tensor([t["transcript"] is not None for t in targets])
    text = [torch.tensor(t["transcript"] or [], dtype=torch.long) for t in targets]
    keys = targets[0]["vocal"].keys() if targets else ()
    return {
        "text": torch.cat(text) if text else torch.zeros(0, dtype=torch.long),
        "text_lengths": torch.tensor([len(t) for t in text], dtype=torch.long),
        "has_text": present,
        "vocal": {k: torch.tensor([t["vocal"][k] for t in targets], dtype=torch.long) for k in keys},
        "tags": torch.stack([t["tags"] for t in targets]) if targets else torch.zeros(0),
        "has_tags": torch.tensor([t["has_tags"] for t in targets]),
    }


class SAPHeads(nn.Module):
    """The enabled SAP heads over quantised frames (see the module docstring)."""

    def __init__(self, dim: int, config: SAPConfig, vocabulary: SAPVocabulary):
        super().__init__()
        self.config = config
        self.vocabulary = vocabulary
        width = config.hidden or dim
        self.trunk = nn.Sequential(nn.Linear(dim, width), nn.GELU()) if config.hidden else nn.Identity()
        vocab = len(CHARACTERS) + 1
        self.ctc = nn.Linear(width, config.ctc_upsample * vocab) if config.linguistic else None
        self.vocal = nn.ModuleDict(
            {k: nn.Linear(width, len(v)) for k, v in vocabulary.vocal.items()} if config.vocal else {}
        )
        self.scene = nn.Linear(width, len(vocabulary.tags)) if config.scene and vocabulary.tags else None

    def forward(
        self, frames: torch.Tensor, mask: torch.Tensor, targets: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and each family's loss on ``frames (B, T, D)`` with ``mask (B, T)``;
        a family with no target in the batch contributes an exact zero (still in the graph)."""
        h = self.trunk(frames)
        zero = h.sum() * 0.0
        losses: dict[str, torch.Tensor] = {}
        weights = mask.to(h.dtype)[..., None]
        pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, W)
        if self.ctc is not None:
            losses["linguistic"] = self._ctc_loss(h, mask, targets) if bool(targets["has_text"].any()) else zero
        if len(self.vocal):
            terms = []
            for key, head in self.vocal.items():
                labels = targets["vocal"][key].to(h.device)
                if bool((labels != IGNORE).any()):
                    terms.append(F.cross_entropy(head(pooled), labels, ignore_index=IGNORE))
            losses["vocal"] = torch.stack(terms).mean() if terms else zero
        if self.scene is not None:
            has = targets["has_tags"].to(h.device)
            if bool(has.any()):
                logits = self.scene(pooled[has])
                losses["scene"] = F.binary_cross_entropy_with_logits(logits, targets["tags"].to(h.device)[has])
            else:
                losses["scene"] = zero
        scale = {
            "linguistic": self.config.linguistic_weight,
            "vocal": self.config.vocal_weight,
            "scene": self.config.scene_weight,
        }
        total = sum((scale[k] * v for k, v in losses.items()), zero)
        return total, losses

    def _ctc_loss(self, h: torch.Tensor, mask: torch.Tensor, targets: dict) -> torch.Tensor:
        batch, frames, _ = h.shape
        up = self.config.ctc_upsample
        logits = self.ctc(h).reshape(batch, frames * up, -1)  # (B, T*up, V)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T*up, B, V)
        input_lengths = mask.long().sum(1) * up
        has = targets["has_text"].to(h.device)
        text_lengths = targets["text_lengths"].to(h.device)
        per_clip = F.ctc_loss(
            log_probs,
            targets["text"].to(h.device),
            input_lengths,
            text_lengths,
            blank=0,
            reduction="none",
            zero_infinity=True,
        )  # (B,)
        per_char = per_clip / text_lengths.clamp_min(1).float()
        return (per_char * has.float()).sum() / has.float().sum().clamp_min(1.0)
