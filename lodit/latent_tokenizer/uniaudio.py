"""UniAudio-Token: a discrete single-codebook tokenizer on a Whisper-style encoder with SAE gating
and SAP supervision (ANCHORS.md; the paper's recipe where it says, lodit's choices where it is silent).

Pipeline (:class:`UniAudioToken`)::

    16 kHz audio -> frozen Whisper encoder (hub name / local folder / offline bundle), ONE pass
      -> hidden states of the deep layer (sae.deep_layer, default the final output) and of the
         shallow layer (sae.shallow_layer, the paper's 3), each average-pooled 50 -> 25 Hz
      -> SAE: H = LayerNorm(H_deep + gamma * adapter(H_shallow)), gamma = sigmoid(gate([H_deep; H_shallow]))
      -> (a Linear to codebook.dim when it differs from the encoder width)
      -> single-codebook EMA VQ (straight-through, commitment, dead-code restart) -> token ids (B, T)
      -> SAP heads on the quantised frames (training only)

What trains and what stays frozen. The reference configuration fine-tunes the Whisper encoder at a
learning rate 20x below the rest (1e-5 vs 2e-4) and inserts the quantiser inside the encoder
stack. Here the quantiser follows the encoder, and ``trainable_layers`` sets how many top blocks
(plus the final LayerNorm) are fine-tuned (:class:`TopBlocks`, initialised from the encoder, at
``trainable_lr_scale`` of the run's learning rate); the blocks below stay frozen, and their output
(the fine-tuned blocks' input) and the shallow layer are computed once per clip and cached, which
is what makes CPU training possible (``0``: the whole encoder frozen, the CPU configs' choice). The
SAE, the optional projection and the SAP heads train by gradient, the codebook by EMA. Pooling
happens on the frozen part's output frames (the reference pools at the encoder's input).

The frozen encoder is :class:`LayeredWhisperEncoder`, lodit's Whisper semantic encoder returning
the deep and shallow layers side by side, ``(B, T, 2 * D)`` (deep first), so the existing teacher
feature cache (:mod:`lodit.latent_tokenizer.teacher_features`) stores both from one pass.

A trained model is a folder with ``config.json`` (:class:`UniAudioTokenConfig`, with the SAP
vocabularies read from the training manifest and, after the decoder stage, the decoder's config)
and ``model.safetensors``; :func:`load_uniaudio` reads it. The token decoder that turns tokens
back into audio lives in :mod:`lodit.dit.token_decoder` (it is a DiT).

May import: torch, ``lodit.data``, ``lodit.training``, the semantic encoder, SAE, VQ and SAP modules.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrize import is_parametrized, register_parametrization

from lodit.config import config_hash, from_dict
from lodit.errors import LoditError
from lodit.latent_tokenizer.sae import SAE, SAEConfig, mean_gate
from lodit.latent_tokenizer.sap import SAPConfig, SAPHeads, SAPVocabulary
from lodit.latent_tokenizer.semantic import (
    SAMPLE_RATE,
    SemanticEncoderConfig,
    WhisperSemanticEncoder,
    num_frames,
    resolve_layer,
)
from lodit.latent_tokenizer.vq import CodebookConfig, EMAVectorQuantizer
from lodit.training.checkpoint import read_weights as read_checkpoint_weights

CONFIG_KEY = "uniaudio"  # the top-level key that marks a UniAudio-Token config (YAML or config.json)
DECODER_KEY = "decoder"  # config.json key of the token decoder's config (after the decoder stage)


@dataclass
class UniAudioTokenConfig:
    """The model: ``uniaudio:`` in a training config, ``config.json`` of a trained folder."""

    name: str = "uniaudio_token"
    teacher: SemanticEncoderConfig = field(default_factory=SemanticEncoderConfig)
    teacher_dim: int = 384  # the encoder's width (checked when the encoder loads; lets weights build without it)
    teacher_layers: int = 4  # the encoder's block count (to resolve negative layer indices without loading it)
    # Top encoder blocks fine-tuned with the rest (initialised from the encoder; 0 = the whole encoder
    # frozen). The blocks below stay frozen and cached, so their output is the deep stream's input.
    trainable_layers: int = 0
    teacher_heads: int = 6  # attention heads and MLP width of the encoder's blocks (needed for trainable_layers)
    teacher_ffn: int = 1536
    # The fine-tuned blocks' learning rate as a fraction of the run's (the reference trains its encoder
    # at 1e-5 against 2e-4 for the rest: 0.05). Done by parametrising each weight as lr_scale * w, which
    # makes Adam's steps on the weight lr_scale times smaller.
    trainable_lr_scale: float = 1.0
    sae: SAEConfig = field(default_factory=SAEConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    sap: SAPConfig = field(default_factory=SAPConfig)
    vocabulary: SAPVocabulary = field(default_factory=SAPVocabulary)  # filled from the training manifest

    def __post_init__(self) -> None:
        if self.teacher.name != "whisper":
            raise ValueError(
                f"uniaudio.teacher.name must be 'whisper' (a Whisper-style encoder), got {self.teacher.name!r}"
            )
        if self.teacher.layer != -1:
            raise ValueError(
                "uniaudio.teacher.layer is not used: sae.deep_layer and sae.shallow_layer pick the layers; "
                "leave it at -1"
            )
        if self.teacher_dim < 1 or self.teacher_layers < 1:
            raise ValueError("uniaudio.teacher_dim and teacher_layers must be at least 1")
        for key in ("deep_layer", "shallow_layer"):
            index = getattr(self.sae, key)
            if not -self.teacher_layers - 1 <= index <= self.teacher_layers:
                raise ValueError(f"uniaudio.sae.{key}={index} is outside this {self.teacher_layers}-layer encoder")
        if not 0 <= self.trainable_layers <= self.teacher_layers:
            raise ValueError(f"uniaudio.trainable_layers={self.trainable_layers} must be in 0..{self.teacher_layers}")
        if self.trainable_layers:
            shallow = resolve_layer(self.sae.shallow_layer, self.teacher_layers)
            if self.sae.deep_layer != -1 or shallow is None or shallow > self.teacher_layers - self.trainable_layers:
                raise ValueError(
                    f"uniaudio.trainable_layers={self.trainable_layers} fine-tunes the top blocks: "
                    "the deep stream must be the final output (sae.deep_layer=-1) and the shallow layer one of "
                    "the frozen blocks "
                    f"(sae.shallow_layer <= {self.teacher_layers - self.trainable_layers})"
                )
            if self.teacher_heads < 1 or self.teacher_ffn < 1 or self.teacher_dim % self.teacher_heads:
                raise ValueError("uniaudio.teacher_heads must divide teacher_dim and teacher_ffn be >= 1")
        if not 0 < self.trainable_lr_scale <= 1:
            raise ValueError(f"uniaudio.trainable_lr_scale must be in (0, 1], got {self.trainable_lr_scale}")

    @property
    def code_dim(self) -> int:
        return self.codebook.dim or self.teacher_dim

    @property
    def layers(self) -> tuple[int | None, int | None]:
        """``hidden_states`` indices of the (deep, shallow) streams (None = the final output)."""
        return (
            resolve_layer(self.teacher_deep_layer, self.teacher_layers),
            resolve_layer(self.sae.shallow_layer, self.teacher_layers),
        )

    @property
    def teacher_deep_layer(self) -> int:
        """The layer the frozen encoder gives for the deep stream: ``sae.deep_layer``, or, with
        trainable top blocks, the output of the last frozen block (their input)."""
        return self.teacher_layers - self.trainable_layers if self.trainable_layers else self.sae.deep_layer


@dataclass
class TokenDecoderConfig:
    """``decoder:`` in a UniAudio-Token training config: the token decoder (:mod:`lodit.dit.token_decoder`),
    a flow-matching DiT generating the latents of the lodit autoencoder ``autoencoder``."""

    autoencoder: str = ""  # lodit tokenizer folder whose latents are generated; "" = no decoder stage
    token_dim: int = 64
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    prompt: bool = True  # condition on a reference clip's mean latent
    steps: int = 16  # Euler steps when generating
    segment_frames: int = 100  # training crops (frames of tokens and latents)

    def __post_init__(self) -> None:
        if min(self.token_dim, self.width, self.depth, self.heads, self.steps, self.segment_frames) < 1:
            raise ValueError("decoder sizes (token_dim, width, depth, heads), steps and segment_frames must be >= 1")
        if self.width % self.heads:
            raise ValueError(f"decoder.width={self.width} must be a multiple of decoder.heads={self.heads}")


class LayeredWhisperEncoder(WhisperSemanticEncoder):
    """The frozen Whisper encoder giving two layers side by side: ``(B, T, 2 * D)``, deep then shallow,
    both pooled to ``target_rate``. :meth:`identity` names both layers, so caches keep them apart."""

    def __init__(self, config: SemanticEncoderConfig, deep_layer: int, shallow_layer: int):
        super().__init__(config)
        layers = self.encoder.config.encoder_layers
        self.layer_indices = [resolve_layer(deep_layer, layers), resolve_layer(shallow_layer, layers)]
        self.layer_names = (deep_layer, shallow_layer)
        self.stream_dim = self.dim
        self.num_layers = layers
        self.dim = 2 * self.stream_dim

    def native_features(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.hidden_states(wav, self.layer_indices), dim=-1)  # (B, N, 2D)

    def identity(self) -> str:
        return f"{super().identity()}|layers={self.layer_names[0]},{self.layer_names[1]}"


def build_teacher(config: UniAudioTokenConfig) -> LayeredWhisperEncoder:
    """The frozen two-layer encoder of ``config``, checked against ``teacher_dim``/``teacher_layers``."""
    teacher = LayeredWhisperEncoder(config.teacher, config.teacher_deep_layer, config.sae.shallow_layer)
    if teacher.stream_dim != config.teacher_dim or teacher.num_layers != config.teacher_layers:
        raise LoditError(
            f"uniaudio.teacher.model={config.teacher.model!r} is {teacher.num_layers} layers x {teacher.stream_dim} "
            f"wide, but the config says teacher_layers={config.teacher_layers}, teacher_dim={config.teacher_dim}; "
            f"set uniaudio.teacher_layers={teacher.num_layers} uniaudio.teacher_dim={teacher.stream_dim}"
        )
    return teacher


class _Scaled(nn.Module):
    """``weight = scale * stored``: Adam's steps on ``stored`` are the same size whatever its scale,
    so the weight moves ``scale`` times slower (a per-block learning rate on the shared trainer)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored * self.scale

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.scale


