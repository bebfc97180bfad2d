"""The command-line shape every ``lodit train-*`` command shares.

``--config`` plus ``key.sub=value`` overrides, one data option (``--manifest`` or ``--cache``)
that sets a config key, ``--out``, ``--seed``, ``--max-steps`` (stop this invocation early, with a
checkpoint) and ``--no-resume``; and one way of reporting how a run ended. The trainers keep only
what differs: their config class, their data option and what their final folder is used for.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lodit.config import load_config
from lodit.errors import LoditError
from lodit.outputs import check_output_folder
from lodit.training.loop import TrainResult

# Trainers that read a manifest take --on-error, the option every manifest reader spells the same.
MANIFEST_KEY = "data.manifest"
ON_ERROR_KEY = "data.on_error"


@dataclass(frozen=True)
class DataOption:
    """A command-line option that sets one config key, e.g. ``--cache`` -> ``data.cache``."""

    flag: str
    key: str
    help: str


# The data option of the trainers that read audio clips from a manifest (tokenizer, SemBo).
MANIFEST_OPTION = DataOption("--manifest", MANIFEST_KEY, "training manifest")


def add_training_arguments(
    parser: argparse.ArgumentParser, *, config_example: str, data: DataOption, out_default: str, override_example: str
) -> None:
    parser.add_argument("--config", required=True, help=f"training config (YAML), e.g. {config_example}")
    parser.add_argument(data.flag, help=f"{data.help} (overrides {data.key})")
    parser.add_argument("--out", help=f"run folder for checkpoints, logs and final/ (default {out_default})")
    parser.add_argument("--seed", type=int, help="training seed (overrides training.seed)")
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help="stop this invocation after global step N, with a checkpoint (the LR schedule still "
                             "runs to training.max_steps); run the command again to continue")
    if data.key == MANIFEST_KEY:
        parser.add_argument("--on-error", choices=("fail", "skip"),
                            help=f"a bad manifest row or clip stops the run (fail) or is reported and left out "
                                 f"(skip) (overrides {ON_ERROR_KEY})")
    parser.add_argument("--no-resume", action="store_true",
                        help="refuse to continue a run folder that already has checkpoints (default: resume)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help=f"config overrides, e.g. {override_example}")


def training_overrides(args: argparse.Namespace, data: DataOption) -> list[str]:
    """The overrides the options stand for, after the user's own ``key.sub=value`` ones."""
    overrides = list(args.overrides)
    value = getattr(args, data.flag.lstrip("-").replace("-", "_"))
    if value:
        overrides.append(f"{data.key}={value}")
    if getattr(args, "on_error", None):
        overrides.append(f"{ON_ERROR_KEY}={args.on_error}")
    if args.seed is not None:
        overrides.append(f"training.seed={args.seed}")
    if args.max_steps is not None and args.max_steps < 1:
        raise LoditError(f"--max-steps must be at least 1, got {args.max_steps}")
    return overrides


def run_folder(args: argparse.Namespace, prefix: str = "") -> Path:
    """``--out``, or ``runs/<prefix><config file name>``; refused now if it can't be written."""
    folder = Path(args.out) if args.out else Path("runs") / f"{prefix}{Path(args.config).stem}"
    return check_output_folder(folder)


def report_result(
    result: TrainResult, max_steps: int, what: str, *, hint: str = "", keys: tuple[str, ...] = ()
) -> None:
    """One line: where the run stopped (and how to continue) or where its final ``what`` is."""
    shown = keys or tuple(k for k in sorted(result.scalars) if k.endswith("loss"))
    losses = ", ".join(f"{k}={result.scalars[k]:.4g}" for k in shown if k in result.scalars) or "no finite loss logged"
    skipped = sum(result.skipped_steps.values())
    if skipped:
        losses += f"; {skipped} step(s) skipped as non-finite"
    if result.unsaved_bad_steps:
        print(
            f"stopped at step {result.step} of {max_steps} ({losses}) inside {result.unsaved_bad_steps} skipped "
            f"steps, so that end was not saved; the last good checkpoint is {result.checkpoint or 'none'}; "
            "check the data (non-finite audio?) and the learning rate, then run the same command again"
        )
    elif result.final is None:
        print(f"stopped at step {result.step} of {max_steps} ({losses}); checkpoint in {result.checkpoint}; "
              "run the same command again to continue")
    elif result.out_of_time:
        print(f"time budget (training.max_minutes) spent at step {result.step} of {max_steps} ({losses}); {what} "
              f"in {result.final}; run the same command again to train further")
    else:
        print(f"trained {result.step} steps ({losses}); {what} in {result.final}" + (f" ({hint})" if hint else ""))


def run_training(
    args: argparse.Namespace,
    config_class: type,
    train: Callable[..., TrainResult],
    data: DataOption,
    *,
    what: str,
    prefix: str = "",
    hint: str = "",
    keys: tuple[str, ...] = (),
    overrides: list[str] | None = None,
) -> int:
    """A ``lodit train-*`` command's whole run: the config with the options' overrides, ``train(config,
    run folder, resume=, stop_at=)`` and the one-line report of how it ended."""
    config: Any = load_config(config_class, args.config,
                              training_overrides(args, data) if overrides is None else overrides)
    result = train(config, run_folder(args, prefix=prefix), resume=not args.no_resume, stop_at=args.max_steps)
    report_result(result, config.training.max_steps, what, hint=hint, keys=keys)
    return 0
