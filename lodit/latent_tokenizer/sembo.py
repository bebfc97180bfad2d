"""SemBo, the semantic bottleneck of LoSATok, its losses, and training-free baselines.

SemBo squeezes frozen teacher features ``h (B, T, D)`` (e.g. 1280-dim at 25 Hz) into a narrow code
``z (B, T, 128)`` and restores them: compressor ``Linear(D, 512) -> GELU -> Linear(512, 128)``,
restorer ``Linear(128, 512) -> GELU -> Linear(512, D)`` (widths configurable). It is trained alone
on teacher features, then frozen, with ``lambda_rec * L_rec + L_tr``:

- :func:`normalized_reconstruction_loss` ``L_rec``: MSE between the restored and the teacher
  features after per-frame L2 normalisation over channels. L2 (not zero-mean/unit-variance) is
  chosen because it is the same per-frame normalisation the time-relation loss uses and the one in
  LoSATok's released reference code; it makes ``L_rec`` a mean over ``D`` channels of squared
  unit-vector differences (``(2 - 2 cos) / D`` per frame), which is why ``lambda_rec`` is large
  (1e3 by default).
- :func:`time_relation_loss` ``L_tr``: MSE between the ``T x T`` frame-by-frame cosine-similarity
  matrices ``G = z_hat z_hat^T`` of the code and of the (stop-gradient) teacher features, so the
  code keeps which frames resemble which.

Baselines at the same width with the same ``compress`` / ``restore`` / ``forward`` API:
:class:`PCABaseline` (fitted, mean-centred PCA) and :class:`ChannelMerge` (averages contiguous
groups of channels; restoring repeats each group mean).

May import: torch, safetensors, ``lodit.training`` (checkpoint files), lodit's top-level helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lodit.config import from_dict, to_dict
from lodit.errors import LoditError
from lodit.files import read_json
from lodit.training.checkpoint import (
    CONFIG_FILE,
    MODEL_NAME,
    load_weights,
    save_checkpoint,
)


@dataclass
class SemBoConfig:
    """SemBo's sizes and loss weight: ``in_dim`` (teacher width) -> ``hidden_dim`` -> ``low_dim``."""

    in_dim: int = 1280
    hidden_dim: int = 512
    low_dim: int = 128
    lambda_rec: float = 1e3

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden_dim", "low_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lambda_rec < 0:
            raise ValueError(f"lambda_rec must be >= 0, got {self.lambda_rec}")


# --------------------------------------------------------------------------------------------
# Losses