class TopBlocks(nn.Module):
    """The encoder's top ``trainable_layers`` blocks and its final LayerNorm, fine-tuned: the
    output of the last frozen block ``(B, T, D)`` -> the deep stream. :meth:`load_from` copies the
    pretrained weights in (done once when training starts). Padding frames are masked as keys."""

    def __init__(self, config: UniAudioTokenConfig):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

        whisper = WhisperConfig(
            d_model=config.teacher_dim,
            encoder_attention_heads=config.teacher_heads,
            encoder_ffn_dim=config.teacher_ffn,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )
        whisper._attn_implementation = "sdpa"
        self.first = config.teacher_layers - config.trainable_layers
        self.layers = nn.ModuleList(WhisperEncoderLayer(whisper) for _ in range(config.trainable_layers))
        self.layer_norm = nn.LayerNorm(config.teacher_dim)
        if config.trainable_lr_scale != 1.0:
            weights = [
                (module, name) for module in self.modules() for name, _ in module.named_parameters(recurse=False)
            ]
            for module, name in weights:
                register_parametrization(module, name, _Scaled(config.trainable_lr_scale))

    @torch.no_grad()
    def load_from(self, encoder: nn.Module) -> None:
        """Copy the top blocks and the final norm of a ``transformers`` ``WhisperEncoder``."""
        sources = [*encoder.layers[self.first :], encoder.layer_norm]
        for target, source in zip([*self.layers, self.layer_norm], sources):
            for name, value in source.named_parameters():
                owner, _, leaf = name.rpartition(".")
                module = target.get_submodule(owner) if owner else target
                if is_parametrized(module, leaf):
                    setattr(module, leaf, value.detach().clone())  # stores value / scale
                else:
                    getattr(module, leaf).copy_(value)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attention = None
        if mask is not None and not bool(mask.all()):
            blocked = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
            blocked = blocked.masked_fill(~mask.bool(), torch.finfo(hidden.dtype).min)
            attention = blocked[:, None, None, :].expand(-1, 1, hidden.shape[1], -1)  # (B, 1, T, T)
        for layer in self.layers:
            hidden = layer(hidden, attention)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.layer_norm(hidden)


