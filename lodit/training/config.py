"""The training-loop settings every trainer shares (:class:`TrainingConfig`).

Model- and data-specific settings live in each trainer's own config, which embeds this one
(conventionally under a ``training:`` key). Values are checked when the dataclass is built, so a
bad YAML value is reported by :func:`lodit.config.from_dict` with its key and file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

MixedPrecision = Literal["no", "bf16", "fp16", "auto"]


@dataclass
class TrainingConfig:
    """Optimisation, precision, checkpointing and logging settings of one training run.

    ``batch_size`` is the *global* batch: with ``N`` processes each one gets ``batch_size / N``
    items of every batch (see :class:`~lodit.training.data.ResumableLoader`), so a run gives the
    same batches whatever the number of GPUs. ``mixed_precision="auto"`` means bf16 where a CUDA
    GPU supports it and full precision otherwise. ``module_lr`` overrides ``lr`` per trained
    module (e.g. ``{"discriminator": 2e-4}``). The LR schedule is a function of the global
    training step for every module.
    """

    max_steps: int = 1000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # AdamW decay, on tensors with 2+ dimensions only (not biases or norm gains)
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm per module; 0 = no clipping
    ema_decay: float = 0.0  # EMA of the "model" module; 0 = no EMA
    ema_warmup: bool = False  # ramp the EMA decay up over the first updates (see lodit.training.ema)
    mixed_precision: MixedPrecision = "no"
    # torch.compile the trained modules (through accelerate's dynamo backend). Costs a compilation
    # at the first steps (tens of seconds on CPU) and again for new batch shapes; pays off on long
    # runs (benchmarks/RESULTS.md). compile_backend: any torch.compile backend accelerate accepts
    # ("inductor"; "aot_eager" traces without generating code, for debugging).
    compile: bool = False
    compile_backend: str = "inductor"
    gradient_accumulation_steps: int = 1
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    preview_every: int = 0  # 0 = no previews
    max_bad_steps: int = 20
    seed: int = 0
    batch_size: int = 8
    num_workers: int = -1  # DataLoader worker processes; -1 = chosen from the cores and device (lodit.cores)
    # Wall-clock budget of one invocation in minutes (0 = none): the run stops after the step that
    # spends it, with a checkpoint and a final/ export, and the same command continues it. The LR
    # schedule still follows max_steps, so set max_steps to what the budget fits for a full anneal.
    max_minutes: float = 0.0
    module_lr: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("max_steps", "gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints",
                    "log_every", "max_bad_steps", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        non_negative = ("lr", "weight_decay", "warmup_steps", "grad_clip", "preview_every", "max_minutes")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.num_workers < -1:
            raise ValueError(f"num_workers must be -1 (choose from the cores) or a count >= 0, got {self.num_workers}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must both be in [0, 1), got {list(self.betas)}")
        from accelerate.utils import DynamoBackend

        known = [b.value.lower() for b in DynamoBackend if b is not DynamoBackend.NO]
        if self.compile_backend.lower() not in known:
            raise ValueError(f"compile_backend must be one of {', '.join(known)}, got {self.compile_backend!r}")
        for name, value in self.module_lr.items():
            if value < 0:
                raise ValueError(f"module_lr.{name} must not be negative, got {value}")

    def lr_for(self, module: str) -> float:
        """The base learning rate of one trained module."""
        return self.module_lr.get(module, self.lr)

    def resolved_mixed_precision(self) -> Literal["no", "bf16", "fp16"]:
        """``mixed_precision`` with ``"auto"`` decided for this machine."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "no"
