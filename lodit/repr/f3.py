"""F3's representation encoder: a transformer over frozen, noise-normalised autoencoder latents,
trained with RQ-MTP (random-projection quantised multi-token prediction).

* **Input**: the latents of a lodit autoencoder (a ``noise_norm`` bottleneck in F3's recipe),
  normalised per channel with the training cache's mean/std (saved with the model as buffers).
  The autoencoder stays frozen; this encoder never changes the latents the DiT generates.
* **Targets** (:class:`RandomProjectionQuantizer`): every latent frame is projected by a frozen
  random matrix ``P (D x p)``, L2-normalised and assigned to the nearest of ``codebook_size``
  frozen random L2-normalised codes ``C (K x p)``. ``P`` and ``C`` are drawn once from
  ``target_seed`` with their own generator and stored as buffers, so the targets of a frame are
  the same at every step, after a resume, and in another run with the same seed.
* **Network**: a linear input projection, sinusoidal positions, a stack of pre-norm transformer
  layers with **causal** attention (frame ``t`` sees frames ``<= t``, so predicting the future is
  not copying it — F3's paper does not say; this is lodit's choice), a final LayerNorm: the
  features ``(B, T, width)``.
* **Loss**: ``horizon`` linear heads; head ``k`` (1..K) predicts the target code of frame ``t + k``
  from the features at ``t``; the cross-entropy is averaged over valid (frame, k) pairs and then
  over k. Optional text supervision (``text_weight > 0``): the masked mean of the features,
  through a linear map, is pulled towards a frozen text model's mean-pooled caption embedding
  (``1 - cosine``), only for clips with a caption.

A trained encoder is a folder with ``config.json`` (``f3_repr``: :class:`F3Config`) and
``model.safetensors``; :func:`load_f3` reads it and :class:`FeatureFrameEncoder` is what
``lodit encode --features`` runs (audio -> autoencoder latents -> normalised -> features).

May import: torch, ``lodit.latent_tokenizer`` (the autoencoder), ``lodit.training``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lodit.config import config_hash, from_dict
from lodit.errors import LoditError
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.latent_tokenizer.uniaudio import read_keyed_config
from lodit.training.checkpoint import read_weights

CONFIG_KEY = "f3_repr"


@dataclass
class F3Config:
    """``f3_repr:`` in a ``lodit train-repr`` config and in a trained folder's ``config.json``."""

    name: str = "f3_repr"
    autoencoder: str = ""  # the tokenizer folder whose latents it reads (set from the cache's producer)
    latent_dim: int = 0  # 0 = the cache's width
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    horizon: int = 4  # K: heads predict frames t+1..t+K
    codebook_size: int = 256
    projection_dim: int = 16
    target_seed: int = 1234
    text_weight: float = 0.0  # > 0: supervision from a frozen text model where captions exist
    text_dim: int = 384  # the text model's width (MiniLM's 384)

    def __post_init__(self) -> None:
        if min(self.width, self.depth, self.heads, self.horizon, self.projection_dim) < 1 or self.codebook_size < 2:
            raise ValueError(
                "f3_repr sizes (width, depth, heads, horizon, projection_dim) must be >= 1, codebook_size >= 2"
            )
        if self.width % self.heads:
            raise ValueError(f"f3_repr.width={self.width} must be a multiple of f3_repr.heads={self.heads}")
        if self.text_weight < 0 or self.latent_dim < 0:
            raise ValueError("f3_repr.text_weight and latent_dim must not be negative")


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection + random codebook: latent frames ``(..., D)`` -> code ids ``(...)``."""

    def __init__(self, dim: int, projection_dim: int, codebook_size: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        projection = torch.randn(dim, projection_dim, generator=generator) / math.sqrt(dim)
        codebook = F.normalize(torch.randn(codebook_size, projection_dim, generator=generator), dim=-1)
        self.register_buffer("projection", projection)
        self.register_buffer("codebook", codebook)

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = F.normalize(latents.float() @ self.projection, dim=-1)  # (..., p)
        return (z @ self.codebook.t()).argmax(-1)  # nearest unit code = largest cosine


class F3Encoder(nn.Module):
    """The transformer, its RQ-MTP heads and targets, and the optional text head."""

    def __init__(self, config: F3Config):
        super().__init__()
        if config.latent_dim < 1:
            raise LoditError("f3_repr.latent_dim is not set; build the encoder from a latent cache (lodit train-repr)")
        self.config = config
        self.input = nn.Linear(config.latent_dim, config.width)
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            int(config.mlp_ratio * config.width),
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.heads = nn.ModuleList(nn.Linear(config.width, config.codebook_size) for _ in range(config.horizon))
        self.targets = RandomProjectionQuantizer(
            config.latent_dim, config.projection_dim, config.codebook_size, config.target_seed
        )
        self.text_head = nn.Linear(config.width, config.text_dim) if config.text_weight > 0 else None
        self.register_buffer("latent_mean", torch.zeros(config.latent_dim))
        self.register_buffer("latent_std", torch.ones(config.latent_dim))

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp_min(1e-5))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.latent_mean) / self.latent_std

    def features(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents ``(B, T, D)`` -> features ``(B, T, width)`` (causal: frame t sees <= t)."""
        frames = latents.shape[1]
        positions = torch.arange(frames, device=latents.device, dtype=torch.float32)[:, None]
        half = self.config.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=latents.device) / half)
        angle = positions * freqs  # (T, W/2)
        pos = torch.cat([angle.sin(), angle.cos()], dim=-1)  # (T, W)
        h = self.input(latents) + pos.to(latents.dtype)
        causal = torch.ones(frames, frames, dtype=torch.bool, device=latents.device).triu(1)
        padding = None if mask is None else ~mask.bool()
        h = self.blocks(h, mask=causal, src_key_padding_mask=padding, is_causal=True)
        return self.norm(h)

    def forward(
        self,
        latents: torch.Tensor,
        mask: torch.Tensor,
        text: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """RQ-MTP (+ text) loss of normalised latents ``(B, T, D)``; ``text (B, text_dim)`` with ``has_text (B,)``.
        The training loss is the module's forward, so data-parallel training syncs its gradients."""
        h = self.features(latents, mask)
        codes = self.targets(latents)  # (B, T)
        terms = []
        for k, head in enumerate(self.heads, start=1):
            if h.shape[1] <= k:
                continue
            valid = (mask[:, :-k] & mask[:, k:]).reshape(-1)
            if not bool(valid.any()):
                continue
            logits = head(h[:, :-k]).reshape(-1, self.config.codebook_size)
            terms.append(F.cross_entropy(logits[valid], codes[:, k:].reshape(-1)[valid]))
        if not terms:
            raise LoditError(f"clips of {h.shape[1]} frames are too short for RQ-MTP; use crops of at least 2 frames")
        parts = {"rq_mtp": torch.stack(terms).mean()}
        total = parts["rq_mtp"]
        if self.text_head is not None and text is not None and has_text is not None and bool(has_text.any()):
            w = mask.to(h.dtype)[..., None]
            pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
            cosine = F.cosine_similarity(self.text_head(pooled[has_text]), text[has_text].to(h.dtype), dim=-1)
            parts["text"] = (1 - cosine).mean()
            total = total + self.config.text_weight * parts["text"]
        return total, parts

    @torch.no_grad()
    def accuracy(self, latents: torch.Tensor, mask: torch.Tensor) -> float:
        """Top-1 accuracy of head 1 on valid frames (a training diagnostic)."""
        h = self.features(latents, mask)
        codes = self.targets(latents)
        valid = mask[:, :-1] & mask[:, 1:]
        return float((self.heads[0](h[:, :-1]).argmax(-1) == codes[:, 1:])[valid].float().mean())


def load_f3(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> F3Encoder:
    """A trained F3 encoder folder (``config.json`` + ``model.safetensors``), in eval mode."""
    data = read_keyed_config(folder, CONFIG_KEY, "an F3 encoder", "pass the final/ folder of a `lodit train-repr` run")
    model = F3Encoder(from_dict(F3Config, data[CONFIG_KEY], source=str(Path(folder) / "config.json")))
    state = read_weights(Path(folder) / "model.safetensors")
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise LoditError(f"{folder}: weights do not fit its config.json (e.g. {missing[0]} missing)")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


class FeatureFrameEncoder:
    """An F3 folder as ``lodit encode --features`` runs it: audio -> its autoencoder's latents ->
    normalised with the training statistics -> features ``(B, T, width)``."""

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu"):
        self.folder = Path(folder).resolve()
        self.model = load_f3(self.folder, map_location=device)
        if not self.model.config.autoencoder:
            raise LoditError(
                f"{self.folder}: the encoder does not name its autoencoder (f3_repr.autoencoder); retrain it "
                "from a cache made by `lodit encode --tokenizer`"
            )
        self.autoencoder = Tokenizer.from_pretrained(self.model.config.autoencoder, map_location=device)
        self.sample_rate = self.autoencoder.sample_rate

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        latents = self.autoencoder.encode(wav).float()
        return self.model.features(self.model.normalize(latents))

    def producer(self) -> dict[str, Any]:
        return {
            "name": self.model.config.name,
            "config_hash": config_hash(self.model.config),
            "latent_dim": self.model.config.width,
            "frame_rate": self.autoencoder.latent_rate,
            "sample_rate": self.sample_rate,
            "content": "f3_features",
            "autoencoder": self.autoencoder.identity(),
            "checkpoint": str(self.folder),
        }
