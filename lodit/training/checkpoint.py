"""Training checkpoints on disk: layout, atomic writes, discovery, pruning, loading.

A run directory holds ``checkpoints/step-00001000/`` folders (zero-padded so they sort) and a
``final/`` export. A checkpoint folder contains:

- ``config.json`` — the model config the task exports, so ``SomeModel.from_pretrained(folder)``
  works on a training checkpoint as well as on the final export;
- ``model.safetensors`` and ``<name>.safetensors`` for every other trained module
  (e.g. ``discriminator.safetensors``), ``ema.safetensors`` when EMA is on;
- ``optimizer.pt`` — optimizer, LR-scheduler and grad-scaler states (tensors and numbers only,
  read with ``torch.load(weights_only=True)``);
- ``state.json`` — step, data position, guard counters, RNG states, lodit version, training config.

``final/`` holds only ``config.json``, ``model.safetensors`` and ``ema.safetensors``.

Every folder is written under a hidden temporary name and renamed into place with
``os.replace``, so a crash mid-write leaves the previous checkpoints intact and never a
half-written folder under a checkpoint name. Loading never unpickles code: weights through
``safetensors``, the rest through JSON or ``weights_only`` ``torch.load``. A checkpoint that does not
fit the model (missing or unexpected keys, different shapes) is a ``LoditError`` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lodit.errors import LoditError
from lodit.files import TEMP_PREFIX, read_json, replace_folder, write_json

CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_NAME = "model"
EMA_NAME = "ema"
# file stems a trained module may not use because they name other parts of a checkpoint
RESERVED_NAMES = frozenset({EMA_NAME, "optimizer", "state", "config"})

_STEP_FOLDER = re.compile(r"^step-(\d{8,})$")


# --------------------------------------------------------------------------- layout


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``<run_dir>/checkpoints/step-<step:08d>``."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:08d}"


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The step a checkpoint folder's name encodes, or None for any other name."""
    match = _STEP_FOLDER.match(Path(folder).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and leftovers of crashed writes); return what went."""
    found = list_checkpoints(run_dir)
    removed = found[: max(0, len(found) - keep)]
    for folder in removed:
        shutil.rmtree(folder)
    root = Path(run_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        for leftover in root.glob(f"{TEMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


# --------------------------------------------------------------------------- writing


def save_checkpoint(
    folder: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    optimizer_state: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``weights`` maps a file stem to a state dict: ``{"model": ..., "discriminator": ..., "ema": ...}``.
    ``optimizer_state`` goes to ``optimizer.pt`` and ``state`` to ``state.json`` (both optional:
    the final export has neither). An existing folder of the same name is replaced.
    """
    if MODEL_NAME not in weights:
        raise ValueError(f"a checkpoint needs the '{MODEL_NAME}' weights, got {sorted(weights)}")

    def write(tmp: Path) -> None:
        write_json(tmp / CONFIG_FILE, config, allow_nan=True)
        for name, state_dict in weights.items():
            save_file(_cpu_copy(state_dict), str(tmp / f"{name}.safetensors"), metadata={"format": "pt"})
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        if state is not None:
            write_json(
                tmp / STATE_FILE, state, allow_nan=True
            )  # written last: its presence marks a complete checkpoint

    return write_folder_atomically(folder, write)


def export_final(
    run_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    model: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write (or replace) the stable ``<run_dir>/final/`` export: config + model (+ EMA) weights."""
    weights = {MODEL_NAME: model} if ema is None else {MODEL_NAME: model, EMA_NAME: ema}
    return save_checkpoint(Path(run_dir) / FINAL_DIR, config=config, weights=weights)


def write_folder_atomically(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a hidden temp folder, then rename it to ``folder``.

    On any failure the temp folder is removed and ``folder`` (if it existed) is untouched.
    """
    folder = Path(folder)
    tmp = folder.parent / f"{TEMP_PREFIX}{folder.name}-{os.getpid()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        _fsync_files(tmp)
        replace_folder(tmp, folder)
        _fsync_dir(folder.parent)
    except (OSError, SafetensorError) as exc:  # disk full, permissions changed under a running job
        shutil.rmtree(tmp, ignore_errors=True)
        raise LoditError(f"{folder}: could not be written ({' '.join(str(exc).split())}); earlier checkpoints "
                         "are intact: free disk space (or fix the folder's permissions) and run the same "
                         "command again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _cpu_copy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A copy per tensor: safetensors refuses tensors that share memory (tied weights), and the
    # copy also detaches the checkpoint from weights that keep training.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise LoditError(f"{path}: checkpoint file not found; check the checkpoint folder or the module names")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise LoditError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())})") from None


def check_compatible(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """Raise a LoditError naming ``path`` unless ``found`` has exactly ``expected``'s keys and shapes."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k} {list(found[k].shape)} in the file vs {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_few(mismatched)}")
    if problems:
        raise LoditError(
            f"{path}: does not fit the model ({'; '.join(problems)}); "
            "build the model from the checkpoint's config.json or start a new run directory"
        )


def load_weights(path: str | os.PathLike, module: nn.Module) -> None:
    """Load a safetensors file into ``module``; an incompatible file is a LoditError naming it."""
    found = read_weights(path)
    check_compatible(module.state_dict(), found, path)
    module.load_state_dict(found)


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``state.json``."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise LoditError(f"{folder}: not a training checkpoint (no {STATE_FILE}); pass a checkpoints/step-* folder")
    return read_json(path)


def read_optimizer_state(folder: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's ``optimizer.pt``, loaded without unpickling code (``weights_only=True``)."""
    path = Path(folder) / OPTIMIZER_FILE
    if not path.is_file():
        raise LoditError(f"{path}: missing; the checkpoint is incomplete, resume from another one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a refused object: bytes that are no pickle at all
            raise LoditError(f"{path}: unreadable (not a torch file); the checkpoint is damaged, resume from "
                             "an earlier one") from None
        # torch's own text here recommends turning the safety off; lodit never loads code from a file.
        raise LoditError(f"{path}: holds Python objects other than tensors and numbers, which lodit refuses "
                         "to load (they could run code); resume from a checkpoint lodit wrote, or start a new "
                         "run folder") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # truncated or corrupt
        raise LoditError(f"{path}: unreadable ({_safe_reason(exc)}); the checkpoint is damaged, resume from "
                         "an earlier one") from None


def _safe_reason(exc: BaseException) -> str:
    """The first sentence of an error, never torch's advice to load with ``weights_only=False``."""
    text = " ".join(str(exc).split())
    if "weights_only" in text:
        return type(exc).__name__
    return (text.split(". ")[0][:160]) or type(exc).__name__


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"
