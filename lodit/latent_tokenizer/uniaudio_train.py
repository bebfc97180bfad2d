"""UniAudio-Token training, stage ``tokenizer``: SAE + codebook + SAP heads on cached frozen-encoder features.

:class:`UniAudioTrainConfig` is the whole run of ``lodit train-tokenizer`` with a UniAudio-Token
config (a YAML whose top-level ``uniaudio:`` key holds the model): the model, the ``stages`` to
run in order (``tokenizer``, then ``decoder``, :mod:`lodit.dit.uniaudio_stages`), each stage's loop
settings (``training``, ``decoder_training``) and the data.

Data flow of this stage:

1. the frozen two-layer Whisper encoder (:class:`~lodit.latent_tokenizer.uniaudio.LayeredWhisperEncoder`)
   runs once per clip of the manifest (:func:`~lodit.latent_tokenizer.teacher_features.fill_teacher_cache`),
   whole clips, into a :class:`~lodit.latent_tokenizer.feature_cache.FeatureCache`;
2. the SAP vocabularies (speakers, attribute values, tags) are read from the manifest rows
   (:func:`~lodit.latent_tokenizer.sap.build_vocabulary`) into the model config;
3. :class:`ClipFeatures` serves each clip's features (its first ``data.max_seconds``) with its SAP
   targets; clips are whole because a transcript belongs to the whole clip;
4. :class:`UniAudioTask` trains on the shared :class:`~lodit.training.loop.Trainer`: loss =
   ``quantizer_loss_scale * commitment + SAP`` (the reference code scales its quantiser loss by 10),
   logging the mean SAE gate (``gate``), codebook ``usage``/``perplexity``/``restarted`` and each SAP loss.

May import: torch, ``lodit.data``, ``lodit.training``, the UniAudio-Token modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from lodit.config import load_yaml, to_dict
from lodit.data.batching import pad_sequences
from lodit.data.dataset import AudioClipDataset
from lodit.data.manifest import ManifestRow, read_manifest
from lodit.errors import LoditError
from lodit.latent_tokenizer.feature_cache import FeatureCache
from lodit.latent_tokenizer.sap import build_vocabulary, collate_targets, sap_targets
from lodit.latent_tokenizer.semantic import SAMPLE_RATE, load_whisper_encoder
from lodit.latent_tokenizer.teacher_features import fill_teacher_cache
from lodit.latent_tokenizer.uniaudio import (
    CONFIG_KEY,
    TokenDecoderConfig,
    UniAudioToken,
    UniAudioTokenConfig,
    build_teacher,
)
from lodit.training.config import TrainingConfig
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer, TrainResult, TrainTask
from lodit.training.seed import seed_everything

Stage = Literal["tokenizer", "decoder"]
FEATURE_CACHE_DIR = "teacher_features"


@dataclass
class UniAudioDataConfig:
    manifest: str = ""  # JSON Lines manifest; also --manifest
    max_seconds: float = 30.0  # each clip's first max_seconds (one Whisper window)
    min_seconds: float = 0.0
    channels: Literal["mix", "first"] = "mix"
    on_error: Literal["fail", "skip"] = "fail"
    teacher_cache: str = ""  # folder of cached encoder features; "" = <run>/teacher_features
    teacher_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_seconds <= 0 or self.min_seconds < 0 or self.teacher_batch_size < 1:
            raise ValueError("data.max_seconds must be > 0, data.min_seconds >= 0, data.teacher_batch_size >= 1")


def is_uniaudio_config(path: str | Path) -> bool:
    """Whether the YAML at ``path`` is a UniAudio-Token training config (top-level ``uniaudio:``)."""
    data = load_yaml(path)
    return isinstance(data, dict) and "uniaudio" in data


@dataclass
class UniAudioTrainConfig:
    uniaudio: UniAudioTokenConfig = field(default_factory=UniAudioTokenConfig)
    stages: list[Stage] = field(default_factory=lambda: ["tokenizer", "decoder"])
    quantizer_loss_scale: float = 10.0
    decoder: TokenDecoderConfig = field(default_factory=TokenDecoderConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)  # the tokenizer stage
    decoder_training: TrainingConfig = field(default_factory=TrainingConfig)  # the decoder stage
    data: UniAudioDataConfig = field(default_factory=UniAudioDataConfig)

    def __post_init__(self) -> None:
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must list tokenizer and/or decoder once each, got {self.stages}")


# ============================================================================ data


def clip_rows(config: UniAudioTrainConfig) -> tuple[AudioClipDataset, list[ManifestRow]]:
    """The manifest's whole clips at 16 kHz and, for each, its manifest row (labels included)."""
    data = config.data
    if not data.manifest:
        raise LoditError("no manifest given: pass --manifest FILE or set data.manifest in the config")
    clips = AudioClipDataset(data.manifest, SAMPLE_RATE, segment_seconds=None, channels=data.channels,
                             min_seconds=data.min_seconds, on_error=data.on_error)
    if len(clips) == 0:
        raise LoditError(clips.why_empty())
    manifest = read_manifest(data.manifest, on_error=data.on_error)
    by_line = dict(zip(manifest.line_numbers, manifest.rows))
    return clips, [by_line[record.line] for record in clips.records]


