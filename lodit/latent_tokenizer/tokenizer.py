"""The waveform autoencoder tokenizer: config, model, and its pretrained-folder format.

Owns :class:`TokenizerConfig` and :class:`Tokenizer` (encoder -> bottleneck -> decoder, chosen by
name from :data:`ENCODERS`, :data:`~lodit.latent_tokenizer.bottleneck.BOTTLENECKS`
and :data:`~lodit.latent_tokenizer.decoder.DECODERS`).

A pretrained tokenizer is a folder with ``config.json`` and ``model.safetensors`` (and, from
training, ``ema.safetensors``, preferred by :meth:`Tokenizer.from_pretrained`). ``config.json`` is
either the :class:`TokenizerConfig` itself or a training config with it under a top-level
``tokenizer`` key; the weight files hold the :class:`Tokenizer`'s own ``state_dict`` (keys
``encoder.*``, ``bottleneck.*``, ``decoder.*``).

Lengths: ``T = ceil(S / hop_length)`` latent frames for ``S`` samples (the input is zero-padded at
the end to ``T * hop_length``); :meth:`Tokenizer.decode` returns ``T * hop_length`` samples, and
:meth:`Tokenizer.reconstruct` / :meth:`Tokenizer.forward` trim back to the input length.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lodit.config import config_hash, from_dict, to_dict
from lodit.errors import LoditError
from lodit.files import read_json, write_atomically, write_json
from lodit.latent_tokenizer.bottleneck import BottleneckConfig, build_bottleneck
from lodit.latent_tokenizer.decoder import DecoderConfig, build_decoder
from lodit.latent_tokenizer.encoder import ConvEncoder, EncoderConfig, MelConvNeXtEncoder, pad_to_hop
from lodit.latent_tokenizer.losatok import LoSATokEncoder
from lodit.registry import Registry

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


@dataclass
class TokenizerConfig:
    sample_rate: int = 16000
    latent_rate: float = 25.0  # latent frames per second; sample_rate / latent_rate must be an integer
    latent_dim: int = 128
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    name: str = "autoencoder"

    def __post_init__(self):
        if self.sample_rate <= 0 or self.latent_rate <= 0 or self.latent_dim <= 0:
            raise ValueError("sample_rate, latent_rate and latent_dim must be positive")
        hop = self.sample_rate / self.latent_rate
        if abs(hop - round(hop)) > 1e-6:
            raise ValueError(
                f"sample_rate / latent_rate = {self.sample_rate} / {self.latent_rate} = {hop:g} samples per frame "
                "must be an integer; change latent_rate"
            )
        if self.decoder.hop_length * self.decoder.upsample != self.hop_length:
            raise ValueError(
                f"decoder.hop_length * decoder.upsample = {self.decoder.hop_length} * {self.decoder.upsample} "
                f"must equal the tokenizer hop {self.hop_length}; "
                f"set decoder.hop_length to {self.hop_length // self.decoder.upsample}"
            )

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return round(self.sample_rate / self.latent_rate)


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, 1, S): reconstruction trimmed to the input length
    latent: torch.Tensor  # (B, T, D)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted encoder + bottleneck losses
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder extras
    stats: dict[str, float] = field(default_factory=dict)  # bottleneck statistics for logging


def as_batch(wav: torch.Tensor) -> torch.Tensor:
    """``(S,)``, ``(B, S)`` or ``(B, 1, S)`` -> ``(B, 1, S)``."""
    if wav.dim() == 1:
        return wav[None, None]
    if wav.dim() == 2:
        return wav[:, None]
    if wav.dim() == 3 and wav.shape[1] == 1:
        return wav
    raise LoditError(
        f"expected a mono waveform shaped (S,), (B, S) or (B, 1, S), got {tuple(wav.shape)}; mix down first"
    )


# The encoders by name; each is built as ``cls(cfg, sample_rate=..., hop_length=..., latent_dim=...)``.
ENCODERS: Registry[type[nn.Module]] = Registry("encoder")
ENCODERS.register("mel_convnext")(MelConvNeXtEncoder)
ENCODERS.register("conv")(ConvEncoder)
ENCODERS.register("losatok")(LoSATokEncoder)


def build_encoder(cfg: EncoderConfig, *, sample_rate: int, hop_length: int, latent_dim: int) -> nn.Module:
    """The encoder named by ``cfg.name``; its ``out_dim`` is what the bottleneck receives."""
    return ENCODERS.get(cfg.name)(cfg, sample_rate=sample_rate, hop_length=hop_length, latent_dim=latent_dim)


class Tokenizer(nn.Module):
    """Waveform autoencoder: ``encode`` audio to ``(B, T, latent_dim)`` frames, ``decode`` them back."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.encoder, sample_rate=config.sample_rate, hop_length=config.hop_length,
                                     latent_dim=config.latent_dim)
        self.bottleneck = build_bottleneck(config.bottleneck, self.encoder.out_dim, config.latent_dim)
        self.decoder = build_decoder(config.decoder, latent_dim=config.latent_dim)

    # ------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def latent_rate(self) -> float:
        return self.config.latent_rate

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Latent frames for a clip of ``num_samples`` samples: ``ceil(num_samples / hop_length)``."""
        return -(-num_samples // self.hop_length)

    def identity(self) -> dict[str, Any]:
        """What a latent cache records to refuse latents from a different tokenizer.

        ``weights_hash`` covers the weights as well as the config: two tokenizers trained from the
        same config with other seeds or steps give different latents for the same audio.
        """
        return {
            "name": self.config.name,
            "config_hash": config_hash(self.config),
            "latent_dim": self.latent_dim,
            "frame_rate": self.latent_rate,
            "sample_rate": self.sample_rate,
            "weights_hash": self.weights_hash(),
        }

    def weights_hash(self) -> str:
        """A short content hash of the current weights (every state-dict entry: name, dtype, shape, bytes)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy())
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------ model
    def forward(self, wav: torch.Tensor, **encoder_inputs: torch.Tensor) -> TokenizerOutput:
        """Training pass: stochastic bottleneck in training mode, deterministic in eval mode.

        ``encoder_inputs`` are passed to the encoder's ``forward`` as keyword arguments, e.g.
        LoSATok's precomputed teacher features ``semantic_high=(B, T, teacher_dim)``. Every encoder
        works without them; an encoder whose ``forward`` takes no such keyword rejects it (TypeError).
        """
        wav = as_batch(wav)
        num_samples = wav.shape[-1]
        encoded = self.encoder(pad_to_hop(wav, self.hop_length), **encoder_inputs)
        bottled = self.bottleneck(encoded.latent)
        recon = self.decoder(bottled.latent)[..., :num_samples]  # (B, 1, S)
        return TokenizerOutput(
            recon=recon,
            latent=bottled.latent,
            losses={**encoded.losses, **bottled.losses},
            aux=encoded.aux,
            stats=bottled.stats,
        )

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, **encoder_inputs: torch.Tensor) -> torch.Tensor:
        """``(S,) | (B, S) | (B, 1, S)`` audio at ``sample_rate`` -> ``(B, ceil(S / hop), latent_dim)``,
        always through the bottleneck's deterministic path (no noise, VAE mean). ``encoder_inputs``
        as in :meth:`forward` (e.g. cached teacher features)."""
        wav = as_batch(wav).to(self._device(), self._dtype())
        if wav.shape[-1] == 0:
            raise LoditError("cannot encode an empty waveform (0 samples)")
        inputs = {name: value.to(self._device()) for name, value in encoder_inputs.items()}
        encoded = self.encoder(pad_to_hop(wav, self.hop_length), **inputs)
        return self.bottleneck(encoded.latent, stochastic=False).latent

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """``(B, T, latent_dim)`` (or ``(T, latent_dim)``) -> ``(B, 1, T * hop_length)`` audio."""
        if latent.dim() == 2:
            latent = latent[None]
        if latent.dim() != 3 or latent.shape[-1] != self.latent_dim:
            raise LoditError(
                f"expected latents shaped (B, T, {self.latent_dim}), got {tuple(latent.shape)}; "
                "were they made by a different tokenizer?"
            )
        return self.decoder(latent.to(self._device(), self._dtype()))

    @torch.no_grad()
    def reconstruct(self, wav: torch.Tensor) -> torch.Tensor:
        """``decode(encode(wav))`` trimmed to the input length: ``(B, 1, S)``."""
        num_samples = as_batch(wav).shape[-1]
        return self.decode(self.encode(wav))[..., :num_samples]

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_config(
        cls, config: TokenizerConfig | Mapping[str, Any], *, source: str = "<config>", saved: bool = False
    ) -> Tokenizer:
        """A freshly initialised tokenizer from a config (dataclass or plain mapping; ``saved``: one
        lodit wrote, see :func:`lodit.config.from_dict`)."""
        if not isinstance(config, TokenizerConfig):
            config = from_dict(TokenizerConfig, config, source=source, saved=saved)
        return cls(config)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / CONFIG_FILE, to_dict(self.config))
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"format": "pt", "config_hash": config_hash(self.config)}
        write_atomically(directory / MODEL_FILE, lambda tmp: save_file(weights, str(tmp), metadata=metadata))
        return directory

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, use_ema: bool = True, map_location: str | torch.device = "cpu"
    ) -> Tokenizer:
        """Load a tokenizer folder (``ema.safetensors`` if present and ``use_ema``, else
        ``model.safetensors``); returned in eval mode on ``map_location``."""
        directory = Path(path)
        if not directory.is_dir():
            raise LoditError(
                f"{directory}: tokenizer folder not found; pass a folder holding {CONFIG_FILE} and {MODEL_FILE}"
            )
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise LoditError(f"{config_path}: missing; a tokenizer folder needs {CONFIG_FILE} next to its weights")
        data = read_json(config_path)
        if isinstance(data, dict) and isinstance(data.get("tokenizer"), dict):
            data = data["tokenizer"]  # a training config: the tokenizer section is the model config
        model = cls.from_config(data, source=str(config_path), saved=True)

        weights_path = directory / EMA_FILE if use_ema and (directory / EMA_FILE).is_file() else directory / MODEL_FILE
        if not weights_path.is_file():
            raise LoditError(f"{weights_path}: missing; the folder has no tokenizer weights")
        try:
            state = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise LoditError(f"{weights_path}: unreadable safetensors file ({' '.join(str(exc).split())})") from None
        _load_state(model, state, weights_path)
        return model.to(map_location).eval()


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)``, with any mismatch reported as one LoditError line."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            problems.append(
                f"{len(wrong_shape)} with other shapes "
                f"(e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
            )
        raise LoditError(
            f"{source}: weights do not fit the config next to them ({'; '.join(problems)}); "
            "use the config.json saved with these weights"
        )
    model.load_state_dict(state, strict=True)
