"""Decoders: latent frames ``(B, T, D)`` -> waveform ``(B, 1, T * hop)``.

Owns :data:`DECODERS`, :class:`DecoderConfig`, the ConvNeXt block that the encoders reuse, and the
``vocos`` decoder: an optional ``ConvTranspose1d`` upsampler (LoSATok: 25 -> 50 Hz), a Vocos-style
ConvNeXt backbone and an ISTFT head. The head predicts a log-magnitude and a phase per frequency
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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError
from lodit.registry import Registry

if TYPE_CHECKING:
    from lodit.latent_tokenizer.tokenizer import TokenizerConfig


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
    # peaks at magnitude ~n_fft/4 (320 at n_fft 1280, Hann), so the clamp must sit above that: at 100
    # a steady full-scale tone came out at 0.42 amplitude (tests/test_tokenizer_modules.py).
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


def build_decoder(cfg: DecoderConfig, tokenizer_cfg: TokenizerConfig) -> nn.Module:
    """The decoder named by ``cfg.name``, mapping ``tokenizer_cfg.latent_dim`` channels to audio."""
    return DECODERS.get(cfg.name)(cfg, tokenizer_cfg)


class DepthwiseConv1d(nn.Module):
    """Per-channel (depthwise) 1-D convolution on channels-last input: ``(B, T, C) -> (B, T, C)``.

    Parameters are shaped like ``nn.Conv1d(C, C, kernel, groups=C)`` (``weight (C, 1, k)``, ``bias
    (C,)``). On CPU it is computed as ``k`` shifted multiply-adds: PyTorch's grouped-conv CPU kernels
    were tens of times slower than that for these sizes (torch 2.13, measured), while on GPU
    ``F.conv1d`` is the fast path. Both compute the same cross-correlation with zero "same" padding.
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise LoditError(f"ConvNeXt kernel (encoder.kernel / decoder.kernel) must be odd, got {kernel}")
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel // 2
        if x.device.type != "cpu":
            out = F.conv1d(x.transpose(1, 2), self.weight, self.bias, padding=pad, groups=x.shape[-1])
            return out.transpose(1, 2)
        frames = x.shape[1]
        padded = F.pad(x, (0, 0, pad, pad))  # (B, T + 2 * pad, C)
        taps = self.weight[:, 0, :].t()  # (k, C)
        out = torch.addcmul(self.bias, padded[:, :frames], taps[0])
        for j in range(1, self.kernel):
            out = torch.addcmul(out, padded[:, j : j + frames], taps[j])
        return out


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> MLP (GELU) -> layer scale, residual; channels-last ``(B, T, C)``."""

    def __init__(self, dim: int, intermediate_dim: int, kernel: int = 7, layer_scale: float = 1.0):
        super().__init__()
        self.dwconv = DepthwiseConv1d(dim, kernel)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.gamma * h


class ConvNeXtStack(nn.Module):
    """``depth`` ConvNeXt blocks on ``(B, T, C)``, layer scale ``1 / depth`` (keeps the residual
    stream's scale independent of depth at initialisation)."""

    def __init__(self, dim: int, intermediate_dim: int, depth: int, kernel: int = 7):
        super().__init__()
        scale = 1.0 / max(depth, 1)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, kernel, scale) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) weights and zero biases for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear, DepthwiseConv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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

    def __init__(self, cfg: DecoderConfig, tokenizer_cfg: TokenizerConfig):
        super().__init__()
        latent_dim = tokenizer_cfg.latent_dim
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
