"""Training progress for people: a tqdm bar on a terminal, periodic plain lines in log files.

On a TTY the bar shows steps, rate, elapsed time, ETA and the latest losses in its postfix. When
the output is not a terminal (a batch job, ``| tee``), a bar would only spam carriage returns, so
every ``print_every`` steps (and at the end) one line with the same information is printed instead.
Only the main process shows progress.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from tqdm import tqdm

_POSTFIX_ITEMS = 4


class Progress:
    """Progress of a run from ``initial`` to ``total`` steps."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        enabled: bool = True,
        desc: str = "train",
        print_every: int = 10,
        stream: TextIO | None = None,
    ):
        self.stream = stream or sys.stderr
        self.total = int(total)
        self.enabled = enabled
        self.desc = desc
        self.print_every = max(1, int(print_every))
        self.interactive = enabled and _is_tty(self.stream)
        self.bar = tqdm(
            total=self.total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            file=self.stream,
            disable=not self.interactive,
        )
        self.start_step = int(initial)
        self.step = int(initial)
        self.start_time = time.monotonic()

    def update(self, step: int, scalars: Mapping[str, float] | None = None) -> None:
        """Record that ``step`` steps are done; ``scalars`` are the latest logged values."""
        previous, self.step = self.step, int(step)
        if not self.enabled:
            return
        shown = _postfix(scalars or {})
        if self.interactive:
            if shown:
                self.bar.set_postfix(shown, refresh=False)
            self.bar.update(self.step - previous)
        elif self.step % self.print_every == 0 or self.step >= self.total:
            print(self.line(shown), file=self.stream, flush=True)

    def line(self, shown: Mapping[str, str] | None = None) -> str:
        """The plain one-line status: step, percent, rate, elapsed, ETA and ``shown`` values."""
        elapsed = time.monotonic() - self.start_time
        done = self.step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.step) / rate if rate > 0 else float("nan")
        parts = [
            f"{self.desc} step {self.step}/{self.total} ({100.0 * self.step / max(1, self.total):.0f}%)",
            f"{rate:.2f} step/s",
            f"elapsed {tqdm.format_interval(elapsed)}",
            f"ETA {tqdm.format_interval(eta) if math.isfinite(eta) else '?'}",
        ]
        if shown:
            parts.append(" ".join(f"{k}={v}" for k, v in shown.items()))
        return " | ".join(parts)

    def close(self) -> None:
        self.bar.close()


def _postfix(scalars: Mapping[str, float]) -> dict[str, str]:
    losses = {k: v for k, v in scalars.items() if "loss" in k} or dict(scalars)
    return {k: f"{v:.4g}" for k, v in list(losses.items())[:_POSTFIX_ITEMS]}


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
