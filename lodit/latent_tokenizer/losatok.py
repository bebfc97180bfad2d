"""LoSATok's semantic-acoustic encoder (the ``losatok`` entry of
:data:`lodit.latent_tokenizer.tokenizer.ENCODERS`) and its DashengTokenizer-like 1280-dim counterpart.

Forward pass (widths from :class:`~lodit.latent_tokenizer.losatok_config.SemanticBranchConfig`;
sizes in brackets are LoSATok's)::

    wav --LogMel (n_mels 128, n_fft 1024, hop 160: 100 Hz)--> (B, n_mels, T * P)
        --Conv2d(1, d_high, kernel=(n_mels, P), stride=(n_mels, P))--> LayerNorm --> z_a_high (B, T, d_high)
    z_a_high --Linear(d_high -> low_dim)--> z_a_low (B, T, low_dim)
    wav --frozen teacher--> z_s_high (B, T, teacher_dim) --frozen SemBo.compress--> z_s_low (B, T, low_dim)
    latent_level low:  encoder output u = z_a_low + z_s_low   (the tokenizer's bottleneck follows: vae / noise_norm)
    latent_level high: encoder output z_a_high                (the unified embedding; no SemBo)
    latent_level fused_high: encoder output z_a_high + z_s_high (DashengTokenizer-like fusion; d_high = teacher_dim)

``P = tokenizer hop / mel_hop`` mel frames per latent frame (640 / 160 = 4 at 25 Hz).

Dual-level semantic supervision, reported unweighted in ``EncoderOutput.losses`` (weighted by
``loss.model_losses``): ``semantic_high = L_H = MSE(head(z_a_high), sg(z_s_high))`` and
``semantic_low = L_L = MSE(z_a_low, sg(z_s_low))``, picked by ``semantic_loss_mode``. ``head`` is
the identity when ``teacher_dim == d_high`` and otherwise a learned ``Linear(d_high ->
teacher_dim)`` (``teacher_proj``, built only when ``L_H`` is on). The projection sits on the
student side on purpose: a learned map applied to the teacher's features would either receive no
gradient (behind the stop-gradient) or, in front of it, could shrink the target towards a trivial
one; a student-side head keeps the target fixed. It serves ``L_H`` only: fusion and ``L_L`` use
the SemBo code, which is made from the teacher's own features.

Frozen parts:

* the teacher (:class:`~lodit.latent_tokenizer.semantic.SemanticEncoder`) is **not** a submodule:
  it is built on first use, outside the module tree, so it is in no ``state_dict``, optimizer or
  EMA, a tokenizer can be loaded and decode without it, and the tokenizer checkpoint stays small.
  It follows the input to its device. Precomputed features (e.g. from a
  :class:`~lodit.latent_tokenizer.feature_cache.FeatureCache`) can be passed as
  ``forward(wav, semantic_high=...)`` instead.
* SemBo is a frozen submodule (no gradients, always in eval mode): its weights are part of the
  tokenizer's ``state_dict``. A fresh model copies them from the ``sembo`` folder; a model whose
  weights are then loaded from a tokenizer checkpoint takes them from there, so a trained
  tokenizer does not need the SemBo folder any more. A missing folder, or one whose SemBo has
  other sizes, is therefore an error only when the SemBo is used without weights from either.

May import: torch, the other ``lodit.latent_tokenizer`` model modules, ``lodit.training.seed``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError
from lodit.latent_tokenizer.blocks import init_weights
from lodit.latent_tokenizer.encoder import EncoderConfig, EncoderOutput, MelEncoderInput, pad_to_hop
from lodit.latent_tokenizer.losatok_config import SemanticBranchConfig
from lodit.latent_tokenizer.semantic import SemanticEncoder, SemanticEncoderConfig, build_semantic_encoder
from lodit.latent_tokenizer.sembo import SemBo, SemBoConfig
from lodit.training.checkpoint import EMA_NAME, MODEL_NAME
from lodit.training.seed import rng_state, set_rng_state

KEY = "tokenizer.encoder.semantic"


class FrozenTeacher:
    """The frozen semantic teacher, built on first use and kept out of the module tree.

    A plain object (not an ``nn.Module``), so assigning it to a module registers nothing.
    """

    def __init__(self, config: SemanticEncoderConfig, expected_dim: int):
        self.config = config
        self.expected_dim = expected_dim
        self._encoder: SemanticEncoder | None = None

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def get(self) -> SemanticEncoder:
        """The teacher, loading it the first time (without disturbing the random streams: a
        resumed run that loads it later must draw the same numbers as an uninterrupted one)."""
        if self._encoder is None:
            saved = rng_state()
            try:
                encoder = build_semantic_encoder(self.config)
            finally:
                set_rng_state(saved)
            self.set(encoder)
        return self._encoder

    def set(self, encoder: SemanticEncoder) -> None:
        """Use an already built teacher (its width must be the configured ``teacher_dim``)."""
        if encoder.dim != self.expected_dim:
            raise LoditError(
                f"{KEY}.teacher gives {encoder.dim}-dim features but {KEY}.teacher_dim is {self.expected_dim}; "
                f"set {KEY}.teacher_dim={encoder.dim}"
            )
        self._encoder = encoder

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav (B, 1, S)`` -> teacher features ``(B, ceil(S / hop), teacher_dim)`` float32 on ``wav``'s device."""
        encoder = self.get()
        if encoder.device != wav.device:
            encoder.to(wav.device)
        return encoder(wav)


