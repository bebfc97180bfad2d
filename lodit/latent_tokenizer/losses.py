"""Tokenizer training losses: spectral reconstruction, hinge GAN, feature matching, and their weighting.

Owns:

* :class:`MultiResolutionMelLoss` — mean over resolutions of L1 between log-mel spectrograms;
* :class:`MultiResolutionSTFTLoss` — mean over resolutions of spectral convergence
  ``||  |Y| - |X|  ||_F / ||Y||_F`` plus L1 between log magnitudes;
* :class:`FrameLevelLoss` — L1 between the log RMS of each frame (the output level, whatever the
  spectral detail);
* :class:`PhaseCoherenceLoss` — how far the reconstruction's STFT phase differences along
  frequency (group delay) and along time (instantaneous frequency), and optionally the phase
  itself, are from the target's (APNet's three phase terms, as a smooth ``1 - cos`` of the
  wrapped error), weighted by the target's magnitude;
* :func:`hinge_discriminator_loss`, :func:`hinge_generator_loss`, :func:`feature_matching_loss` —
  each **averaged over sub-discriminators**, so a loss weight means the same whatever
  discriminators are configured;
* :class:`TokenizerLossConfig` and :class:`TokenizerLoss`, which weight everything into the
  generator total (defaults are LoSATok's: 45·mel + 1·adversarial + 1·feature matching, KL weight
  from the bottleneck config) and switch the adversarial terms on at ``adversarial_start_step``.

Log floors. Both spectral losses take ``log(max(S, floor))``. With an absolute floor (1e-5) far
below the signal, a clip with digital silence (the built-in clicks and beeps: most bins sit at the
floor) makes a near-silent reconstruction cheaper than the true signal plus faint noise, so
training learns to be quiet. ``dynamic_range_db`` instead floors each example at its target's
peak minus that many dB, the same floor for target and reconstruction: what lies below the
floor is inaudible next to the peak and costs nothing either way.

Phase. Magnitude losses say nothing about phase, yet overlapping ISTFT frames with incoherent
phases cancel, which makes reconstructions quiet and rough. The phase terms teach coherence
directly: group delay and instantaneous frequency are differences, so they are learnable from a
mel-only encoder, while the absolute phase of a stationary tone is not (its weight defaults to 0).

Conventions: ``real`` is the target audio, ``fake`` the reconstruction, both ``(B, 1, S)``. Each
spectral loss is called on waveforms, or through ``compare`` on their :class:`Spectra`, which is
how :class:`TokenizerLoss` shares one STFT per resolution among all its terms.
Logits and features come from :class:`~lodit.latent_tokenizer.discriminators.Discriminators`:
a list of logit tensors and a list (per sub-discriminator) of lists of feature maps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError
from lodit.latent_tokenizer.frontend import LogMel, Spectra

if TYPE_CHECKING:
    from lodit.latent_tokenizer.tokenizer import TokenizerConfig


@dataclass
class TokenizerLossConfig:
    mel: float = 45.0  # multi-resolution log-mel L1
    stft: float = 1.0  # multi-resolution STFT (spectral convergence + log magnitude)
    adversarial: float = 1.0  # hinge generator loss
    feature_matching: float = 1.0
    adversarial_start_step: int = 0  # GAN terms (and discriminator updates) from this step on
    # Floor of the log spectra in the mel and STFT losses: the target's peak minus this many dB, per
    # example (see the module docstring); null = the absolute floor 1e-5 only.
    dynamic_range_db: float | None = 80.0
    # Frame level (FrameLevelLoss): L1 between the log RMS of each frame of reconstruction and target.
    level: float = 0.0
    level_resolution: tuple[int, int] = (1024, 256)
    # Phase coherence (PhaseCoherenceLoss): weight, then each term's share.
    phase: float = 0.0
    phase_group_delay: float = 1.0
    phase_inst_frequency: float = 1.0
    phase_absolute: float = 0.0
    phase_resolutions: list[tuple[int, int]] = field(default_factory=lambda: [(1024, 256)])
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
        if not self.phase_resolutions and self.phase:
            raise ValueError("loss.phase_resolutions is empty but loss.phase is non-zero")
        if self.dynamic_range_db is not None and self.dynamic_range_db <= 0:
            raise ValueError(f"loss.dynamic_range_db must be positive (or null), got {self.dynamic_range_db}")


ABSOLUTE_FLOOR = 1e-5


def floored_logs(
    fake: torch.Tensor, real: torch.Tensor, dynamic_range_db: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log(max(S, floor))`` of two magnitude spectrograms ``(B, F, frames)`` with one floor per
    example: ``1e-5``, raised to the target's peak minus ``dynamic_range_db`` dB when given."""
    floor = real.new_full((real.shape[0], 1, 1), ABSOLUTE_FLOOR)
    if dynamic_range_db is not None:
        peak = real.detach().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
        floor = torch.maximum(floor, peak * 10.0 ** (-dynamic_range_db / 20.0))
    return torch.maximum(fake, floor).log(), torch.maximum(real, floor).log()


