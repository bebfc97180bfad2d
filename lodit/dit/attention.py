"""Attention for the DiT: rotary positions, the attention kernel backends, self- and cross-attention.

This module owns everything between a block's normalised input and its attention output:

- :class:`RotaryEmbedding` / :func:`apply_rotary`: RoPE over frame (token) positions. Channel pairs
  are the two halves of each head (``x[..., :hd/2]`` with ``x[..., hd/2:]``), rotated by
  ``pos * theta^(-2i/hd)``. Because ``<R(m) q, R(n) k> = <q, R(n - m) k>``, attention scores depend
  only on the relative offset between frames, so a model trained on short clips sees the same
  geometry on long ones.
- :func:`attend`: one call for every backend. ``sdpa`` (default) is
  :func:`torch.nn.functional.scaled_dot_product_attention`, which picks flash / memory-efficient /
  CPU-flash kernels itself; ``xformers`` and ``flash_attn`` are used only when installed and chosen
  in the config.
- :class:`SelfAttention`: fused QKV projection, optional QK-norm (per-head LayerNorm with a learned
  gain, see :func:`head_norm`), RoPE, key padding mask.
- :class:`CrossAttention`: queries from the frames, keys/values from text-encoder token states.
  **Null text**: every block owns one learned *null* key/value token that is always attendable, so a
  row with no valid text token (condition dropout, unconditional sampling, ``text=None``) attends
  to the null token instead of producing ``softmax`` over nothing (NaN). Unconditional output is
  therefore a learned quantity, and ``text=None`` is exactly the same as an all-False text mask.
  **No RoPE** here: text tokens are not time-aligned with frames, and rotating only the queries
  would leak absolute frame position into the text match.

Tensor layout inside attention is ``(B, heads, tokens, head_dim)`` as SDPA expects; projections
produce ``(B, tokens, 3 or 2, heads, head_dim)`` and the head axis is moved with views, not copies.
"""

from __future__ import annotations

import importlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lodit.errors import LoditError

AttentionBackend = Literal["sdpa", "xformers", "flash_attn"]
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "xformers", "flash_attn")

# Rotary cos/sin tables, ``((N, hd/2), (N, hd/2))`` in float32.
Rotary = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE over integer positions ``0..N-1`` (computed per call, no cache)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        inv_freq = (1.0 / theta**exponents).float()  # (hd/2,)
        # Not a parameter and not saved: it is a pure function of (head_dim, theta).
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> Rotary:
        """``positions`` ``(N,)`` (any real dtype) -> ``(cos, sin)``, each ``(N, hd/2)`` float32."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # (N, hd/2)
        return angles.cos(), angles.sin()

    def for_length(self, length: int, device: torch.device) -> Rotary:
        return self(torch.arange(length, device=device))


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate ``x`` ``(B, N, ..., hd)`` (token position on dim 1) by RoPE.

    ``R(x) = x ⊙ [cos, cos] + swap(x) ⊙ [-sin, sin]`` with ``swap([a, b]) = [b, a]`` over the two
    halves of the head. Tables are float32, so the result is float32 for low-precision ``x`` (bf16
    angles lose the low frequencies); callers cast back.
    """
    cos, sin = rotary  # (N, hd/2) each
    shape = (cos.shape[0],) + (1,) * (x.dim() - 3) + (2 * cos.shape[1],)  # (N, 1, ..., hd)
    cos_table = torch.cat((cos, cos), dim=-1).view(shape)
    sin_table = torch.cat((-sin, sin), dim=-1).view(shape)
    return torch.addcmul(x * cos_table, _swap_halves(x), sin_table)


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((second, first), dim=-1)


def head_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """QK-norm: LayerNorm over the head dim with a learned per-channel ``gain`` ``(hd,)``.

    LayerNorm rather than RMSNorm because it is one fused kernel forward and backward on CPU and
    GPU, gain gradient included (``F.rms_norm`` decomposes into ~8 kernels on CPU, ~8x slower
    here). Q and K are normalised by separate calls on their views of the fused projection: that
    measured faster than one call over a stacked Q/K copy with the gains applied afterwards.
    """
    return F.layer_norm(x, (x.shape[-1],), weight=gain, eps=1e-6)


# --------------------------------------------------------------------------------------------
# Kernel backends
# --------------------------------------------------------------------------------------------


def check_backend(backend: str) -> None:
    """Fail early (at model build) with a one-line fix when a backend is unknown or not installed."""
    if backend not in ATTENTION_BACKENDS:
        raise LoditError(
            f"dit.attention_backend={backend!r} is unknown; choose one of: {', '.join(ATTENTION_BACKENDS)}"
        )
    if backend == "sdpa":
        return
    module = {"xformers": "xformers.ops", "flash_attn": "flash_attn"}[backend]
    try:
        importlib.import_module(module)
    except ImportError:
        raise LoditError(
            f"dit.attention_backend={backend!r} but the {backend} package is not installed; "
            f"install it or set dit.attention_backend=sdpa"
        ) from None


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    backend: str = "sdpa",
    dropout: float = 0.0,
) -> torch.Tensor:
    """Multi-head attention ``softmax(q kᵀ / sqrt(hd)) v``.

    ``q`` ``(B, H, Nq, hd)``, ``k``/``v`` ``(B, H, Nk, hd)``; ``key_mask`` ``(B, Nk)`` bool, True =
    the key may be attended (every row must keep at least one True). Returns ``(B, H, Nq, hd)``.
    """
    if backend == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Nk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    if backend == "xformers":
        return _attend_xformers(q, k, v, key_mask, dropout)
    if backend == "flash_attn":
        return _attend_flash(q, k, v, key_mask, dropout)
    raise LoditError(f"attention backend {backend!r} is unknown; choose one of: {', '.join(ATTENTION_BACKENDS)}")


