"""``lodit train-repr``: train F3's representation encoder (:mod:`lodit.repr.f3`) on a latent cache.

Why a command of its own rather than a stage of ``lodit train-tokenizer``: the encoder reads a
*latent cache* (``lodit encode --tokenizer AE``), not audio, and changes nothing about the
autoencoder, so it can be trained — or retrained with other sizes — for any existing cache
without touching the tokenizer's run; the cache's producer names the autoencoder, which the
encoder records so ``lodit encode --features`` can go from audio to features.

:class:`ReprTrainConfig`: the model (``f3_repr``), the frozen text model used where
``f3_repr.text_weight > 0`` (``text_encoder``), the loop (``training``) and the data (``data``:
the cache and the crop length). Latents are normalised with the cache's per-channel mean/std
(stored in the model). Caption embeddings (the text model's mean-pooled token states) are
computed once per clip before training.

May import: torch, ``lodit.data``, ``lodit.training``, ``lodit.conditioning``, :mod:`lodit.repr.f3`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from lodit.conditioning.text_encoders import TextEncoderConfig, build_text_encoder
from lodit.config import to_dict
from lodit.data.latent_cache import LatentCache, LatentDataset, collate_latents
from lodit.errors import LoditError
from lodit.repr.f3 import CONFIG_KEY, F3Config, F3Encoder
from lodit.training.config import TrainingConfig
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer, TrainResult, TrainTask
from lodit.training.seed import seed_everything


@dataclass
class ReprDataConfig:
    cache: str = ""  # latent cache of the autoencoder (lodit encode --tokenizer AE); also --cache
    segment_frames: int = 100  # training crops (4 s at 25 Hz)
    random_crop: bool = True

    def __post_init__(self) -> None:
        if self.segment_frames < 2:
            raise ValueError(
                f"data.segment_frames must be at least 2 (RQ-MTP predicts the next frames), got {self.segment_frames}"
            )


@dataclass
class ReprTrainConfig:
    f3_repr: F3Config = field(default_factory=F3Config)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: ReprDataConfig = field(default_factory=ReprDataConfig)


class CaptionedCrops(Dataset):
    """:class:`LatentDataset` crops with each clip's caption embedding (zeros and ``has_text`` False without one)."""

    def __init__(self, crops: LatentDataset, text: torch.Tensor | None, has_text: torch.Tensor | None):
        self.crops, self.text, self.has_text = crops, text, has_text

    @property
    def lengths(self) -> list[int]:
        return self.crops.lengths

    def set_epoch(self, epoch: int) -> None:
        self.crops.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> dict:
        item = self.crops[index]
        if self.text is not None:
            item["text_embedding"] = self.text[index]
            item["has_text"] = bool(self.has_text[index])
        return item


def collate_captioned(items: Sequence[dict]) -> dict:
    batch = collate_latents(items)
    if "text_embedding" in items[0]:
        batch["text_embedding"] = torch.stack([item["text_embedding"] for item in items])
        batch["has_text"] = torch.tensor([item["has_text"] for item in items])
    return batch


@torch.no_grad()
def caption_embeddings(cache: LatentCache, config: TextEncoderConfig, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, dim)`` mean-pooled caption embeddings of every clip and ``(N,)`` which clips have a caption."""
    encoder = build_text_encoder(config)
    if encoder.dim != dim:
        raise LoditError(
            f"the text model gives {encoder.dim}-dim states but f3_repr.text_dim is {dim}; "
            f"set f3_repr.text_dim={encoder.dim}"
        )
    captions = [str(cache.fields(i).get("caption") or "") for i in range(len(cache))]
    embeddings = torch.zeros(len(captions), dim)
    for start in range(0, len(captions), 32):
        states, mask = encoder.encode(captions[start : start + 32])
        w = mask.float()[..., None]
        embeddings[start : start + 32] = ((states * w).sum(1) / w.sum(1).clamp_min(1.0)).cpu()
    return embeddings, torch.tensor([bool(c.strip()) for c in captions])


class ReprTask(TrainTask):
    def __init__(self, model: F3Encoder):
        self.model = model

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def loss(self, phase: str, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        latents, mask = batch["latents"].to(self.device), batch["mask"].to(self.device)
        text = batch.get("text_embedding")
        has_text = batch.get("has_text")
        total, parts = self.trained()(
            latents,
            mask,
            None if text is None else text.to(self.device),
            None if has_text is None else has_text.to(self.device),
        )
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def export_config(self) -> dict:
        return {CONFIG_KEY: to_dict(self.model.config)}


def build_model(config: ReprTrainConfig, cache: LatentCache) -> F3Encoder:
    """The encoder for ``cache``: its width, its autoencoder (from the producer) and its statistics."""
    model_config = config.f3_repr
    if model_config.latent_dim not in (0, cache.dim):
        raise LoditError(
            f"f3_repr.latent_dim={model_config.latent_dim} but the cache {cache.root} holds "
            f"{cache.dim}-dim latents; set f3_repr.latent_dim=0 to take the cache's"
        )
    autoencoder = model_config.autoencoder or str(cache.producer.get("checkpoint") or "")
    model_config = replace(model_config, latent_dim=cache.dim, autoencoder=autoencoder)
    seed_everything(config.training.seed)
    model = F3Encoder(model_config)
    model.set_latent_stats(cache.mean, cache.std)
    return model


def train_repr(
    config: ReprTrainConfig, run_dir: str | Path, *, resume: bool | str | Path = True, stop_at: int | None = None
) -> TrainResult:
    """Train (or resume) an F3 encoder run into ``run_dir``; ``lodit encode --features`` takes its ``final/``."""
    if not config.data.cache:
        raise LoditError("no latent cache given: pass --cache FOLDER (from lodit encode --tokenizer) or set data.cache")
    config = replace(config, data=replace(config.data, cache=str(Path(config.data.cache).resolve())))
    cache = LatentCache(config.data.cache)
    model = build_model(config, cache)
    config = replace(config, f3_repr=model.config)
    crops = LatentDataset(
        cache, crop_frames=config.data.segment_frames, random_crop=config.data.random_crop, seed=config.training.seed
    )
    text = has_text = None
    if model.config.text_weight > 0:
        text, has_text = caption_embeddings(cache, config.text_encoder, model.config.text_dim)
    dataset = CaptionedCrops(crops, text, has_text)
    loader = ResumableLoader.from_config(dataset, collate_captioned, config.training)
    trainer = Trainer(config.training, run_dir, ReprTask(model), loader, resolved_config=config, resume=resume)
    return trainer.fit(stop_at=stop_at)