def _frame_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` float mask of valid frames (all ones when ``mask`` is None)."""
    if mask is None:
        return torch.ones(like.shape[:2], device=like.device, dtype=like.dtype)
    if mask.shape != like.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match frames {tuple(like.shape[:2])}")
    return mask.to(device=like.device, dtype=like.dtype)


def normalized_reconstruction_loss(
    restored: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between per-frame L2-normalised ``restored`` and ``target`` ``(B, T, D)``, averaged over
    the valid frames (``mask (B, T)``, True = valid) and channels. ``target`` gets no gradient."""
    diff = F.normalize(restored, dim=-1) - F.normalize(target.detach(), dim=-1)  # (B, T, D)
    weights = _frame_mask(mask, restored)
    per_frame = diff.pow(2).sum(dim=-1)  # (B, T)
    return (per_frame * weights).sum() / (weights.sum().clamp_min(1.0) * restored.shape[-1])


def cosine_gram(features: torch.Tensor) -> torch.Tensor:
    """Frame-by-frame cosine similarities ``(B, T, D) -> (B, T, T)``."""
    unit = F.normalize(features, dim=-1)
    return unit @ unit.transpose(1, 2)


def time_relation_loss(
    z_low: torch.Tensor, h_high: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between the cosine-similarity matrices of ``z_low (B, T, d)`` and of stop-gradient
    ``h_high (B, T, D)``, over the pairs of valid frames (``mask (B, T)``, True = valid)."""
    if z_low.shape[:2] != h_high.shape[:2]:
        raise ValueError(f"frame counts differ: {tuple(z_low.shape[:2])} vs {tuple(h_high.shape[:2])}")
    diff = cosine_gram(z_low) - cosine_gram(h_high.detach())  # (B, T, T)
    valid = _frame_mask(mask, z_low)
    pairs = valid[:, :, None] * valid[:, None, :]  # (B, T, T)
    return (diff.pow(2) * pairs).sum() / pairs.sum().clamp_min(1.0)


def sembo_loss(
    z_low: torch.Tensor,
    restored: torch.Tensor,
    h: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    lambda_rec: float = 1e3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``lambda_rec * L_rec + L_tr`` and its parts ``{"rec": L_rec, "tr": L_tr}``."""
    rec = normalized_reconstruction_loss(restored, h, mask)
    tr = time_relation_loss(z_low, h, mask)
    return lambda_rec * rec + tr, {"rec": rec, "tr": tr}


# --------------------------------------------------------------------------------------------
# SemBo


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class SemBo(nn.Module):
    """The semantic bottleneck: ``compress (B, T, in_dim) -> (B, T, low_dim)`` and ``restore`` back."""

    def __init__(self, config: SemBoConfig | None = None):
        super().__init__()
        self.config = config or SemBoConfig()
        cfg = self.config
        self.compressor = _mlp(cfg.in_dim, cfg.hidden_dim, cfg.low_dim)
        self.restorer = _mlp(cfg.low_dim, cfg.hidden_dim, cfg.in_dim)

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def low_dim(self) -> int:
        return self.config.low_dim

    def compress(self, h: torch.Tensor) -> torch.Tensor:
        return self.compressor(h)

    def restore(self, z: torch.Tensor) -> torch.Tensor:
        return self.restorer(z)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h (B, T, in_dim)`` -> ``(z_low (B, T, low_dim), restored (B, T, in_dim))``."""
        z_low = self.compress(h)
        return z_low, self.restore(z_low)

    def loss(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SemBo's training loss on teacher features ``h`` (see :func:`sembo_loss`)."""
        z_low, restored = self(h)
        return sembo_loss(z_low, restored, h, mask, lambda_rec=self.config.lambda_rec)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``folder`` (atomically)."""
        return save_checkpoint(folder, config=to_dict(self.config), weights={MODEL_NAME: self.state_dict()})

    @classmethod
    def from_pretrained(cls, folder: str | Path, weights: str = MODEL_NAME) -> SemBo:
        """Load a SemBo saved by :meth:`save_pretrained` (or a training checkpoint of one);
        ``weights`` picks the file stem (``"model"`` or ``"ema"``)."""
        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise LoditError(f"{config_path}: not found; give a SemBo folder saved by lodit")
        data = read_json(config_path, hint="re-export the SemBo")
        model = cls(from_dict(SemBoConfig, data, source=str(config_path), saved=True))
        load_weights(folder / f"{weights}.safetensors", model)
        return model


# --------------------------------------------------------------------------------------------
# Training-free baselines


class PCABaseline(nn.Module):
    """Mean-centred PCA to ``low_dim`` channels, fitted on teacher frames with :meth:`fit`.

    ``compress(h) = (h - mean) @ components.T``; ``restore(z) = z @ components + mean``. Each
    component's sign is fixed (its largest-magnitude entry is positive), so fits are reproducible.
    """

    def __init__(self, low_dim: int = 128):
        super().__init__()
        if low_dim < 1:
            raise LoditError(f"PCA low_dim={low_dim} must be a positive integer")
        self.low_dim = low_dim
        self.register_buffer("mean", None)
        self.register_buffer("components", None)  # (low_dim, D), orthonormal rows

    @torch.no_grad()
    def fit(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> PCABaseline:
        """Fit on ``features (N, D)`` or ``(B, T, D)`` (with an optional valid-frame ``mask (B, T)``)."""
        if features.dim() == 3:
            frames = features[mask.bool()] if mask is not None else features.reshape(-1, features.shape[-1])
        elif features.dim() == 2 and mask is None:
            frames = features
        else:
            raise ValueError(f"expected features (N, D) or (B, T, D) [+ mask (B, T)], got {tuple(features.shape)}")
        count, dim = frames.shape
        if self.low_dim > min(count, dim):
            raise LoditError(
                f"PCA to {self.low_dim} channels needs at least {self.low_dim} frames and channels; "
                f"got {count} frames of {dim} channels"
            )
        data = frames.double()
        mean = data.mean(dim=0)
        _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)
        components = vh[: self.low_dim]  # (low_dim, D)
        peak = components.abs().argmax(dim=1, keepdim=True)
        components = components * components.gather(1, peak).sign()
        self.mean = mean.to(features.dtype)
        self.components = components.to(features.dtype)
        return self

    def _check_fitted(self) -> None:
        if self.components is None:
            raise RuntimeError("PCABaseline.fit() must be called before compress/restore")

    def compress(self, h: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return (h - self.mean) @ self.components.T

    def restore(self, z: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return z @ self.components + self.mean

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_low = self.compress(h)
        return z_low, self.restore(z_low)


class ChannelMerge(nn.Module):
    """Averages contiguous groups of ``in_dim / low_dim`` channels; restoring repeats each mean
    over its group. No parameters."""

    def __init__(self, in_dim: int, low_dim: int = 128):
        super().__init__()
        if low_dim < 1 or in_dim % low_dim != 0:
            raise LoditError(
                f"channel merge needs low_dim dividing in_dim; got in_dim={in_dim}, low_dim={low_dim}"
            )
        self.in_dim = in_dim
        self.low_dim = low_dim
        self.group = in_dim // low_dim

    def compress(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(*h.shape[:-1], self.low_dim, self.group).mean(dim=-1)

    def restore(self, z: torch.Tensor) -> torch.Tensor:
        return z.repeat_interleave(self.group, dim=-1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_low = self.compress(h)
        return z_low, self.restore(z_low)