def _attend_xformers(q, k, v, key_mask, dropout):
    import xformers.ops as xops

    bias = None
    if key_mask is not None:
        batch, heads, n_q, _ = q.shape
        n_k = k.shape[2]
        # xformers wants a (B, H, Nq, Nk) additive bias whose last dim is stored 8-aligned.
        padded = (n_k + 7) // 8 * 8
        storage = q.new_zeros(batch, heads, n_q, padded)
        bias = storage[..., :n_k]
        bias.masked_fill_(~key_mask[:, None, None, :], float("-inf"))
    # xformers' layout is (B, tokens, heads, hd).
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout
    )
    return out.transpose(1, 2)


def _attend_flash(q, k, v, key_mask, dropout):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if q.dtype not in (torch.float16, torch.bfloat16) or not q.is_cuda:
        raise LoditError(
            "dit.attention_backend=flash_attn runs only on CUDA in fp16/bf16; "
            "use mixed precision on a GPU or set dit.attention_backend=sdpa"
        )
    # flash-attn's layout is (B, tokens, heads, hd).
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if key_mask is None:
        return flash_attn_func(q, k, v, dropout_p=dropout).transpose(1, 2)
    # Varlen: pack the valid keys of every sample; every query is kept (padding queries still
    # attend to their sample's valid keys, exactly as the SDPA path does).
    batch, n_q, heads, head_dim = q.shape
    n_k = k.shape[1]
    key_lengths = key_mask.sum(dim=1, dtype=torch.int32)
    cu_k = F.pad(key_lengths.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (batch + 1) * n_q, n_q, dtype=torch.int32, device=q.device)
    flat_mask = key_mask.reshape(-1)
    k_packed = k.reshape(batch * n_k, heads, head_dim)[flat_mask]
    v_packed = v.reshape(batch * n_k, heads, head_dim)[flat_mask]
    out = flash_attn_varlen_func(
        q.reshape(batch * n_q, heads, head_dim), k_packed, v_packed,
        cu_q, cu_k, n_q, int(key_lengths.max()), dropout_p=dropout,
    )
    return out.reshape(batch, n_q, heads, head_dim).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Attention modules
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Self-attention over frame tokens: fused QKV, optional QK-norm and RoPE, key padding mask."""

    def __init__(self, width: int, heads: int, *, qk_norm: bool = True, bias: bool = True,
                 backend: str = "sdpa", dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise LoditError(f"dit.width={width} must be divisible by dit.heads={heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.backend = backend
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        # QK-norm gains, shared by all heads.
        self.q_gain = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.k_gain = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.out = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor, rotary: Rotary | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)  # (B, N, H, hd) views
        if self.q_gain is not None:
            q, k = head_norm(q, self.q_gain), head_norm(k, self.k_gain)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        # Under autocast the norm and the rotation run in float32; attention runs in v's dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        out = attend(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_mask,
            backend=self.backend, dropout=self.dropout if self.training else 0.0,
        )  # (B, H, N, hd)
        return self.out(out.transpose(1, 2).reshape(batch, tokens, width))


class CrossAttention(nn.Module):
    """Frames attend to text-encoder tokens plus one learned, always-valid null token."""

    def __init__(self, width: int, heads: int, context_dim: int, *, qk_norm: bool = True,
                 bias: bool = True, backend: str = "sdpa", dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.backend = backend
        self.dropout = dropout
        self.q = nn.Linear(width, width, bias=bias)
        self.kv = nn.Linear(context_dim, 2 * width, bias=bias)
        # The null key/value, already in projected space: (2, H, hd).
        self.null_kv = nn.Parameter(torch.randn(2, heads, self.head_dim) / math.sqrt(self.head_dim))
        self.q_gain = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.k_gain = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.out = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, N, W)``; ``context`` ``(B, L, context_dim)`` or None; ``context_mask`` ``(B, L)``."""
        batch, tokens, width = x.shape
        q = self.q(x).view(batch, tokens, self.heads, self.head_dim)
        null = self.null_kv.to(q.dtype).expand(batch, 1, 2, self.heads, self.head_dim)
        key_mask = None
        if context is None:
            kv = null  # (B, 1, 2, H, hd)
        else:
            length = context.shape[1]
            kv = self.kv(context).view(batch, length, 2, self.heads, self.head_dim)
            kv = torch.cat((null, kv.to(null.dtype)), dim=1)  # (B, 1 + L, 2, H, hd)
            if context_mask is not None:
                # The null token is always valid.
                key_mask = torch.cat((context_mask.new_ones(batch, 1), context_mask), dim=1)
        k, v = kv.unbind(dim=2)
        if self.q_gain is not None:
            q, k = head_norm(q, self.q_gain).to(v.dtype), head_norm(k, self.k_gain).to(v.dtype)
        out = attend(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_mask,
            backend=self.backend, dropout=self.dropout if self.training else 0.0,
        )  # (B, H, N, hd)
        return self.out(out.transpose(1, 2).reshape(batch, tokens, width))
