"""Training plumbing shared by every trainer: accelerate, checkpoints, exact resume, EMA,
LR schedules, gradient clipping, a NaN/inf guard, TensorBoard logging and progress.

May import: torch, accelerate, tensorboard, ``lodit.data`` and the top-level helpers.
Knows nothing about any particular model.
"""

from lodit.training.checkpoint import (
    check_compatible,
    checkpoint_path,
    export_final,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    prune_checkpoints,
    read_optimizer_state,
    read_state,
    read_weights,
    save_checkpoint,
)
from lodit.training.config import TrainingConfig
from lodit.training.data import ResumableLoader
from lodit.training.ema import EMA
from lodit.training.guard import NonFiniteGuard
from lodit.training.loop import Trainer, TrainResult, TrainTask, make_accelerator
from lodit.training.progress import Progress
from lodit.training.schedule import lr_factor, make_scheduler
from lodit.training.seed import rng_state, seed_everything, set_rng_state
from lodit.training.tracking import Tracker

__all__ = [
    "EMA",
    "NonFiniteGuard",
    "Progress",
    "ResumableLoader",
    "Tracker",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "TrainingConfig",
    "check_compatible",
    "checkpoint_path",
    "export_final",
    "latest_checkpoint",
    "list_checkpoints",
    "load_weights",
    "lr_factor",
    "make_accelerator",
    "make_scheduler",
    "prune_checkpoints",
    "read_optimizer_state",
    "read_state",
    "read_weights",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]
