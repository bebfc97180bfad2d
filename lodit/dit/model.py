"""The DiT network: a transformer over latent frames that predicts the flow-matching velocity.

Input pipeline, top to bottom (:meth:`DiT.forward`):

1. padding frames (``mask`` False) are zeroed, per-frame conditioning is concatenated on channels,
   the sequence is padded to a multiple of ``patch_size`` and every ``patch_size`` frames become
   one token (``Linear(patch_size · (latent_dim + frame_cond_dim) -> width)``);
2. a global conditioning vector ``c`` (B, width) is the sum of: the flow time ``t`` (sinusoid ->
   MLP), the masked-mean-pooled text tokens (-> MLP), the target duration in seconds (sinusoid ->
   MLP) and a task embedding; every block regresses its adaLN-Zero modulation from ``silu(c)``;
3. ``depth`` :class:`~lodit.dit.layers.DiTBlock` s (self-attention with RoPE + QK-norm and a key
   padding mask, cross-attention to the text tokens, gated MLP), optionally with U-DiT long skips
   from block ``i`` into block ``depth-1-i`` and with gradient checkpointing;
4. the zero-initialised final layer maps tokens back to ``patch_size`` frames of velocity, and the
   internal padding is trimmed so the output has the input's ``T``.

Padding frames never influence valid outputs: they are zeroed before patchify and masked out as
self-attention keys. A token is valid when any of its frames is valid.

The latent width is not part of a size preset: ``DiTConfig.latent_dim = 0`` means "read it from
the latent cache", and the trainer builds the model with ``config.with_latent_dim(cache_dim)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lodit.dit.attention import ATTENTION_BACKENDS, RotaryEmbedding, check_backend
from lodit.dit.layers import (
    DiTBlock,
    FinalLayer,
    ScalarEmbedding,
    SkipFusion,
    gated_hidden_size,
    sinusoidal_embedding,
)
from lodit.errors import LoditError

# Sinusoid input scales: flow time [0, 1] and duration in seconds onto roughly 0..1000.
TIME_SCALE = 1000.0
DURATION_SCALE = 10.0


@dataclass
class DiTConfig:
    """Shape and options of a :class:`DiT` (see ``lodit.dit.presets`` for the named sizes)."""

    latent_dim: int = 0  # 0 = read from the latent cache at build time
    width: int = 512
    depth: int = 12
    heads: int = 8
    patch_size: int = 1  # latent frames per token
    # Gated MLP hidden = ceil(mlp_ratio · width · 2/3 / 64) · 64 (2/3 keeps a plain MLP's params).
    mlp_ratio: float = 4.0
    mlp: Literal["geglu", "swiglu"] = "swiglu"  # SiLU is the cheaper gate on CPU (benchmarks/RESULTS.md)
    qk_norm: bool = True
    # Biases in the blocks' attention and MLP projections. Off by default: adaLN's shift (and the
    # cross-attention LayerNorm's bias) already feed a bias through every input projection, and
    # bias-free blocks skip a broadcast copy forward and a reduction backward per Linear (~2 % of
    # a CPU training step, benchmarks/RESULTS.md), as in PaLM-style transformers.
    bias: bool = False
    rope: bool = True  # False: fixed sinusoidal absolute positions added to the tokens instead
    rope_theta: float = 10000.0
    text_dim: int = 384  # width of the text-encoder token states (0 = no text conditioning)
    frame_cond_dim: int = 0  # width of time-aligned per-frame conditioning (0 = none)
    num_tasks: int = 0  # task embedding (tta/ttm/tts) in the global vector when > 0
    duration_cond: bool = True  # target duration (seconds) in the global vector
    long_skips: bool = False  # U-DiT: skip from block i into block depth-1-i
    grad_checkpointing: bool = False
    attention_backend: Literal["sdpa", "xformers", "flash_attn"] = "sdpa"
    dropout: float = 0.0

    def with_latent_dim(self, latent_dim: int) -> DiTConfig:
        """A copy for latents of width ``latent_dim`` (as read from the latent cache)."""
        return dataclasses.replace(self, latent_dim=int(latent_dim))

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return gated_hidden_size(self.width, self.mlp_ratio)

    def __post_init__(self) -> None:
        self.check()  # when the config is read, so the error names its file

    def check(self) -> None:
        """Raise a one-line :class:`LoditError` naming the ``dit.*`` key at fault (the widths that
        come from the data, and whether an attention backend is installed, are checked at build)."""
        for key in ("width", "depth", "heads", "patch_size"):
            if getattr(self, key) < 1:
                raise LoditError(f"dit.{key}={getattr(self, key)} must be >= 1")
        for key in ("text_dim", "frame_cond_dim", "num_tasks"):
            if getattr(self, key) < 0:
                raise LoditError(f"dit.{key}={getattr(self, key)} must be >= 0")
        if self.width % self.heads:
            raise LoditError(f"dit.width={self.width} must be divisible by dit.heads={self.heads}")
        if self.rope and self.head_dim % 2:
            raise LoditError(f"dit.rope needs an even head dim; width/heads = {self.head_dim}")
        if self.mlp not in ("geglu", "swiglu"):
            raise LoditError(f"dit.mlp={self.mlp!r} is unknown; choose geglu or swiglu")
        if self.mlp_ratio <= 0:
            raise LoditError(f"dit.mlp_ratio={self.mlp_ratio} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise LoditError(f"dit.dropout={self.dropout} must be in [0, 1)")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise LoditError(f"dit.attention_backend={self.attention_backend!r} is unknown; "
                             f"choose one of: {', '.join(ATTENTION_BACKENDS)}")

    def validate(self) -> None:
        """:meth:`check`, plus what a DiT needs to be built: its latent width and the attention backend."""
        if self.latent_dim <= 0:
            raise LoditError(
                "dit.latent_dim is 0: build the DiT with config.with_latent_dim(<latent cache width>)"
            )
        self.check()
        check_backend(self.attention_backend)


class DiT(nn.Module):
    """Flow-matching velocity network over latent frames (see the module docstring)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        width, patch = config.width, config.patch_size
        self.in_proj = nn.Linear(patch * (config.latent_dim + config.frame_cond_dim), width)
        self.time_embed = ScalarEmbedding(width, TIME_SCALE)
        self.duration_embed = ScalarEmbedding(width, DURATION_SCALE) if config.duration_cond else None
        self.task_embed = nn.Embedding(config.num_tasks, width) if config.num_tasks > 0 else None
        self.text_pool = None
        if config.text_dim > 0:
            self.text_pool = nn.Sequential(
                nn.Linear(config.text_dim, width), nn.SiLU(), nn.Linear(width, width)
            )
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta) if config.rope else None
        self.blocks = nn.ModuleList(
            DiTBlock(
                width, config.heads, mlp_hidden=config.mlp_hidden, mlp=config.mlp,
                qk_norm=config.qk_norm, bias=config.bias, text_dim=config.text_dim,
                backend=config.attention_backend, dropout=config.dropout,
            )
            for _ in range(config.depth)
        )
        # skips[j] fuses the output of block depth-1-j into the input of block j (second half).
        num_skips = config.depth // 2 if config.long_skips else 0
        self.skip_fusions = nn.ModuleDict(
            {str(config.depth - 1 - i): SkipFusion(width) for i in range(num_skips)}
        )
        self.final = FinalLayer(width, patch * config.latent_dim)
        self.reset_parameters()

    # ---------------------------------------------------------------------------------- init

    def reset_parameters(self) -> None:
        """Xavier-uniform linears with zero bias (as DiT), then the identity-at-init overrides."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for embed in (self.time_embed, self.duration_embed):
            if embed is not None:
                for layer in embed.mlp[0::2]:
                    nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            block.reset_zero_init()
        for fusion in self.skip_fusions.values():
            fusion.reset_identity()
        self.final.reset_zero_init()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        frame_cond: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        task: torch.Tensor | None = None,
        duration: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity ``(B, T, D)`` for noisy latents ``x`` ``(B, T, D)`` at flow time ``t`` ``(B,)``.

        ``text`` ``(B, L, text_dim)`` with ``text_mask`` ``(B, L)`` (True = valid; all False or
        ``text=None`` = unconditional); ``frame_cond`` ``(B, T, frame_cond_dim)``; ``mask`` ``(B, T)``
        (True = valid frame); ``task`` ``(B,)`` long; ``duration`` ``(B,)`` seconds.
        """
        cfg = self.config
        batch, frames, _ = x.shape
        self._check_inputs(x, text, text_mask, frame_cond, mask, task, duration)
        cond = F.silu(self._global_condition(t, text, text_mask, task, duration, batch, x))

        tokens, token_mask = self._patchify(x, frame_cond, mask)  # (B, N, p·C), (B, N) or None
        h = self.in_proj(tokens)  # (B, N, W)
        num_tokens = h.shape[1]
        rotary = None
        if self.rotary is not None:
            rotary = self.rotary.for_length(num_tokens, h.device)
        else:
            positions = torch.arange(num_tokens, device=h.device)
            h = h + sinusoidal_embedding(positions, cfg.width).to(h.dtype)
        key_mask = _attention_key_mask(token_mask)
        if text is not None and text_mask is not None and not torch.compiler.is_compiling() and bool(text_mask.all()):
            # Every key valid: let SDPA take its unmasked fast path. Skipped under torch.compile,
            # where reading the mask's value would split the graph.
            text_mask = None

        skips: list[torch.Tensor] = []
        num_skips = len(self.skip_fusions)
        for index, block in enumerate(self.blocks):
            fusion = self.skip_fusions[str(index)] if str(index) in self.skip_fusions else None  # noqa: SIM401 (ModuleDict has no .get)
            if fusion is not None:
                h = fusion(h, skips.pop())
            if cfg.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, cond, rotary, key_mask, text, text_mask, use_reentrant=False)
            else:
                h = block(h, cond, rotary, key_mask, text, text_mask)
            if index < num_skips:
                skips.append(h)

        out = self.final(h, cond)  # (B, N, p·D)
        out = out.reshape(batch, num_tokens * cfg.patch_size, cfg.latent_dim)  # (B, N·p, D)
        return out[:, :frames]

    def _check_inputs(self, x, text, text_mask, frame_cond, mask, task, duration) -> None:
        cfg = self.config
        if x.dim() != 3:
            raise ValueError(f"DiT input must be (B, T, D), got shape {tuple(x.shape)}")
        batch, frames, channels = x.shape
        if channels != cfg.latent_dim:
            raise LoditError(
                f"latents have {channels} channels but the DiT was built for dit.latent_dim="
                f"{cfg.latent_dim}; use the latent cache this model was trained on"
            )
        if text is not None:
            if cfg.text_dim == 0:
                raise ValueError("text was given but the DiT has no cross-attention (text_dim=0)")
            if text.dim() != 3 or text.shape[0] != batch or text.shape[2] != cfg.text_dim:
                raise LoditError(
                    f"text states have shape {tuple(text.shape)}; expected (B={batch}, L, "
                    f"dit.text_dim={cfg.text_dim}): match dit.text_dim to the text encoder's width"
                )
            if text_mask is not None and text_mask.shape != text.shape[:2]:
                raise ValueError(f"text_mask {tuple(text_mask.shape)} must be (B, L) = {tuple(text.shape[:2])}")
        if cfg.frame_cond_dim > 0:
            if frame_cond is None or frame_cond.shape != (batch, frames, cfg.frame_cond_dim):
                got = None if frame_cond is None else tuple(frame_cond.shape)
                raise ValueError(f"frame_cond must be (B, T, {cfg.frame_cond_dim}), got {got}")
        elif frame_cond is not None:
            raise ValueError("frame_cond was given but dit.frame_cond_dim=0")
        if mask is not None and mask.shape != (batch, frames):
            raise ValueError(f"mask {tuple(mask.shape)} must be (B, T) = {(batch, frames)}")
        if cfg.num_tasks > 0 and task is None:
            raise ValueError(f"the DiT embeds tasks (num_tasks={cfg.num_tasks}); pass task=(B,) ids")
        if cfg.duration_cond and duration is None:
            raise ValueError("the DiT embeds target durations (duration_cond=True); pass duration=(B,) seconds")

    def _global_condition(self, t, text, text_mask, task, duration, batch, like) -> torch.Tensor:
        """The global vector ``c`` ``(B, W)``: time + pooled text + duration + task."""
        t = torch.as_tensor(t, device=like.device).reshape(-1).expand(batch)
        c = self.time_embed(t)
        if self.text_pool is not None:
            if text is None:
                pooled = c.new_zeros(batch, self.config.text_dim)
            elif text_mask is None:
                pooled = text.mean(dim=1)
            else:
                weights = text_mask.to(text.dtype).unsqueeze(-1)  # (B, L, 1)
                # clamp: zero valid tokens (null text) pools to zeros instead of 0/0.
                pooled = (text * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            c = c + self.text_pool(pooled.to(c.dtype))
        if self.duration_embed is not None:
            c = c + self.duration_embed(torch.as_tensor(duration, device=like.device).reshape(-1).expand(batch))
        if self.task_embed is not None:
            c = c + self.task_embed(task.to(like.device).long())
        return c

    def _patchify(self, x, frame_cond, mask):
        """Frames -> tokens ``(B, N, p·C)`` and the token validity mask ``(B, N)`` (None = all valid)."""
        patch = self.config.patch_size
        if frame_cond is not None:
            x = torch.cat((x, frame_cond.to(x.dtype)), dim=-1)  # (B, T, D + F)
        if mask is not None:
            x = x * mask.unsqueeze(-1).to(x.dtype)  # padding frames carry no content
        batch, frames, channels = x.shape
        pad = (-frames) % patch
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            if mask is not None:
                mask = F.pad(mask, (0, pad), value=False)
        num_tokens = (frames + pad) // patch
        tokens = x.reshape(batch, num_tokens, patch * channels)  # (B, N, p·C)
        # Internal padding (< patch frames) only ever shares a token with valid frames.
        token_mask = None
        if mask is not None:
            token_mask = mask.reshape(batch, num_tokens, patch).any(dim=-1)  # (B, N)
        return tokens, token_mask


def _attention_key_mask(token_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Self-attention key mask: None when every token is valid (SDPA's fast path); a sample with
    no valid token attends to all of them (its output is padding anyway, but must not be NaN)."""
    if token_mask is None or bool(token_mask.all()):
        return None
    empty = ~token_mask.any(dim=1, keepdim=True)  # (B, 1)
    return token_mask | empty


# ------------------------------------------------------------------------------------ FLOPs


def dit_forward_flops(config: DiTConfig, frames: int, text_tokens: int = 0) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass for ONE sample.

    Counted: every Linear on frame tokens and text tokens, attention ``q kᵀ`` and ``p v``. With
    ``N = ceil(T / patch)`` tokens, ``W`` width, ``F`` gated hidden, ``L`` text tokens (+1 null
    key), ``d_t`` text width, ``C = patch·(latent_dim + frame_cond_dim)``:

    per block: ``2N·W·3W + 2N·W·W`` (QKV, out) + ``4N²W`` (self scores + values)
    + ``2N·W·W·2`` (cross q, out) + ``2L·d_t·2W`` (cross kv) + ``4N(L+1)W`` (cross attention)
    + ``2N·W·2F + 2N·F·W`` (gated MLP) + ``2W·6W`` (modulation);
    plus ``2N·C·W`` (in), ``2N·W·patch·latent_dim`` (out) and the small conditioning MLPs.
    Elementwise work (norms, RoPE, activations, softmax) is not counted, by convention. A training
    step (forward + backward) is ``3 ×`` this.
    """
    cfg = config
    width, hidden = cfg.width, cfg.mlp_hidden
    tokens = math.ceil(frames / cfg.patch_size)
    per_block = 2 * tokens * width * 3 * width + 2 * tokens * width * width
    per_block += 4 * tokens * tokens * width
    if cfg.text_dim > 0:
        per_block += 2 * tokens * width * width * 2
        per_block += 2 * text_tokens * cfg.text_dim * 2 * width
        per_block += 4 * tokens * (text_tokens + 1) * width
    per_block += 2 * tokens * width * 2 * hidden + 2 * tokens * hidden * width
    per_block += 2 * width * 6 * width
    total = cfg.depth * per_block
    total += 2 * tokens * cfg.patch_size * (cfg.latent_dim + cfg.frame_cond_dim) * width
    total += 2 * tokens * width * cfg.patch_size * cfg.latent_dim + 2 * width * 2 * width
    if cfg.long_skips:
        total += (cfg.depth // 2) * 2 * tokens * 2 * width * width
    embeds = 1 + int(cfg.duration_cond)
    total += embeds * (2 * 256 * width + 2 * width * width)
    if cfg.text_dim > 0:
        total += 2 * cfg.text_dim * width + 2 * width * width
    return int(total)


def dit_training_flops(config: DiTConfig, frames: int, text_tokens: int = 0) -> int:
    """Model FLOPs of one training step (forward + backward) for one sample: ``3 ×`` forward."""
    return 3 * dit_forward_flops(config, frames, text_tokens)
