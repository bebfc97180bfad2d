"""The configuration of a DiT training run (:class:`DiTTrainConfig`), read from YAML.

See :mod:`lodit.dit.train` for what each section does in a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lodit.conditioning.text_encoders import TextEncoderConfig
from lodit.dit.conditioned import (
    TTSConfig,
)
from lodit.dit.flow import FlowMatchingConfig
from lodit.dit.model import DiTConfig
from lodit.samplers.sample import SamplerConfig
from lodit.training.config import TrainingConfig


@dataclass
class DiTDataConfig:
    cache: str = ""  # latent cache folder (`lodit encode`); also --cache
    crop_frames: int = 250  # TTA/TTM clips are cropped to this many frames (10 s at 25 Hz); TTS clips are whole
    random_crop: bool = True
    default_task: Literal["tta", "ttm", "tts"] = "tta"  # task of a clip with no domain
    batching: Literal["bucket", "shuffle"] = "bucket"  # bucket: similar lengths share a batch
    max_frames_per_batch: int = 0  # bucket: > 0 fills batches up to this many padded frames instead of batch_size
    num_buckets: int = 10
    text_cache: str = ""  # caption-state cache folder; "" = <run>/text_cache


@dataclass
class PreviewPrompt:
    prompt: str = ""
    transcript: str = ""
    seconds: float = 0.0  # 0 = preview.seconds (TTS: the training data's speaking rate)


@dataclass
class PreviewConfig:
    """Audio previews in TensorBoard every ``training.preview_every`` steps (EMA weights when on)."""

    prompts: list[PreviewPrompt] = field(default_factory=list)  # empty = the first rows of the batch
    max_items: int = 2  # rows taken from the batch when prompts is empty
    seconds: float = 5.0
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 3.0])
    steps: int = 20
    sampler: str = "euler"


@dataclass
class DiTTrainConfig:
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    tasks: Literal["auto"] | list[str] = "auto"  # auto = every task the cache has clips for
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    sampling: SamplerConfig = field(default_factory=SamplerConfig)  # defaults recorded for `lodit sample`
    preview: PreviewConfig = field(default_factory=PreviewConfig)
