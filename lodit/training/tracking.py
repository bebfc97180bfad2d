"""TensorBoard logging of a run: scalars, audio previews and figures (:class:`Tracker`).

Only the main process writes (others get ``enabled=False`` and every call is a no-op), and the
event file is created lazily on the first write, so a tracker costs nothing until used. View the
logs with ``tensorboard --logdir <run_dir>/logs``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Tracker:
    """Writes TensorBoard events under ``log_dir`` when ``enabled``."""

    def __init__(self, log_dir: str | os.PathLike, *, enabled: bool = True):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None

    @property
    def writer(self):
        """The underlying ``SummaryWriter`` (created on first use), for anything not wrapped here."""
        if self._writer is None:
            # imported here: loading tensorboard is only worth it once something is logged
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """One point per scalar at ``step``; non-finite values are logged too (they show divergence)."""
        if not self.enabled:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), global_step=step)

    def log_audio(self, tag: str, wav: torch.Tensor | np.ndarray, sample_rate: int, step: int) -> None:
        """An audio preview: ``wav`` is ``(S,)``, ``(C, S)`` or ``(1, C, S)``; channels are mixed to mono
        and samples clipped to [-1, 1] (TensorBoard plays mono float audio in that range)."""
        if not self.enabled:
            return
        samples = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
        samples = samples.detach().float().cpu()
        samples = samples.reshape(-1, samples.shape[-1]).mean(dim=0)  # (S,)
        samples = torch.nan_to_num(samples).clamp(-1.0, 1.0)
        self.writer.add_audio(tag, samples.unsqueeze(0), global_step=step, sample_rate=int(sample_rate))

    def log_figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure (e.g. a mel spectrogram preview); the figure is closed afterwards."""
        if not self.enabled:
            return
        self.writer.add_figure(tag, figure, global_step=step, close=True)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

