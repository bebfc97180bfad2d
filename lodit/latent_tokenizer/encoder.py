"""Encoders: waveform ``(B, 1, S)`` -> pre-bottleneck latent frames ``(B, T, D_pre)``.

Owns :class:`EncoderConfig`, :class:`EncoderOutput`, the mel input shared with ``losatok`` and two
variants (the registry that names all three is :data:`lodit.latent_tokenizer.tokenizer.ENCODERS`):

* ``mel_convnext`` — log-mel (:class:`MelEncoderInput`, shared with ``losatok``) -> conv embedding ->
  ConvNeXt blocks at the mel frame rate -> strided conv down to the latent rate -> ConvNeXt blocks
  -> LayerNorm -> Linear to the latent width.
* ``conv`` — strided 1-D convolutions on the raw waveform (a residual unit then a stride-``s`` conv
  per stage, channels doubling), then the same latent-rate ConvNeXt head.

The encoder interface is what every variant (including ones added later, e.g. a semantic-acoustic
encoder with a frozen teacher) implements: an ``nn.Module`` built as
``cls(cfg, sample_rate=..., hop_length=..., latent_dim=...)`` (the tokenizer's numbers), with
``out_dim`` (the width it hands the bottleneck) and ``forward(wav) -> EncoderOutput`` where
``aux`` carries extra tensors (e.g. teacher features) and ``losses`` any unweighted training losses
the encoder owns (the tokenizer loss weights them by name).

Frame count: ``hop = sample_rate / latent_rate`` samples per frame (640 at 16 kHz / 25 Hz) and
``T = ceil(S / hop)``. :func:`pad_to_hop` zero-pads the end of the waveform to ``T * hop`` samples;
the decoder then returns exactly ``T * hop`` samples and callers trim to the input length.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError
from lodit.latent_tokenizer.blocks import ConvNeXtStack, init_weights
from lodit.latent_tokenizer.frontend import LogMel
from lodit.latent_tokenizer.losatok_config import SemanticBranchConfig


@dataclass
class EncoderConfig:
    name: str = "mel_convnext"  # mel_convnext | conv
    dim: int = 256  # working width of the ConvNeXt blocks
    intermediate_dim: int = 768  # ConvNeXt MLP width
    depth: int = 2  # mel_convnext: ConvNeXt blocks at the mel frame rate
    post_depth: int = 2  # both: ConvNeXt blocks at the latent frame rate
    kernel: int = 7  # depthwise kernel of the ConvNeXt blocks and of the embedding conv
    # mel_convnext front-end; the tokenizer hop must be a multiple of mel_hop
    n_mels: int = 80
    n_fft: int = 1024
    mel_hop: int = 320
    f_min: float = 0.0
    f_max: float | None = None  # None = sample_rate / 2
    # mel_convnext and losatok feed (log_mel - mel_mean) / mel_std to their first layer. Natural-log
    # magnitude mels sit around -5 to -8 (silence floor log(1e-5) = -11.5, peaks ~+2); standardising
    # them (-5 / 4) trains faster at first but not better by the end of the CPU recipe
    # (benchmarks/RESULTS.md, tokenizer quality), so the default leaves the log-mel as it is.
    mel_mean: float = 0.0
    mel_std: float = 1.0
    # conv: one stage per stride; their product must equal the tokenizer hop
    channels: int = 32  # width of the first stage (doubles per stage, capped at max_channels)
    max_channels: int = 512
    strides: list[int] = field(default_factory=lambda: [2, 4, 8, 10])
    dilations: list[int] = field(default_factory=lambda: [1, 3])  # residual convs of each stage
    # losatok: teacher, SemBo, widths and semantic supervision (lodit.latent_tokenizer.losatok_config)
    semantic: SemanticBranchConfig = field(default_factory=SemanticBranchConfig)

    def applicable_fields(self) -> frozenset[str]:
        """The fields the chosen encoder reads (the others are refused in a config)."""
        mel = {"n_mels", "n_fft", "mel_hop", "f_min", "f_max", "mel_mean", "mel_std"}
        head = {"dim", "intermediate_dim", "post_depth", "kernel"}
        fields = {
            "mel_convnext": mel | head | {"depth"},
            "conv": head | {"channels", "max_channels", "strides", "dilations"},
            "losatok": mel | {"semantic"},
        }.get(self.name)
        if fields is None:  # an unknown name: the registry's error names the choices
            return frozenset(f.name for f in dataclasses.fields(self))
        return frozenset({"name"} | fields)

    def __post_init__(self):
        if self.kernel % 2 == 0:
            raise ValueError(f"encoder.kernel must be odd (keeps the frame count), got {self.kernel}")
        if self.mel_std <= 0:
            raise ValueError(f"encoder.mel_std must be > 0, got {self.mel_std}")


@dataclass
class EncoderOutput:
    latent: torch.Tensor  # (B, T, D_pre), D_pre = encoder.out_dim
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted, named


def pad_to_hop(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """Zero-pad the last axis to ``ceil(S / hop) * hop`` samples (no-op when already a multiple)."""
    extra = (-wav.shape[-1]) % hop
    return F.pad(wav, (0, extra)) if extra else wav


class LatentHead(nn.Module):
    """``(B, T, dim)`` -> ConvNeXt x depth -> LayerNorm -> Linear -> ``(B, T, out_dim)``."""

    def __init__(self, dim: int, intermediate_dim: int, depth: int, kernel: int, out_dim: int):
        super().__init__()
        self.blocks = ConvNeXtStack(dim, intermediate_dim, depth, kernel)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.blocks(x)))


class MelEncoderInput(nn.Module):
    """The mel encoders' input (``mel_convnext``, ``losatok``): ``wav (B, 1, S)``, ``S`` a multiple of
    the tokenizer hop -> standardised log-mel ``(B, n_mels, T · frames_per_latent)``, float32.

    ``suggestion`` ends the error for a ``mel_hop`` that does not divide the hop (each encoder
    knows which value suits it).
    """

    def __init__(self, cfg: EncoderConfig, *, sample_rate: int, hop_length: int, suggestion: str):
        super().__init__()
        self.hop_length = hop_length
        if cfg.mel_hop <= 0 or self.hop_length % cfg.mel_hop:
            raise LoditError(
                f"tokenizer.encoder.mel_hop={cfg.mel_hop} must divide the tokenizer hop ({self.hop_length} samples); "
                f"{suggestion}"
            )
        self.frames_per_latent = self.hop_length // cfg.mel_hop
        self.log_mel = LogMel(sample_rate, cfg.n_fft, cfg.mel_hop, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.mean, self.std = cfg.mel_mean, cfg.mel_std

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // self.hop_length
        # center=True gives one mel frame more than hop-multiples; drop it so mel frames = T * frames_per_latent.
        mel = self.log_mel(wav)[..., : frames * self.frames_per_latent]  # (B, n_mels, T * frames_per_latent)
        return (mel - self.mean) / self.std


class MelConvNeXtEncoder(nn.Module):
    """Log-mel -> ConvNeXt (mel rate) -> strided conv (x ``hop / mel_hop``) -> ConvNeXt (latent rate)."""

    def __init__(self, cfg: EncoderConfig, *, sample_rate: int, hop_length: int, latent_dim: int):
        super().__init__()
        self.hop_length = hop_length
        self.mel_input = MelEncoderInput(cfg, sample_rate=sample_rate, hop_length=hop_length,
                                         suggestion=f"pick a divisor such as {hop_length // 4}")
        self.factor = self.mel_input.frames_per_latent  # mel frames per latent frame
        self.out_dim = latent_dim
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, cfg.kernel, padding=cfg.kernel // 2)
        self.norm_in = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.blocks = ConvNeXtStack(cfg.dim, cfg.intermediate_dim, cfg.depth, cfg.kernel)
        self.down = nn.Conv1d(cfg.dim, cfg.dim, self.factor, stride=self.factor) if self.factor > 1 else nn.Identity()
        self.head = LatentHead(cfg.dim, cfg.intermediate_dim, cfg.post_depth, cfg.kernel, self.out_dim)
        init_weights(self)

    def forward(self, wav: torch.Tensor) -> EncoderOutput:
        wav = pad_to_hop(wav, self.hop_length)
        mel = self.mel_input(wav).to(self.embed.weight.dtype)  # (B, n_mels, T * factor)
        x = self.blocks(self.norm_in(self.embed(mel).transpose(1, 2)))  # (B, T * factor, dim)
        x = self.down(x.transpose(1, 2)).transpose(1, 2)  # (B, T, dim)
        return EncoderOutput(latent=self.head(x))


class ResidualUnit(nn.Module):
    """``x + Conv1x1(GELU(DilatedConv7(GELU(x))))``, length-preserving."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 7, padding=3 * dilation, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.act(self.conv(self.act(x))))


