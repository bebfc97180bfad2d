"""GAN discriminators for tokenizer training, chosen by a list of family names.

Owns :data:`DISCRIMINATORS`, :class:`DiscriminatorConfig` and :class:`Discriminators`, plus the
families:

* ``mpd`` — :class:`MultiPeriodDiscriminator`: the waveform folded into ``(S / p, p)`` for each
  period ``p`` and judged by 2-D convs that stride along time only, so each column sees samples
  ``p`` apart (periodic structure: pitch, harmonics).
* ``mrd`` — :class:`MultiResolutionDiscriminator`: 2-D convs over STFT magnitudes at several
  resolutions (spectral detail at different time/frequency trade-offs).
* ``mfd`` — the same network over the complex STFT (real and imaginary parts as two input
  channels), a multi-frequency discriminator that also sees phase.

Every family maps a ``(B, 1, S)`` waveform to ``(logits, features)``: one logit tensor per
sub-discriminator and, per sub-discriminator, the list of its intermediate feature maps
(for feature matching). :class:`Discriminators` concatenates the families' lists.
Convolutions use weight normalisation, activations are leaky ReLU (slope 0.1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from lodit.errors import LoditError
from lodit.latent_tokenizer.frontend import stft
from lodit.registry import Registry

Logits = list[torch.Tensor]
Features = list[list[torch.Tensor]]


@dataclass
class DiscriminatorConfig:
    names: list[str] = field(default_factory=lambda: ["mpd", "mrd"])  # families, see DISCRIMINATORS
    channels: int = 32  # width of each family's first layer (the capacity knob)
    max_channels: int = 512  # mpd widths grow x4 per layer up to this
    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])  # mpd
    # mrd / mfd: (n_fft, hop_length) per sub-discriminator; the window is n_fft long
    resolutions: list[tuple[int, int]] = field(default_factory=lambda: [(512, 128), (1024, 256), (2048, 512)])

    def __post_init__(self):
        if not self.names:
            raise ValueError("discriminator.names must list at least one family (e.g. [mpd, mrd])")
        if self.channels < 1 or self.max_channels < self.channels:
            raise ValueError("discriminator.channels must be >= 1 and <= discriminator.max_channels")


DISCRIMINATORS: Registry[type] = Registry("discriminator")


class PeriodDiscriminator(nn.Module):
    """One period ``p``: ``(B, 1, S)`` -> fold to ``(B, 1, S/p, p)`` -> Conv2d stack -> logits."""

    def __init__(self, period: int, channels: int, max_channels: int):
        super().__init__()
        self.period = period
        widths = [1] + [min(channels * 4**i, max_channels) for i in range(4)]  # e.g. 32, 128, 512, 512
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), stride=(3, 1), padding=(2, 0)))
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.convs.append(weight_norm(nn.Conv2d(widths[-1], widths[-1], (5, 1), padding=(2, 0))))
        self.out = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = F.pad(wav, (0, (-wav.shape[-1]) % self.period))
        x = x.view(x.shape[0], 1, -1, self.period)  # (B, 1, S / p, p)
        return _conv_stack(self.convs, self.out, x)


def _conv_stack(convs: nn.ModuleList, out: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``convs`` with leaky ReLU, then ``out``: flattened logits and every layer's output (for feature matching)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = out(x)
    features.append(x)
    return x.flatten(1), features


class SpectrogramDiscriminator(nn.Module):
    """One STFT resolution: ``(B, 1, S)`` -> ``(B, C_in, frames, bins)`` -> Conv2d stack -> logits.

    ``C_in`` is 1 (magnitude) or 2 (real and imaginary parts). Convs stride along frequency only.
    """

    def __init__(self, n_fft: int, hop_length: int, channels: int, complex_input: bool):
        super().__init__()
        self.n_fft, self.hop_length, self.complex_input = n_fft, hop_length, complex_input
        c_in = 2 if complex_input else 1
        self.convs = nn.ModuleList(
            [weight_norm(nn.Conv2d(c_in, channels, (3, 9), padding=(1, 4)))]
            + [weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(3)]
            + [weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))]
        )
        self.out = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = stft(wav.float(), self.n_fft, self.hop_length).transpose(1, 2)  # (B, frames, bins) complex
        if self.complex_input:
            x = torch.stack([spec.real, spec.imag], dim=1)  # (B, 2, frames, bins)
        else:
            x = spec.abs().unsqueeze(1)  # (B, 1, frames, bins)
        x = x.to(wav.dtype)
        return _conv_stack(self.convs, self.out, x)


class _Family(nn.Module):
    """Runs its sub-discriminators and collects their logits and feature lists."""

    def forward(self, wav: torch.Tensor) -> tuple[Logits, Features]:
        logits, features = [], []
        for disc in self.discs:
            logit, feats = disc(wav)
            logits.append(logit)
            features.append(feats)
        return logits, features


@DISCRIMINATORS.register("mpd")
class MultiPeriodDiscriminator(_Family):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.discs = nn.ModuleList(PeriodDiscriminator(p, cfg.channels, cfg.max_channels) for p in cfg.periods)


@DISCRIMINATORS.register("mrd")
class MultiResolutionDiscriminator(_Family):
    complex_input = False

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.discs = nn.ModuleList(
            SpectrogramDiscriminator(n_fft, hop, cfg.channels, self.complex_input) for n_fft, hop in cfg.resolutions
        )


@DISCRIMINATORS.register("mfd")
class MultiFrequencyDiscriminator(MultiResolutionDiscriminator):
    complex_input = True


class Discriminators(nn.Module):
    """All configured families; ``forward(wav (B, 1, S)) -> (logits, features)`` concatenated over
    families in ``cfg.names`` order."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        if len(set(cfg.names)) != len(cfg.names):
            raise LoditError(f"discriminator.names lists a family twice: {cfg.names}")
        self.families = nn.ModuleDict({name: DISCRIMINATORS.get(name)(cfg) for name in cfg.names})

    def forward(self, wav: torch.Tensor) -> tuple[Logits, Features]:
        logits, features = [], []
        for family in self.families.values():
            fam_logits, fam_features = family(wav)
            logits += fam_logits
            features += fam_features
        return logits, features