@dataclass
class UniAudioOutput:
    ids: torch.Tensor  # (B, T) token ids
    quantized: torch.Tensor  # (B, T, code_dim) straight-through codes
    fused: torch.Tensor  # (B, T, code_dim) the SAE output before quantisation
    gate: torch.Tensor  # scalar: mean SAE gate over valid frames (0 with the SAE off)
    commitment_loss: torch.Tensor
    stats: dict[str, float]


class UniAudioToken(nn.Module):
    """SAE + single-codebook VQ + SAP heads over the frozen encoder's two layers.

    The encoder is not a submodule (it is frozen, shared and usually read from a cache); pass its
    features to :meth:`forward`, or use :meth:`tokens` with an encoder from :func:`build_teacher`.
    """

    def __init__(self, config: UniAudioTokenConfig):
        super().__init__()
        self.config = config
        dim = config.teacher_dim
        self.top = TopBlocks(config) if config.trainable_layers else None
        self.sae = SAE.from_config(config.sae, dim)
        self.project = nn.Linear(dim, config.code_dim) if config.code_dim != dim else nn.Identity()
        self.quantizer = EMAVectorQuantizer.from_config(config.codebook, config.code_dim)
        self.sap = SAPHeads(config.code_dim, config.sap, config.vocabulary)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook.size

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> UniAudioOutput:
        """``features (B, T, 2 * teacher_dim)`` (deep then shallow, as the layered encoder gives them)."""
        dim = self.config.teacher_dim
        if features.shape[-1] != 2 * dim:
            raise LoditError(
                f"UniAudio-Token expects (B, T, {2 * dim}) two-layer features, got {tuple(features.shape)}; "
                "were they cached from another encoder?"
            )
        deep, shallow = features[..., :dim], features[..., dim:]
        if self.top is not None:
            deep = self.top(deep, mask)
        fused, gamma = self.sae(deep, shallow)
        fused = self.project(fused)
        vq = self.quantizer(fused, mask)
        return UniAudioOutput(vq.ids, vq.quantized, fused, mean_gate(gamma, mask), vq.commitment_loss, vq.stats)

    @torch.no_grad()
    def tokens(self, teacher: LayeredWhisperEncoder, wav: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` of 16 kHz audio ``(B, S)`` or ``(B, 1, S)``; ``T = ceil(S * 25 / 16000)``."""
        was_training = self.training
        self.eval()
        try:
            features = teacher(wav).to(next(self.parameters()).device)
            return self(features).ids
        finally:
            self.train(was_training)

    def identity(self) -> dict[str, Any]:
        """What a token cache records: the model and its codebook (size and content hash)."""
        return {
            "name": self.config.name,
            "codebook_size": self.codebook_size,
            "codebook_hash": self.quantizer.codebook_hash(),
            "frame_rate": self.config.teacher.target_rate,
        }

    def frames_for(self, num_samples: int) -> int:
        return num_frames(num_samples, self.config.teacher.target_rate)


def read_keyed_config(folder: str | os.PathLike, key: str, what: str, hint: str) -> dict[str, Any]:
    """``config.json`` of a model folder whose top level must hold ``key`` (LoditError naming
    ``what`` the folder should be and ``hint``, how to get one, otherwise)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LoditError(f"{folder}: not {what} folder (no config.json); {hint}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LoditError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or key not in data:
        raise LoditError(f"{path}: not {what} folder (no {key!r} key); {hint}")
    return data


def read_folder_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a UniAudio-Token folder as a mapping (LoditError when it is not one)."""
    return read_keyed_config(
        folder,
        CONFIG_KEY,
        "a UniAudio-Token",
        "pass the final/ folder of a `lodit train-tokenizer` run with a UniAudio-Token config",
    )


def is_uniaudio_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / "config.json"
    try:
        return path.is_file() and CONFIG_KEY in json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, TypeError):
        return False


def read_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of a UniAudio-Token folder (``tokenizer.*`` and maybe ``decoder.*``)."""
    return read_checkpoint_weights(Path(folder) / "model.safetensors")


def load_uniaudio(folder: str | os.PathLike, map_location: str | torch.device = "cpu") -> UniAudioToken:
    """The tokenizer part of a UniAudio-Token folder, in eval mode."""
    data = read_folder_config(folder)
    config = from_dict(UniAudioTokenConfig, data[CONFIG_KEY], source=str(Path(folder) / "config.json"))
    model = UniAudioToken(config)
    state = {k[len("tokenizer.") :]: v for k, v in read_weights(folder).items() if k.startswith("tokenizer.")}
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise LoditError(
            f"{folder}: weights do not fit its config.json ({len(missing)} missing, e.g. {missing[0]}); "
            "use the config.json saved with these weights"
        )
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


class TokenFrameEncoder:
    """A UniAudio-Token folder as ``lodit encode --tokens`` uses it: ``encode(wav (B, 1, S))`` gives
    the token ids as one float32 channel ``(B, T, 1)`` (exact below 2**24), and :meth:`producer`
    names the model and its codebook (size and content hash), so a token cache can't be read
    against another codebook."""

    sample_rate = SAMPLE_RATE

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu"):
        self.folder = Path(folder).resolve()
        self.model = load_uniaudio(self.folder, map_location=device)
        self.teacher = build_teacher(self.model.config).to(device)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.tokens(self.teacher, wav)[..., None].float()  # (B, T, 1)

    def producer(self) -> dict[str, Any]:
        identity = self.model.identity()
        return {
            **identity,
            "config_hash": config_hash(self.model.config),
            "latent_dim": 1,
            "sample_rate": SAMPLE_RATE,
            "content": "token_ids",
            "checkpoint": str(self.folder),
        }
