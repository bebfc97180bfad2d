"""Tokenizer training losses: spectral reconstruction, hinge GAN, feature matching, and their weighting.

Owns:

* :class:`MultiResolutionMelLoss` — mean over resolutions of L1 between log-mel spectrograms;
* :class:`MultiResolutionSTFTLoss` — mean over resolutions of spectral convergence
  ``||  |Y| - |X|  ||_F / ||Y||_F`` plus L1 between log magnitudes;
* :func:`hinge_discriminator_loss`, :func:`hinge_generator_loss`, :func:`feature_matching_loss` —
  each **averaged over sub-discriminators**, so a loss weight means the same whatever
  discriminators are configured;
* :class:`TokenizerLossConfig` and :class:`TokenizerLoss`, which weight everything into the
  generator total (defaults are LoSATok's: 45·mel + 1·adversarial + 1·feature matching, KL weight
  from the bottleneck config) and switch the adversarial terms on at ``adversarial_start_step``.

Conventions: ``real`` is the target audio, ``fake`` the reconstruction, both ``(B, 1, S)``.
Logits and features come from :class:`~lodit.latent_tokenizer.discriminators.Discriminators`:
a list of logit tensors and a list (per sub-discriminator) of lists of feature maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError
from lodit.latent_tokenizer.frontend import LogMel, stft_magnitude

if TYPE_CHECKING:
    from lodit.latent_tokenizer.tokenizer import TokenizerConfig


@dataclass
class TokenizerLossConfig:
    mel: float = 45.0  # multi-resolution log-mel L1
    stft: float = 1.0  # multi-resolution STFT (spectral convergence + log magnitude)
    adversarial: float = 1.0  # hinge generator loss
    feature_matching: float = 1.0
    adversarial_start_step: int = 0  # GAN terms (and discriminator updates) from this step on
    # weights of named losses the model reports (TokenizerOutput.losses) besides the bottleneck's
    # "kl", whose weight is tokenizer.bottleneck.kl_weight; e.g. {"semantic_high": 45.0}
    model_losses: dict[str, float] = field(default_factory=dict)
    # (n_fft, hop_length, n_mels) per resolution
    mel_resolutions: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(256, 64, 32), (512, 128, 64), (1024, 256, 80), (2048, 512, 128)]
    )
    # (n_fft, hop_length) per resolution; the window is n_fft long
    stft_resolutions: list[tuple[int, int]] = field(default_factory=lambda: [(512, 128), (1024, 256), (2048, 512)])

    def __post_init__(self):
        if self.adversarial_start_step < 0:
            raise ValueError(f"loss.adversarial_start_step must be >= 0, got {self.adversarial_start_step}")
        if not self.mel_resolutions and self.mel:
            raise ValueError("loss.mel_resolutions is empty but loss.mel is non-zero")
        if not self.stft_resolutions and self.stft:
            raise ValueError("loss.stft_resolutions is empty but loss.stft is non-zero")


class MultiResolutionMelLoss(nn.Module):
    """Mean over ``resolutions`` of ``mean |log_mel(fake) - log_mel(real)|``."""

    def __init__(self, sample_rate: int, resolutions: Sequence[tuple[int, int, int]], floor: float = 1e-5):
        super().__init__()
        self.mels = nn.ModuleList(
            LogMel(sample_rate, n_fft, hop, n_mels, floor=floor) for n_fft, hop, n_mels in resolutions
        )

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        losses = [F.l1_loss(mel(fake), mel(real)) for mel in self.mels]
        return torch.stack(losses).mean()


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over ``resolutions`` of spectral convergence + log-magnitude L1 (floor ``1e-5``)."""

    def __init__(self, resolutions: Sequence[tuple[int, int]], floor: float = 1e-5):
        super().__init__()
        self.resolutions = [tuple(r) for r in resolutions]
        self.floor = floor

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        losses = []
        for n_fft, hop in self.resolutions:
            fake_mag = stft_magnitude(fake, n_fft, hop)  # (B, F, frames)
            real_mag = stft_magnitude(real, n_fft, hop)
            convergence = torch.linalg.vector_norm(real_mag - fake_mag) / torch.linalg.vector_norm(real_mag).clamp(
                min=self.floor
            )
            log_magnitude = F.l1_loss(fake_mag.clamp(min=self.floor).log(), real_mag.clamp(min=self.floor).log())
            losses.append(convergence + log_magnitude)
        return torch.stack(losses).mean()