class LoSATokEncoder(nn.Module):
    """LoSATok's encoder (``latent_level: low``) or its 1280-dim counterpart (``high``); see the module docstring."""

    def __init__(self, cfg: EncoderConfig, *, sample_rate: int, hop_length: int, latent_dim: int):
        super().__init__()
        sem: SemanticBranchConfig = cfg.semantic
        self.config = sem
        self.hop_length = hop_length
        self.level = sem.latent_level

        # Acoustic branch.
        self.mel_input = MelEncoderInput(cfg, sample_rate=sample_rate, hop_length=hop_length,
                                         suggestion=f"LoSATok uses {hop_length // 4} (4 mel frames per latent frame)")
        self.patch = self.mel_input.frames_per_latent  # mel frames per latent frame
        self.patch_embed = nn.Conv2d(1, sem.d_high, kernel_size=(cfg.n_mels, self.patch),
                                     stride=(cfg.n_mels, self.patch))
        self.norm = nn.LayerNorm(sem.d_high, eps=sem.norm_eps)
        # L_H's head onto the teacher's width; none without L_H (an unused layer would stall data-parallel training)
        needs_head = sem.uses_high_loss and sem.teacher_dim != sem.d_high
        self.teacher_proj = nn.Linear(sem.d_high, sem.teacher_dim) if needs_head else None
        self.teacher = FrozenTeacher(sem.teacher, sem.teacher_dim)

        if self.level == "low":
            self.low_proj = nn.Linear(sem.d_high, sem.low_dim)
            self.sembo = SemBo(SemBoConfig(in_dim=sem.teacher_dim, hidden_dim=sem.sembo_hidden_dim,
                                           low_dim=sem.low_dim))
            self.out_dim = sem.low_dim
        else:
            self.low_proj = None
            self.sembo = None
            self.out_dim = sem.d_high

        init_weights(self)
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        # Why the SemBo has no trained weights yet (raised at first use); None once it has them.
        self._sembo_problem: str | None = None
        if self.sembo is not None:
            self.sembo.requires_grad_(False)
            self.sembo.eval()
            self._sembo_problem = self._load_sembo(sem)
            # Weights loaded from a tokenizer checkpoint replace the folder's (and make it unnecessary).
            self.sembo.register_load_state_dict_pre_hook(self._sembo_weights_given)

    # ------------------------------------------------------------------ frozen SemBo

    def _load_sembo(self, sem: SemanticBranchConfig) -> str | None:
        """Copy the weights of the SemBo folder; return why that was impossible, or None.

        A missing folder or one with other sizes is reported at first use rather than here: a
        tokenizer loaded from its checkpoint gets its SemBo from there and never needs the folder.
        """
        if not sem.sembo:
            raise LoditError(
                f"{KEY}.sembo is not set: LoSATok (latent_level low) needs a SemBo folder; "
                "train one with `lodit train-sembo` and pass its final/ folder"
            )
        folder = Path(sem.sembo).expanduser()
        if not folder.is_dir():
            return (
                f"{KEY}.sembo={sem.sembo}: SemBo folder not found; train one with `lodit train-sembo` or fix the path"
            )
        weights = EMA_NAME if (folder / f"{EMA_NAME}.safetensors").is_file() else MODEL_NAME
        trained = SemBo.from_pretrained(folder, weights=weights)
        expected = {
            "in_dim": ("teacher_dim", sem.teacher_dim),
            "hidden_dim": ("sembo_hidden_dim", sem.sembo_hidden_dim),
            "low_dim": ("low_dim", sem.low_dim),
        }
        for name, (key, value) in expected.items():
            found = getattr(trained.config, name)
            if found != value:
                return (f"{KEY}.sembo={sem.sembo}: that SemBo has {name}={found} but {KEY}.{key} is {value}; "
                        f"set {KEY}.{key}={found} or use a SemBo trained for these widths")
        self.sembo.load_state_dict(trained.state_dict())
        return None

    def _sembo_weights_given(self, module, state_dict, prefix, *args) -> None:
        if any(key.startswith(prefix) for key in state_dict):
            self._sembo_problem = None

    def train(self, mode: bool = True) -> LoSATokEncoder:
        super().train(mode)
        if self.sembo is not None:
            self.sembo.eval()  # frozen
        return self

    # ------------------------------------------------------------------ forward

    def acoustic(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav (B, 1, S)``, ``S`` a multiple of the hop -> ``z_a_high (B, S / hop, d_high)``."""
        mel = self.mel_input(wav)[:, None].to(self.patch_embed.weight.dtype)  # (B, 1, n_mels, T * P)
        patches = self.patch_embed(mel)  # (B, d_high, 1, T)
        return self.norm(patches[:, :, 0].transpose(1, 2))  # (B, T, d_high)

    def forward(self, wav: torch.Tensor, semantic_high: torch.Tensor | None = None) -> EncoderOutput:
        """``wav (B, 1, S)`` -> the bottleneck's input, the level tensors in ``aux`` and the
        selected semantic losses. ``semantic_high``: precomputed teacher features
        ``(B, ceil(S / hop), teacher_dim)``; computed by the teacher when None."""
        wav = pad_to_hop(wav, self.hop_length)
        z_a_high = self.acoustic(wav)  # (B, T, d_high)
        z_s_high = self._teacher_features(wav, semantic_high, z_a_high.shape[:2])
        z_s_high = z_s_high.to(device=z_a_high.device, dtype=z_a_high.dtype).detach()
        aux = {"z_a_high": z_a_high, "z_s_high": z_s_high}
        losses: dict[str, torch.Tensor] = {}
        if self.config.uses_high_loss:
            head = z_a_high if self.teacher_proj is None else self.teacher_proj(z_a_high)  # (B, T, teacher_dim)
            losses["semantic_high"] = F.mse_loss(head.float(), z_s_high.float())
        if self.level == "high":
            return EncoderOutput(latent=z_a_high, aux=aux, losses=losses)
        if self.level == "fused_high":
            return EncoderOutput(latent=z_a_high + z_s_high, aux=aux, losses=losses)

        if self._sembo_problem is not None:
            raise LoditError(self._sembo_problem)
        z_a_low = self.low_proj(z_a_high)  # (B, T, low_dim)
        with torch.no_grad():
            z_s_low = self.sembo.compress(z_s_high.to(self.sembo.compressor[0].weight.dtype)).to(z_a_low.dtype)
        aux.update(z_a_low=z_a_low, z_s_low=z_s_low)
        if self.config.uses_low_loss:
            losses["semantic_low"] = F.mse_loss(z_a_low.float(), z_s_low.float())
        return EncoderOutput(latent=z_a_low + z_s_low, aux=aux, losses=losses)

    def _teacher_features(
        self, wav: torch.Tensor, given: torch.Tensor | None, frames: tuple[int, int]
    ) -> torch.Tensor:
        if given is None:
            return self.teacher(wav)  # (B, T, teacher_dim)
        expected = (*frames, self.config.teacher_dim)
        if tuple(given.shape) != expected:
            raise LoditError(
                f"precomputed teacher features are shaped {tuple(given.shape)}, expected {expected} "
                "(batch, latent frames, teacher_dim); were they made by another teacher or for other audio?"
            )
        return given