class SpectralLoss(nn.Module, ABC):
    """A loss between the spectra of a reconstruction and its target: ``forward`` takes waveforms,
    :meth:`compare` their :class:`Spectra` (shared by several losses within one step)."""

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.compare(Spectra(fake), Spectra(real))

    @abstractmethod
    def compare(self, fake: Spectra, real: Spectra) -> torch.Tensor:
        """The loss (a scalar) between the reconstruction's and the target's spectra."""


class MultiResolutionMelLoss(SpectralLoss):
    """Mean over ``resolutions`` of ``mean |log_mel(fake) - log_mel(real)|`` (magnitude mels; log
    floor: 1e-5, or the target's peak minus ``dynamic_range_db`` dB per example)."""

    def __init__(
        self, sample_rate: int, resolutions: Sequence[tuple[int, int, int]], dynamic_range_db: float | None = None
    ):
        super().__init__()
        self.mels = nn.ModuleList(LogMel(sample_rate, n_fft, hop, n_mels) for n_fft, hop, n_mels in resolutions)
        self.dynamic_range_db = dynamic_range_db

    def compare(self, fake: Spectra, real: Spectra) -> torch.Tensor:
        losses = []
        for mel in self.mels:
            fake_mel = mel.filterbank(fake.magnitude(mel.n_fft, mel.hop_length))  # (B, n_mels, frames)
            real_mel = mel.filterbank(real.magnitude(mel.n_fft, mel.hop_length))
            losses.append(F.l1_loss(*floored_logs(fake_mel, real_mel, self.dynamic_range_db)))
        return torch.stack(losses).mean()


class MultiResolutionSTFTLoss(SpectralLoss):
    """Mean over ``resolutions`` of spectral convergence + log-magnitude L1 (floors as the mel loss)."""

    def __init__(self, resolutions: Sequence[tuple[int, int]], dynamic_range_db: float | None = None):
        super().__init__()
        self.resolutions = [tuple(r) for r in resolutions]
        self.dynamic_range_db = dynamic_range_db

    def compare(self, fake: Spectra, real: Spectra) -> torch.Tensor:
        losses = []
        for n_fft, hop in self.resolutions:
            fake_mag = fake.magnitude(n_fft, hop)  # (B, F, frames)
            real_mag = real.magnitude(n_fft, hop)
            convergence = torch.linalg.vector_norm(real_mag - fake_mag) / torch.linalg.vector_norm(real_mag).clamp(
                min=ABSOLUTE_FLOOR
            )
            log_magnitude = F.l1_loss(*floored_logs(fake_mag, real_mag, self.dynamic_range_db))
            losses.append(convergence + log_magnitude)
        return torch.stack(losses).mean()


class FrameLevelLoss(SpectralLoss):
    """``mean |log rms(fake frame) - log rms(real frame)|`` over ``(n_fft, hop)`` Hann frames.

    Why: a log-spectral L1 is minimised by the median of what the decoder can't yet resolve, so
    while the fine structure (harmonic positions, phase) is uncertain it prefers a smeared spectrum
    whose bins are too low, and reconstructions come out quiet. A frame's total energy is certain
    however its bins are spread, so this term holds the level while the rest is learned.
    Floors as the mel loss (the target's loudest frame minus ``dynamic_range_db``)."""

    def __init__(self, resolution: tuple[int, int], dynamic_range_db: float | None = None):
        super().__init__()
        self.n_fft, self.hop_length = resolution
        self.dynamic_range_db = dynamic_range_db

    def compare(self, fake: Spectra, real: Spectra) -> torch.Tensor:
        def rms(spectra: Spectra) -> torch.Tensor:  # (B, 1, frames): root of each frame's mean power
            return spectra.magnitude(self.n_fft, self.hop_length).pow(2).mean(dim=1, keepdim=True).sqrt()

        return F.l1_loss(*floored_logs(rms(fake), rms(real), self.dynamic_range_db))


