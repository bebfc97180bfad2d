"""SemBo training on frozen-teacher features, and the ``lodit train-sembo`` command.

LoSATok pre-trains its semantic bottleneck alone, then freezes it (ANCHORS.md: ``lambda_rec *
L_rec + L_tr``, AdamW betas (0.8, 0.99), lr 1e-4, cosine, 1K warm-up). :class:`SemBoTrainConfig`
is the whole run: the SemBo sizes and loss weight (``sembo``), the frozen teacher (``teacher``),
the shared loop settings (``training``) and the data (``data``).

Data flow:

1. :func:`~lodit.latent_tokenizer.teacher_features.fill_teacher_cache` runs the teacher once
   over every clip of the manifest (whole clips, several per forward) and stores each clip's
   features ``(T, D)`` in a :class:`~lodit.latent_tokenizer.feature_cache.FeatureCache` keyed by
   the clip (:func:`~lodit.latent_tokenizer.teacher_features.clip_key`). Clips already cached are
   skipped, so a second run, a resumed run and every epoch read features instead of recomputing
   them. With several processes each computes a strided share. The teacher is released before
   training.
2. :class:`TeacherFeatureDataset` serves crops of ``data.segment_seconds`` of those features
   (random per ``(seed, epoch, clip)``, or each clip's start); :func:`collate_features` pads them
   with a frame mask, which the SemBo losses honour.
3. :class:`SemBoTask` trains the :class:`~lodit.latent_tokenizer.sembo.SemBo` on the shared
   :class:`~lodit.training.loop.Trainer` (resume, EMA, logging, progress, checkpoints). Its
   checkpoints and ``RUN/final`` are SemBo folders: ``SemBo.from_pretrained(folder)`` loads them
   and LoSATok takes one as ``tokenizer.encoder.semantic.sembo``.

Running: ``lodit train-sembo --config configs/sembo/whisper_large_v3.yaml --manifest M --out RUN``
(default ``RUN`` = ``runs/sembo_<config name>``); running it again resumes.

May import: torch, ``lodit.data``, ``lodit.training``, the semantic encoder, teacher-feature and SemBo modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from lodit.config import to_dict
from lodit.data.batching import pad_sequences
from lodit.data.dataset import AudioClipDataset, crop_start
from lodit.errors import LoditError
from lodit.latent_tokenizer.feature_cache import FeatureCache
from lodit.latent_tokenizer.semantic import SemanticEncoder, SemanticEncoderConfig, build_semantic_encoder
from lodit.latent_tokenizer.sembo import SemBo, SemBoConfig, sembo_loss
from lodit.latent_tokenizer.teacher_features import fill_teacher_cache
from lodit.training.config import TrainingConfig
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer, TrainResult, TrainTask
from lodit.training.seed import seed_everything

FEATURE_CACHE_DIR = "teacher_features"


# ============================================================================ config


@dataclass
class SemBoDataConfig:
    manifest: str = ""  # JSON Lines manifest (`lodit prepare`); also --manifest
    segment_seconds: float = 10.0  # training crops of teacher features (L_tr compares every frame pair of a crop)
    random_crop: bool = True  # a random window per (seed, epoch, clip); false = each clip's start
    min_seconds: float = 0.0  # clips shorter than this are left out
    channels: Literal["mix", "first"] = "mix"  # the teacher hears mono: average the channels or take the first
    on_error: Literal["fail", "skip"] = "fail"  # a bad manifest row stops the run, or is skipped and logged
    feature_cache: str = ""  # teacher-feature cache folder; "" = <run>/teacher_features
    teacher_batch_size: int = 8  # clips per teacher forward when filling the cache

    def __post_init__(self):
        if self.segment_seconds <= 0:
            raise ValueError(f"data.segment_seconds must be positive, got {self.segment_seconds}")
        if self.min_seconds < 0:
            raise ValueError(f"data.min_seconds must not be negative, got {self.min_seconds}")
        if self.teacher_batch_size < 1:
            raise ValueError(f"data.teacher_batch_size must be at least 1, got {self.teacher_batch_size}")


@dataclass
class SemBoTrainConfig:
    sembo: SemBoConfig = field(default_factory=SemBoConfig)
    teacher: SemanticEncoderConfig = field(default_factory=SemanticEncoderConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: SemBoDataConfig = field(default_factory=SemBoDataConfig)


# ============================================================================ teacher-feature crops


class TeacherFeatureDataset(Dataset):
    """Crops of ``segment_frames`` frames of cached per-clip teacher features ``(T, D)``.

    Items: ``{"features": (T_crop, D) float32, "length": T_crop, "index": i}``. The crop is random
    per ``(seed, epoch, index)`` or the clip's start (``random_crop=False``); shorter clips are whole.
    """

    def __init__(self, cache: FeatureCache, keys: Sequence[str], segment_frames: int, *,
                 random_crop: bool = True, seed: int = 0):
        if segment_frames < 1:
            raise LoditError(f"a feature crop must be at least one frame, got {segment_frames}")
        self.cache = cache
        self.keys = list(keys)
        self.segment_frames = int(segment_frames)
        self.random_crop = random_crop
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        features = self.cache.get(self.keys[index], lambda: self._missing(index))  # (T, D)
        start = crop_start(features.shape[0], self.segment_frames, random=self.random_crop,
                           seed=self.seed, epoch=self.epoch, index=int(index))
        crop = features[start : start + self.segment_frames].float()
        return {"features": crop, "length": crop.shape[0], "index": int(index)}

    def _missing(self, index: int) -> torch.Tensor:
        raise LoditError(
            f"teacher features of clip {index} vanished from {self.cache.folder} during training; "
            "run the command again to recompute them"
        )


def collate_features(items: Sequence[dict]) -> dict:
    """``features (B, T_max, D)`` zero-padded, ``mask (B, T_max)`` bool (True on real frames), ``lengths``."""
    features, mask, lengths = pad_sequences([item["features"] for item in items], dim=0)
    return {"features": features, "mask": mask, "lengths": lengths,
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long)}


# ============================================================================ the task


class SemBoTask(TrainTask):
    """Trains a :class:`SemBo` with ``lambda_rec * L_rec + L_tr`` on teacher-feature crops."""

    def __init__(self, config: SemBoTrainConfig):
        self.config = config
        self.sembo = SemBo(config.sembo)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.sembo}

    def loss(self, phase: str, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        h = batch["features"].to(self.device)  # (B, T, D)
        mask = batch["mask"].to(self.device)
        z_low, restored = self.trained()(h)  # through the (possibly data-parallel) wrapper
        total, parts = sembo_loss(z_low, restored, h, mask, lambda_rec=self.config.sembo.lambda_rec)
        values = torch.stack([v.detach().float() for v in parts.values()]).tolist()  # one device sync
        return total, dict(zip(parts, values))

    def export_config(self) -> dict:
        return to_dict(self.config.sembo)


# ============================================================================ assembling a run


def build_clip_dataset(config: SemBoTrainConfig) -> AudioClipDataset:
    """The whole clips of ``data.manifest`` at the teacher's 16 kHz."""
    data = config.data
    if not data.manifest:
        raise LoditError("no manifest given: pass --manifest FILE or set data.manifest in the config")
    dataset = AudioClipDataset(data.manifest, SemanticEncoder.sample_rate, segment_seconds=None,
                               channels=data.channels, min_seconds=data.min_seconds, on_error=data.on_error)
    if len(dataset) == 0:
        raise LoditError(dataset.why_empty())
    return dataset


