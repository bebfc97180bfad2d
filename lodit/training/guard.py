"""The NaN/inf guard: skip optimizer steps whose loss or gradient norm is not finite.

One bad batch (a silent clip, an fp16 overflow, a rare loss spike) should not destroy a run, so
the trainer asks :meth:`NonFiniteGuard.check` before every optimizer step; a ``False`` answer
means "zero the gradients and skip this step". A run that keeps producing non-finite values has
diverged, and continuing would only burn compute: after ``max_bad_steps`` consecutive bad steps
of the same phase the guard raises a :class:`~lodit.errors.LoditError` saying what diverged and
what to change. Counters are per phase (a GAN's discriminator and generator are judged apart) and
are part of the checkpoint, so a resumed run keeps counting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lodit.errors import LoditError


class NonFiniteGuard:
    """Counts skipped (non-finite) steps per phase and stops a run that has diverged."""

    def __init__(self, max_bad_steps: int):
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be at least 1, got {max_bad_steps}")
        self.max_bad_steps = int(max_bad_steps)
        self.consecutive: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    def check(self, phase: str, step: int, loss: float, grad_norm: float) -> bool:
        """True when the step may be taken; False when it must be skipped.

        Raises :class:`LoditError` when ``phase`` has now been bad ``max_bad_steps`` times in a row.
        """
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive[phase] = 0
            return True
        self.consecutive[phase] = self.consecutive.get(phase, 0) + 1
        self.skipped[phase] = self.skipped.get(phase, 0) + 1
        if self.consecutive[phase] >= self.max_bad_steps:
            what = f"loss = {loss}" if not math.isfinite(loss) else f"gradient norm = {grad_norm}"
            raise LoditError(
                f"training diverged: the '{phase}' {what} was not finite for {self.consecutive[phase]} "
                f"consecutive steps (last at step {step}); lower the learning rate (lr or module_lr.{phase}), "
                f"set or lower grad_clip, or use bf16 instead of fp16"
            )
        return False

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"consecutive": dict(self.consecutive), "skipped": dict(self.skipped)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        self.consecutive = {k: int(v) for k, v in state.get("consecutive", {}).items()}
        self.skipped = {k: int(v) for k, v in state.get("skipped", {}).items()}