class PhaseCoherenceLoss(SpectralLoss):
    """Phase errors of ``fake`` against ``real`` at each STFT resolution, weighted by ``|real|``.

    For unit phasors ``u = X / |X|`` of both STFTs, each term is ``1 - cos(error)`` of a wrapped
    phase error (0 when equal, 2 when opposite; smooth, and defined where a bin is silent):

    * group delay: the phase step between neighbouring frequency bins, ``u[k+1] conj(u[k])``;
    * instantaneous frequency: the phase advance between neighbouring frames, ``u[n+1] conj(u[n])``;
    * absolute: the phase itself.

    Each error is averaged with weights ``|real|`` (the geometric mean of the two bins for the
    differences), so inaudible bins, whose target phase is noise, teach nothing.
    """

    def __init__(self, resolutions: Sequence[tuple[int, int]], group_delay: float = 1.0,
                 inst_frequency: float = 1.0, absolute: float = 0.0):
        super().__init__()
        self.resolutions = [tuple(r) for r in resolutions]
        self.weights = {"group_delay": group_delay, "inst_frequency": inst_frequency, "absolute": absolute}

    def compare(self, fake: Spectra, real: Spectra) -> torch.Tensor:
        losses = []
        for n_fft, hop in self.resolutions:
            fake_unit = fake.complex(n_fft, hop) / (fake.magnitude(n_fft, hop) + ABSOLUTE_FLOOR)  # (B, F, N) complex
            real_mag = real.magnitude(n_fft, hop)
            real_unit = real.complex(n_fft, hop) / (real_mag + ABSOLUTE_FLOOR)
            total = real_mag.new_zeros(())
            if self.weights["absolute"]:
                total = total + self.weights["absolute"] * _weighted_phase_error(fake_unit, real_unit, real_mag)
            if self.weights["group_delay"]:
                total = total + self.weights["group_delay"] * _weighted_phase_error(
                    _phase_step(fake_unit, dim=1), _phase_step(real_unit, dim=1), _pair_weight(real_mag, dim=1))
            if self.weights["inst_frequency"]:
                total = total + self.weights["inst_frequency"] * _weighted_phase_error(
                    _phase_step(fake_unit, dim=2), _phase_step(real_unit, dim=2), _pair_weight(real_mag, dim=2))
            losses.append(total)
        return torch.stack(losses).mean()


def _phase_step(unit: torch.Tensor, dim: int) -> torch.Tensor:
    """``u[i+1] conj(u[i])`` along ``dim``: the phase difference of neighbours as a phasor."""
    ahead = unit.narrow(dim, 1, unit.shape[dim] - 1)
    behind = unit.narrow(dim, 0, unit.shape[dim] - 1)
    return ahead * behind.conj()


def _pair_weight(magnitude: torch.Tensor, dim: int) -> torch.Tensor:
    """Geometric mean of the magnitudes of neighbours along ``dim``."""
    ahead = magnitude.narrow(dim, 1, magnitude.shape[dim] - 1)
    behind = magnitude.narrow(dim, 0, magnitude.shape[dim] - 1)
    return (ahead * behind).sqrt()


def _weighted_phase_error(fake: torch.Tensor, real: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum w (1 - cos(angle(fake) - angle(real))) / sum w`` for phasors ``fake`` and ``real``."""
    cosine = (fake * real.conj()).real  # |fake|, |real| <= 1, so this is cos of the error scaled down where silent
    return (weight * (1.0 - cosine)).sum() / weight.sum().clamp(min=ABSOLUTE_FLOOR)


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
        floor = cfg.dynamic_range_db
        self.mel = MultiResolutionMelLoss(sample_rate, cfg.mel_resolutions, floor) if cfg.mel else None
        self.stft = MultiResolutionSTFTLoss(cfg.stft_resolutions, floor) if cfg.stft else None
        self.level = FrameLevelLoss(cfg.level_resolution, floor) if cfg.level else None
        self.phase = PhaseCoherenceLoss(cfg.phase_resolutions, cfg.phase_group_delay, cfg.phase_inst_frequency,
                                        cfg.phase_absolute) if cfg.phase else None

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
        fake_spectra, real_spectra = Spectra(fake), Spectra(real)
        for name, loss in (("mel", self.mel), ("stft", self.stft), ("level", self.level), ("phase", self.phase)):
            if loss is not None:
                terms[name] = loss.compare(fake_spectra, real_spectra)
                total = total + getattr(self.cfg, name) * terms[name]
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
