"""Where computation runs: the one rule for choosing a torch device, and the CPU float setting.

Every command and library entry point that takes a ``device`` resolves it here, so ``"auto"`` (or
nothing) means the same everywhere: CUDA when this machine has it, else the CPU.
"""

from __future__ import annotations

import torch

from lodit.errors import LoditError


def choose_device(device: str | torch.device | None = "auto", *, option: str = "device") -> torch.device:
    """``device`` as a torch device; ``"auto"`` or ``None`` -> CUDA when available, else CPU.

    A name torch doesn't know, or CUDA on a machine without it, is a :class:`LoditError` naming
    ``option`` (the flag or config key the value came from).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise LoditError(f"{option} {str(device)!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LoditError(f"{option} {device}: CUDA is not available on this machine; use {option} cpu")
    return resolved


def flush_denormals() -> None:
    """Flush denormal floats to zero, process-wide.

    Denormals (tiny activations early in training) make CPU maths 10-30x slower; flushing them to
    zero changes no result that matters and keeps CPU runs at full speed.
    """
    torch.set_flush_denormal(True)
