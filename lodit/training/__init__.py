"""Training plumbing shared by every trainer: accelerate, checkpoints, exact resume, EMA,
LR schedules, gradient clipping, a NaN/inf guard, TensorBoard logging and progress.

May import: torch, accelerate, tensorboard, ``lodit.data`` and the top-level helpers.
Knows nothing about any particular model.
"""