class ConvEncoder(nn.Module):
    """Waveform -> conv -> [residual units, stride-``s`` conv] per stride -> ConvNeXt head."""

    def __init__(self, cfg: EncoderConfig, *, sample_rate: int, hop_length: int, latent_dim: int):
        super().__init__()
        self.hop_length = hop_length
        if not cfg.strides or min(cfg.strides) < 2 or math.prod(cfg.strides) != self.hop_length:
            raise LoditError(
                f"tokenizer.encoder.strides={cfg.strides} multiply to {math.prod(cfg.strides or [0])}, "
                f"but the tokenizer hop is {self.hop_length} samples; "
                f"choose strides >= 2 whose product is {self.hop_length}"
            )
        self.out_dim = latent_dim
        width = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(1, width, 7, padding=3)]
        for stride in cfg.strides:
            out = min(width * 2, cfg.max_channels)
            layers += [ResidualUnit(width, d) for d in cfg.dilations]
            # kernel 2s with padding ceil(s/2) maps n*s samples to exactly n frames
            layers += [nn.GELU(), nn.Conv1d(width, out, 2 * stride, stride=stride, padding=(stride + 1) // 2)]
            width = out
        layers += [nn.GELU(), nn.Conv1d(width, cfg.dim, 3, padding=1)]
        self.convs = nn.Sequential(*layers)
        self.head = LatentHead(cfg.dim, cfg.intermediate_dim, cfg.post_depth, cfg.kernel, self.out_dim)
        init_weights(self.head)
        self._init_waveform_stack()

    def _init_waveform_stack(self) -> None:
        """He-normal convs and residual branches that start at zero (identity units).

        Why not the ConvNeXt blocks' 0.02 weights: each of the stack's ~20 convs would shrink its
        input, leaving ~1e-5 of the waveform's scale, under the head's LayerNorm eps, and the
        encoder could not start learning. He init keeps each conv's output at its input's scale."""
        for m in self.convs.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            if isinstance(m, ResidualUnit):
                nn.init.zeros_(m.proj.weight)

    def forward(self, wav: torch.Tensor) -> EncoderOutput:
        wav = pad_to_hop(wav, self.hop_length)
        x = self.convs(wav).transpose(1, 2)  # (B, T, dim)
        return EncoderOutput(latent=self.head(x))
