"""Decoders: latent frames ``(B, T, D)`` -> waveform ``(B, 1, T * hop)``.

Owns :data:`DECODERS`, :class:`DecoderConfig` and the ``vocos`` decoder: an optional
``ConvTranspose1d`` upsampler (LoSATok: 25 -> 50 Hz), a Vocos-style ConvNeXt backbone (blocks from
:mod:`lodit.latent_tokenizer.blocks`) and an ISTFT head. The head predicts a log-magnitude and a phase per frequency
bin and inverts them with ``torch.istft`` — no transposed-conv stack at the sample rate, which is
what makes the decoder fast on CPU.

Output length. The ISTFT runs with ``center=True``: frame ``f`` is centred on sample ``f * hop``.
``F`` frames plainly reconstruct ``(F - 1) * hop`` samples (``torch.istft`` trims ``n_fft // 2`` from
each end of the overlap-add buffer). The buffer actually holds valid samples up to ``n_fft // 2``
past the last frame's centre, so with ``n_fft >= 2 * hop`` we ask ``torch.istft(length=F * hop)`` to
read one more hop from it instead of trimming. ``F = T * upsample`` frames at
``hop = hop_total / upsample`` then give exactly ``T * hop_total`` samples, matching the encoder's
frame count ``T = ceil(S / hop_total)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lodit.latent_tokenizer.blocks import ConvNeXtStack, init_weights
from lodit.registry import Registry


@dataclass
class DecoderConfig:
    name: str = "vocos"
    dim: int = 256  # backbone width
    intermediate_dim: int = 768  # ConvNeXt MLP width
    depth: int = 6  # ConvNeXt blocks
    kernel: int = 7  # depthwise kernel of each block (and of the input embedding conv)
    upsample: int = 2  # ConvTranspose1d factor before the backbone (1 = none)
    n_fft: int = 1280  # ISTFT window; must be even and >= 2 * hop_length
    hop_length: int = 320  # ISTFT hop = tokenizer hop / upsample
    # The head's STFT magnitude is clamped here (keeps early training finite). A full-scale sinusoid
    # peaks at magnitude ~n_fft/4 (320 at n_fft 1280, Hann), so the clamp must sit above that or a
    # loud steady tone can't be produced (tests/test_tokenizer_modules.py; benchmarks/RESULTS.md).
    max_magnitude: float = 1000.0
    centred_phase: bool = True  # initial head phases put each frame's energy under its window (ISTFTHead.centre_frames)

    def __post_init__(self):
        if self.kernel % 2 == 0:
            raise ValueError(f"decoder.kernel must be odd (keeps the frame count), got {self.kernel}")
        if self.upsample < 1:
            raise ValueError(f"decoder.upsample must be >= 1, got {self.upsample}")
        if self.n_fft % 2 or self.n_fft < 2 * self.hop_length:
            raise ValueError(
                f"decoder.n_fft must be even and >= 2 * decoder.hop_length ({2 * self.hop_length}), got {self.n_fft}"
            )


DECODERS: Registry[type] = Registry("decoder")


def build_decoder(cfg: DecoderConfig, *, latent_dim: int) -> nn.Module:
    """The decoder named by ``cfg.name``, mapping ``latent_dim`` channels to audio."""
    return DECODERS.get(cfg.name)(cfg, latent_dim=latent_dim)


class ISTFTHead(nn.Module):
    """``(B, F, dim)`` features -> ``(B, 1, F * hop)`` audio via log-magnitude + phase and ``torch.istft``."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, max_magnitude: float):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.max_log_magnitude = math.log(max_magnitude)
        self.proj = nn.Linear(dim, n_fft + 2)  # n_fft // 2 + 1 log-magnitudes, then as many phases
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def centre_frames(self) -> None:
        """Start every frame's phase at ``pi * k`` (bin ``k``), a delay of ``n_fft / 2`` samples.

        With near-zero phases the inverse FFT of each frame puts its energy at sample 0, the frame's
        edge, where the synthesis window is ~0: the first reconstructions come out at a fraction of
        the input level and training spends its first steps moving energy to the centre. With the
        half-frame delay each frame starts centred under the window. Only an initial value (the
        phase bias): the head's maths and existing checkpoints are unchanged."""
        bins = self.n_fft // 2 + 1
        with torch.no_grad():
            phase_bias = self.proj.bias[bins:]
            phase_bias.copy_(math.pi * torch.arange(bins, dtype=phase_bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        log_mag, phase = self.proj(x).transpose(1, 2).float().chunk(2, dim=1)  # (B, n_fft//2+1, F) each
        magnitude = torch.exp(log_mag.clamp(max=self.max_log_magnitude))
        spec = torch.polar(magnitude, phase)
        wav = torch.istft(
            spec,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window.float(),
            center=True,
            length=frames * self.hop_length,  # one hop past the last centre; see the module docstring
        )  # (B, F * hop)
        return wav.unsqueeze(1).to(x.dtype)


@DECODERS.register("vocos")
class VocosDecoder(nn.Module):
    """``(B, T, D)`` latents -> [ConvTranspose1d x upsample] -> conv embed -> LayerNorm ->
    ConvNeXt x depth -> LayerNorm -> ISTFT head -> ``(B, 1, T * upsample * hop_length)``."""

    def __init__(self, cfg: DecoderConfig, *, latent_dim: int):
        super().__init__()
        self.upsample = (
            nn.ConvTranspose1d(latent_dim, cfg.dim, kernel_size=cfg.upsample, stride=cfg.upsample)
            if cfg.upsample > 1
            else None
        )
        embed_in = cfg.dim if self.upsample is not None else latent_dim
        self.embed = nn.Conv1d(embed_in, cfg.dim, cfg.kernel, padding=cfg.kernel // 2)
        self.norm_in = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.backbone = ConvNeXtStack(cfg.dim, cfg.intermediate_dim, cfg.depth, cfg.kernel)
        self.norm_out = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop_length, cfg.max_magnitude)
        init_weights(self)
        if cfg.centred_phase:
            self.head.centre_frames()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = latent.transpose(1, 2)  # (B, D, T)
        if self.upsample is not None:
            x = self.upsample(x)  # (B, dim, T * upsample)
        x = self.norm_in(self.embed(x).transpose(1, 2))  # (B, F, dim)
        x = self.norm_out(self.backbone(x))
        return self.head(x)