def prepare_features(config: SemBoTrainConfig, run_dir: str | Path, *,
                     teacher: SemanticEncoder | None = None) -> TeacherFeatureDataset:
    """Fill the feature cache for the manifest (``teacher``: an already built one to use) and
    return the training dataset over it."""
    clips = build_clip_dataset(config)
    teacher = teacher if teacher is not None else build_semantic_encoder(config.teacher)
    if teacher.dim != config.sembo.in_dim:
        raise LoditError(f"the teacher gives {teacher.dim}-dim features but sembo.in_dim is {config.sembo.in_dim}; "
                         f"set sembo.in_dim={teacher.dim}")
    root = Path(config.data.feature_cache) if config.data.feature_cache else Path(run_dir) / FEATURE_CACHE_DIR
    cache = FeatureCache(root, teacher.identity())
    keys = fill_teacher_cache(clips, teacher, cache, batch_size=config.data.teacher_batch_size)
    segment_frames = max(1, math.floor(config.data.segment_seconds * teacher.target_rate))
    return TeacherFeatureDataset(cache, keys, segment_frames, random_crop=config.data.random_crop,
                                 seed=config.training.seed)


def train_sembo(config: SemBoTrainConfig, run_dir: str | Path, *, resume: bool | str | Path = True,
                teacher: SemanticEncoder | None = None, stop_at: int | None = None) -> TrainResult:
    """Cache the teacher features, then train (or resume) a SemBo run into ``run_dir``.

    ``stop_at`` ends this call after that step, with a checkpoint (``lodit train-sembo --max-steps``)."""
    if config.data.manifest:
        # the run's config.yaml must still find the data when the run is resumed from elsewhere
        config = replace(config, data=replace(config.data, manifest=str(Path(config.data.manifest).resolve())))
    dataset = prepare_features(config, run_dir, teacher=teacher)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # a teacher built for the features is gone by now: give its memory back
    seed_everything(config.training.seed)  # the SemBo's initialisation
    task = SemBoTask(config)
    loader = ResumableLoader.from_config(dataset, collate_features, config.training)
    trainer = Trainer(config.training, run_dir, task, loader, resolved_config=config, resume=resume)
    return trainer.fit(stop_at=stop_at)


# ============================================================================ the command