def hinge_discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean_k [ mean(relu(1 - D_k(real))) + mean(relu(1 + D_k(fake))) ]`` over sub-discriminators ``k``."""
    _check_pairs(real_logits, fake_logits, "logits")
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def hinge_generator_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean_k mean(relu(1 - D_k(fake)))`` over sub-discriminators ``k``."""
    if not fake_logits:
        raise ValueError("hinge_generator_loss needs at least one discriminator output")
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """``mean_k sum_l mean|F_kl(real) - F_kl(fake)|``: L1 per feature map, summed over the layers of a
    sub-discriminator, averaged over sub-discriminators. Real features are detached."""
    _check_pairs(real_features, fake_features, "feature lists")
    per_disc = []
    for reals, fakes in zip(real_features, fake_features):
        _check_pairs(reals, fakes, "feature maps")
        per_disc.append(sum(F.l1_loss(f, r.detach()) for r, f in zip(reals, fakes)))
    return torch.stack(per_disc).mean()


def _check_pairs(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"real and fake {what} must be non-empty and the same length, got {len(a)} and {len(b)}")


class TokenizerLoss(nn.Module):
    """Weights the reconstruction, model (e.g. KL) and adversarial losses into one generator total.

    ``model_loss_weights`` maps each named loss the model reports to its weight; a reported loss
    without a weight is an error (a term must never be silently dropped or silently weighted 1).
    """

    def __init__(self, cfg: TokenizerLossConfig, sample_rate: int, model_loss_weights: Mapping[str, float]):
        super().__init__()
        self.cfg = cfg
        self.model_loss_weights = dict(model_loss_weights)
        self.mel = MultiResolutionMelLoss(sample_rate, cfg.mel_resolutions) if cfg.mel else None
        self.stft = MultiResolutionSTFTLoss(cfg.stft_resolutions) if cfg.stft else None

    @classmethod
    def from_configs(cls, cfg: TokenizerLossConfig, tokenizer_cfg: TokenizerConfig) -> TokenizerLoss:
        """Weights: ``kl`` from ``tokenizer_cfg.bottleneck.kl_weight``, others from ``cfg.model_losses``."""
        weights = {"kl": tokenizer_cfg.bottleneck.kl_weight, **cfg.model_losses}
        return cls(cfg, tokenizer_cfg.sample_rate, weights)

    def adversarial_active(self, step: int) -> bool:
        """Whether step ``step`` trains the discriminators and adds the GAN terms."""
        return step >= self.cfg.adversarial_start_step and bool(self.cfg.adversarial or self.cfg.feature_matching)

    def generator_loss(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        model_losses: Mapping[str, torch.Tensor] | None = None,
        fake_logits: Sequence[torch.Tensor] | None = None,
        real_features: Sequence[Sequence[torch.Tensor]] | None = None,
        fake_features: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and every unweighted term (detached, for logging).

        Pass ``fake_logits`` (and both feature lists) only on adversarial steps.
        """
        terms: dict[str, torch.Tensor] = {}
        total = fake.new_zeros(())
        if self.mel is not None:
            terms["mel"] = self.mel(fake, real)
            total = total + self.cfg.mel * terms["mel"]
        if self.stft is not None:
            terms["stft"] = self.stft(fake, real)
            total = total + self.cfg.stft * terms["stft"]
        for name, value in (model_losses or {}).items():
            if name not in self.model_loss_weights:
                raise LoditError(f"the model reports a loss {name!r} with no weight; set loss.model_losses.{name}")
            terms[name] = value
            total = total + self.model_loss_weights[name] * value
        if fake_logits is not None:
            terms["adversarial"] = hinge_generator_loss(fake_logits)
            total = total + self.cfg.adversarial * terms["adversarial"]
            if real_features is not None and fake_features is not None:
                terms["feature_matching"] = feature_matching_loss(real_features, fake_features)
                total = total + self.cfg.feature_matching * terms["feature_matching"]
        return total, {k: v.detach() for k, v in terms.items()}
