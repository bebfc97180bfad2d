"""The options of LoSATok's semantic-acoustic encoder (:class:`SemanticBranchConfig`).

Kept apart from the model code (:mod:`lodit.latent_tokenizer.losatok`) so that
:class:`~lodit.latent_tokenizer.encoder.EncoderConfig` can hold it as its ``semantic`` field
without importing any model: the encoder registry module imports this one, never the reverse.

In a tokenizer config it sits at ``tokenizer.encoder.semantic``; the acoustic front-end
(``n_mels``, ``n_fft``, ``mel_hop``, ``f_min``, ``f_max``) is read from ``tokenizer.encoder``
itself, as for the other encoders. Defaults are LoSATok's sizes (ANCHORS.md): a 1280-dim teacher
(Whisper-large-v3's encoder, pooled x2 to 25 Hz), ``D_high = 1280``, 128-dim low level.

May import: :mod:`lodit.latent_tokenizer.semantic` (for its config only), lodit's top-level helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lodit.latent_tokenizer.semantic import SemanticEncoderConfig

LatentLevel = Literal["low", "high", "fused_high"]
SemanticLossMode = Literal["both", "high_only", "low_only"]


def _default_teacher() -> SemanticEncoderConfig:
    return SemanticEncoderConfig(name="whisper", model="openai/whisper-large-v3")


@dataclass
class SemanticBranchConfig:
    """LoSATok's teacher, SemBo, widths and semantic supervision.

    ``latent_level``: ``low`` is LoSATok (the encoder hands ``z_a_low + z_s_low``, ``low_dim``
    wide, to the bottleneck); ``high`` is the DashengTokenizer-like counterpart (it hands
    ``z_a_high``, ``d_high`` wide: the unified acoustic-semantic embedding, supervised by
    ``L_H`` only, no SemBo); ``fused_high`` builds the latent as DashengTokenizer does, the
    acoustic embedding fused with the teacher's features at the high level, ``z_a_high +
    z_s_high`` (LoSATok's low-level fusion one level up; needs ``teacher_dim == d_high``; meant
    for a bottleneck without a KL term, e.g. ``identity``).

    ``teacher_dim`` is the teacher's feature width. It is a config value, checked against the
    teacher when the teacher loads, so that a tokenizer can be built (and decode) without
    loading its teacher. When it differs from ``d_high`` a learned ``Linear(d_high ->
    teacher_dim)`` maps ``z_a_high`` onto the teacher's space for ``L_H`` (on the student side,
    so the stop-gradient target stays the teacher's own features; see
    :mod:`lodit.latent_tokenizer.losatok`).

    ``sembo``: the folder of a SemBo trained by ``lodit train-sembo`` (its ``final/`` or a
    checkpoint), frozen here; its sizes must be ``teacher_dim -> sembo_hidden_dim -> low_dim``.
    Its weights become part of the tokenizer's weights, so a trained tokenizer no longer needs
    the folder.

    ``semantic_loss_mode``: which of ``L_H`` (``semantic_high``) and ``L_L`` (``semantic_low``)
    the encoder reports; their weights are ``loss.model_losses.semantic_high`` /
    ``semantic_low``. At ``latent_level: high`` only ``L_H`` exists (``both`` means ``L_H``).
    """

    latent_level: LatentLevel = "low"
    d_high: int = 1280  # width of the patch embedding z_a_high
    low_dim: int = 128  # width of z_a_low and z_s_low (the SemBo code width)
    teacher: SemanticEncoderConfig = field(default_factory=_default_teacher)
    teacher_dim: int = 1280  # the teacher's feature width (checked when it loads)
    sembo: str = ""  # SemBo folder from `lodit train-sembo` (latent_level: low)
    sembo_hidden_dim: int = 512  # SemBo's hidden width (must match the folder's)
    semantic_loss_mode: SemanticLossMode = "both"
    norm_eps: float = 1e-6  # LayerNorm epsilon after the patch embedding

    def __post_init__(self) -> None:
        for name in ("d_high", "low_dim", "teacher_dim", "sembo_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.latent_level == "fused_high" and self.teacher_dim != self.d_high:
            raise ValueError(
                f"latent_level=fused_high adds the teacher's features to z_a_high, so d_high ({self.d_high}) must "
                f"equal teacher_dim ({self.teacher_dim}); set d_high={self.teacher_dim}"
            )
        if self.latent_level != "low" and self.semantic_loss_mode == "low_only":
            raise ValueError(
                "semantic_loss_mode=low_only needs the low level, but latent_level is high; use high_only"
            )
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")

    @property
    def uses_high_loss(self) -> bool:
        return self.semantic_loss_mode in ("both", "high_only")

    @property
    def uses_low_loss(self) -> bool:
        return self.latent_level == "low" and self.semantic_loss_mode in ("both", "low_only")