def teacher_cache_keys(
    config: UniAudioTrainConfig, run_dir: str | Path, clips: AudioClipDataset
) -> tuple[FeatureCache, list[str]]:
    """Fill the encoder-feature cache for ``clips`` (the encoder is dropped afterwards)."""
    teacher = build_teacher(config.uniaudio)
    root = Path(config.data.teacher_cache) if config.data.teacher_cache else Path(run_dir) / FEATURE_CACHE_DIR
    cache = FeatureCache(root, teacher.identity())
    keys = fill_teacher_cache(clips, teacher, cache, batch_size=config.data.teacher_batch_size)
    del teacher
    return cache, keys


class ClipFeatures(Dataset):
    """Each clip's cached two-layer features (its first ``max_frames``) with its SAP targets."""

    def __init__(self, cache: FeatureCache, keys: Sequence[str], targets: Sequence[dict], max_frames: int):
        self.cache, self.keys, self.targets, self.max_frames = cache, list(keys), list(targets), int(max_frames)

    def set_epoch(self, epoch: int) -> None:
        """Whole clips: nothing changes between epochs."""

    def __len__(self) -> int:
        return len(self.keys)

    def features(self, index: int) -> torch.Tensor:
        def missing() -> torch.Tensor:
            raise LoditError(
                f"encoder features of clip {index} vanished from {self.cache.folder}; run the command again"
            )

        return self.cache.get(self.keys[index], missing)[: self.max_frames].float()  # (T, 2D)

    def __getitem__(self, index: int) -> dict:
        return {"features": self.features(index), "targets": self.targets[index], "index": int(index)}


def collate_clips(items: Sequence[dict]) -> dict:
    features, mask, lengths = pad_sequences([item["features"] for item in items], dim=0)
    return {
        "features": features,
        "mask": mask,
        "lengths": lengths,
        "targets": collate_targets([item["targets"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
    }


def prepare_tokenizer_data(
    config: UniAudioTrainConfig, run_dir: str | Path
) -> tuple[UniAudioTrainConfig, ClipFeatures]:
    """The config with the SAP vocabularies of its manifest, and the training dataset."""
    clips, rows = clip_rows(config)
    cache, keys = teacher_cache_keys(config, run_dir, clips)
    model_config = config.uniaudio
    vocabulary = build_vocabulary(rows, model_config.sap)
    config = replace(config, uniaudio=replace(model_config, vocabulary=vocabulary))
    targets = [sap_targets(row, model_config.sap, vocabulary) for row in rows]
    max_frames = max(1, math.floor(config.data.max_seconds * model_config.teacher.target_rate))
    return config, ClipFeatures(cache, keys, targets, max_frames)


# ============================================================================ the task


class TokenizerStage(nn.Module):
    """The trained module of this stage: its weights are saved as ``tokenizer.*``, the prefix a
    UniAudio-Token folder uses (the decoder stage adds ``decoder.*``)."""

    def __init__(self, tokenizer: UniAudioToken):
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, features: torch.Tensor, mask: torch.Tensor, targets: dict):
        """The tokenizer's output and the SAP losses, in one forward (so data-parallel training syncs every head)."""
        out = self.tokenizer(features, mask)
        sap_total, parts = self.tokenizer.sap(out.quantized, mask, targets)
        return out, sap_total, parts


class UniAudioTask(TrainTask):
    """Trains SAE + SAP heads by gradient and the codebook by EMA (see the module docstring)."""

    def __init__(self, config: UniAudioTrainConfig):
        self.config = config
        self.tokenizer = UniAudioToken(config.uniaudio)
        self.model = TokenizerStage(self.tokenizer)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def loss(self, phase: str, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        features = batch["features"].to(self.device)
        mask = batch["mask"].to(self.device)
        out, sap_total, parts = self.trained()(features, mask, batch["targets"])  # the (possibly data-parallel) wrapper
        total = self.config.quantizer_loss_scale * out.commitment_loss + sap_total
        scalars = {
            "commitment": float(out.commitment_loss.detach()),
            "gate": float(out.gate.detach()),
            **{f"sap_{k}": float(v.detach()) for k, v in parts.items()},
            **out.stats,
        }
        return total, scalars

    def export_config(self) -> dict:
        return {CONFIG_KEY: to_dict(self.config.uniaudio)}


def train_tokenizer_stage(
    config: UniAudioTrainConfig, run_dir: str | Path, *, resume: bool | str | Path = True, stop_at: int | None = None
) -> TrainResult:
    """Train (or resume) the tokenizer stage into ``run_dir``; its ``final/`` is a UniAudio-Token folder."""
    config, dataset = prepare_tokenizer_data(config, run_dir)
    seed_everything(config.training.seed)
    task = UniAudioTask(config)
    if task.tokenizer.top is not None:  # fine-tuned top blocks start from the pretrained encoder
        task.tokenizer.top.load_from(load_whisper_encoder(config.uniaudio.teacher.model))
    loader = ResumableLoader.from_config(dataset, collate_clips, config.training)
    trainer = Trainer(config.training, run_dir, task, loader, resolved_config=config, resume=resume)
    return trainer.fit(stop_at=stop_at)


def absolute_paths(config: UniAudioTrainConfig) -> UniAudioTrainConfig:
    """The config with its data and model paths absolute, so a resumed run finds them from anywhere."""
    data = config.data
    paths = {
        name: str(Path(getattr(data, name)).resolve()) for name in ("manifest", "teacher_cache") if getattr(data, name)
    }
    decoder = config.decoder
    if decoder.autoencoder:
        decoder = replace(decoder, autoencoder=str(Path(decoder.autoencoder).resolve()))
    return replace(config, data=replace(data, **paths), decoder=decoder)
