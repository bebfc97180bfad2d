"""Training plumbing shared by every trainer: accelerate, checkpoints, exact resume, EMA,
LR schedules, gradient clipping, a NaN/inf guard, TensorBoard logging and progress.

May import: torch, accelerate, tensorboard, ``lodit.data`` and the top-level helpers.
Knows nothing about any particular model.
"""

import importlib

# Name -> the module defining it. Imported on first use (PEP 562), so that model code importing
# lodit.training.checkpoint to load weights does not pull in accelerate with the Trainer.
_EXPORTS = {
    **dict.fromkeys(["check_compatible", "checkpoint_path", "export_final", "latest_checkpoint", "list_checkpoints",
                     "load_weights", "prune_checkpoints", "read_optimizer_state", "read_state", "read_weights",
                     "save_checkpoint"], "lodit.training.checkpoint"),
    "TrainingConfig": "lodit.training.config",
    "ResumableLoader": "lodit.training.data",
    "EMA": "lodit.training.ema",
    "NonFiniteGuard": "lodit.training.guard",
    **dict.fromkeys(["Trainer", "TrainResult", "TrainTask", "make_accelerator"], "lodit.training.loop"),
    "Progress": "lodit.training.progress",
    **dict.fromkeys(["lr_factor", "make_scheduler"], "lodit.training.schedule"),
    **dict.fromkeys(["rng_state", "seed_everything", "set_rng_state"], "lodit.training.seed"),
    "Tracker": "lodit.training.tracking",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


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
