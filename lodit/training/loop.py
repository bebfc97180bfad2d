"""The training loop every lodit trainer shares: a :class:`Trainer` runs a :class:`TrainTask`.

A task says *what* is trained — its modules, which of them step at a given step (a GAN alternates
``"discriminator"`` and ``"model"``), the loss of each phase and the config to export. The
trainer owns *how*: one AdamW and one LR scheduler per module, ``accelerate`` for devices, mixed
precision and multi-GPU, gradient accumulation and clipping, the NaN/inf guard, the EMA of
``"model"``, TensorBoard logging, progress, atomic checkpoints and exact resume.

One training step, for each phase ``p`` in ``task.phases(step)``:
zero the gradients of *all* modules; for each of ``gradient_accumulation_steps`` micro-batches
``loss, scalars = task.loss(p, batch, step)`` and backward; clip ``p``'s gradient norm; ask the
guard; step ``p``'s optimizer (or skip the step). Then every LR scheduler advances once (the
schedule is a function of the global step), and the EMA follows ``"model"`` if it stepped.

Exact resume: a checkpoint holds the weights, EMA, optimizer/scheduler/grad-scaler states, the
data position, guard counters and every process's RNG state, so a run stopped at step ``k`` and
resumed continues bit-for-bit as if it had never stopped (same machine, same settings). After
loading, the learning rates are recomputed from the *current* config, so a resumed run may
change ``max_steps`` or ``lr``.

Multi-GPU (``accelerate launch``): modules are wrapped for data-parallel training, so a task must
call the trained modules through ``self.trained(name)`` inside :meth:`TrainTask.loss` (the
wrapper synchronises gradients) and call each wrapped module once per backward (e.g. put real and
generated audio through a discriminator as one batch). Previews run on the main process only and
should use the plain modules (``self.modules()``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.state import is_initialized as accelerate_state_initialized
from accelerate.utils import broadcast, gather_object, send_to_device
from torch import nn

from lodit import __version__
from lodit.config import save_config, to_dict
from lodit.cores import describe, rechoose_threads
from lodit.devices import flush_denormals
from lodit.errors import LoditError
from lodit.outputs import check_output_folder
from lodit.training.checkpoint import (
    EMA_NAME,
    MODEL_NAME,
    OPTIMIZER_FILE,
    RESERVED_NAMES,
    check_compatible,
    checkpoint_path,
    checkpoint_step,
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
from lodit.training.progress import Progress
from lodit.training.schedule import lr_factor, make_scheduler
from lodit.training.seed import rng_state, seed_everything, set_rng_state
from lodit.training.tracking import Tracker

log = logging.getLogger(__name__)

LOG_DIR = "logs"
RUN_CONFIG_FILE = "config.yaml"


class TrainTask(ABC):
    """What a trainer trains. Subclass it; the :class:`Trainer` calls these methods.

    After the modules are prepared, the trainer sets ``self.accelerator`` (device:
    ``self.device``), the prepared modules (reach them with :meth:`trained`) and ``self.ema``
    (the :class:`~lodit.training.ema.EMA` of ``"model"`` or None), then calls :meth:`on_prepared`.
    """

    accelerator: Accelerator | None = None
    ema: EMA | None = None
    _prepared: Mapping[str, nn.Module] | None = None

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name; ``"model"`` is the one exported (``model.safetensors``)."""

    def phases(self, step: int) -> Sequence[str]:
        """Which modules' optimizers step at ``step`` (0-based), in order (GAN: ``("discriminator", "model")``)."""
        return (MODEL_NAME,)

    @abstractmethod
    def loss(self, phase: str, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss to minimise for ``phase`` on ``batch`` (already on the device), and scalars to log."""

    @abstractmethod
    def export_config(self) -> dict:
        """The model config written as ``config.json`` in every checkpoint (what ``from_pretrained`` reads)."""

    def preview(self, batch: Any, step: int, tracker: Tracker) -> None:
        """Log previews (e.g. ``tracker.log_audio``) every ``preview_every`` steps; main process, no grad."""
        return  # an optional hook: no previews

    def on_prepared(self, accelerator: Accelerator) -> None:
        """Called once the modules are on their device (e.g. to move frozen teachers there too)."""
        return  # an optional hook

    def check_resume(self, folder: Path) -> None:
        """Raise a LoditError if checkpoint ``folder`` must not be continued with this task's data
        (e.g. a DiT checkpoint trained on latents of another tokenizer); called before loading it."""
        return  # an optional hook: every checkpoint may be continued

    # ------------------------------------------------------------------ set by the trainer

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    def trained(self, name: str = MODEL_NAME) -> nn.Module:
        """Trained module ``name`` as prepared for training (wrapped for gradient sync on multi-GPU)."""
        if self._prepared is not None:
            return self._prepared[name]
        return self.modules()[name]

    def bind(self, accelerator: Accelerator, prepared: Mapping[str, nn.Module], ema: EMA | None) -> None:
        self.accelerator = accelerator
        self._prepared = dict(prepared)
        self.ema = ema


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    step: int
    scalars: dict[str, float]
    run_dir: Path
    checkpoint: Path | None
    final: Path | None = None
    skipped_steps: dict[str, int] = field(default_factory=dict)
    out_of_time: bool = False  # stopped by training.max_minutes before max_steps
    unsaved_bad_steps: int = 0  # the run ended inside this many skipped steps, so its end was not saved


def _reset_accelerate_if_other(precision: str, dynamo_backend: str) -> None:
    """Forget accelerate's process-wide state when it was set up with another precision or compiler.

    accelerate keeps one state per process, set by the first ``Accelerator``; a second Trainer in
    the same process (tests, notebooks, sweeps) must still get the precision and compilation its
    config asks for. The state is read through accelerate's public API; resetting it has none, so
    this is the one call of a private accelerate function in lodit (``AcceleratorState._reset_state``,
    present through accelerate 1.x, which the dependency pin bounds). The process group
    (PartialState) is kept.
    """
    if not accelerate_state_initialized():
        return
    state = AcceleratorState()
    backend = state.dynamo_plugin.backend.value if state.dynamo_plugin is not None else dynamo_backend
    if state.mixed_precision != precision or backend != dynamo_backend:
        AcceleratorState._reset_state()


def make_accelerator(config: TrainingConfig, **kwargs: Any) -> Accelerator:
    """An ``Accelerator`` with the config's precision, compilation and accumulation (extra ``kwargs`` pass through)."""
    precision = config.resolved_mixed_precision()
    dynamo_backend = config.compile_backend.upper() if config.compile else "NO"
    _reset_accelerate_if_other(precision, dynamo_backend)
    try:
        return Accelerator(
            mixed_precision=precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
            dynamo_backend=dynamo_backend, **kwargs,
        )
    except ValueError as exc:  # e.g. fp16 on a machine without a GPU
        reason = " ".join(str(exc).split())
        raise LoditError(f"mixed_precision={precision!r} is not available here ({reason})") from None


class Trainer:
    """Runs a :class:`TrainTask` to ``config.max_steps``, checkpointing into ``run_dir``.

    ``resume=True`` continues from the newest checkpoint in ``run_dir`` if there is one;
    ``resume="path/to/checkpoints/step-…"`` continues from that one; ``resume=False`` starts fresh
    and refuses a ``run_dir`` that already has checkpoints. ``resolved_config`` (the trainer's whole
    config) is written to ``run_dir/config.yaml``; without it the TrainingConfig is.
    """

    def __init__(
        self,
        config: TrainingConfig,
        run_dir: str | Path,
        task: TrainTask,
        loader: ResumableLoader,
        *,
        resolved_config: Any = None,
        resume: bool | str | Path = True,
        accelerator: Accelerator | None = None,
    ):
        self.config = config
        self.run_dir = check_output_folder(run_dir, "run folder")
        self.task = task
        self.loader = loader
        self.resolved_config = resolved_config
        self.resume = resume
        self.accelerator = accelerator or make_accelerator(config)
        if self.accelerator.device.type == "cpu":
            flush_denormals()  # process-wide, as the lodit command does
        if self.accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
            raise LoditError(
                f"the accelerator accumulates {self.accelerator.gradient_accumulation_steps} micro-batches but "
                f"gradient_accumulation_steps is {config.gradient_accumulation_steps}; make them agree"
            )

        modules = dict(task.modules())
        _check_modules(modules, config)
        self.names = list(modules)
        self.trainable = {name: [p for p in m.parameters() if p.requires_grad] for name, m in modules.items()}
        raw_optimizers = {name: self._make_optimizer(name) for name in self.names}
        # Schedulers stay outside accelerator.prepare: a prepared scheduler steps once per process,
        # while ours must follow the global step whatever the number of processes.
        self.schedulers = {name: make_scheduler(opt, config) for name, opt in raw_optimizers.items()}
        prepared = self.accelerator.prepare(*modules.values(), *raw_optimizers.values())
        count = len(self.names)
        self.prepared = dict(zip(self.names, prepared[:count]))
        self.optimizers = dict(zip(self.names, prepared[count:]))
        # keep_torch_compile=False: checkpoints, EMA and previews use the plain modules.
        self.modules = {
            name: self.accelerator.unwrap_model(m, keep_torch_compile=False) for name, m in self.prepared.items()
        }

        model = self.modules[MODEL_NAME]
        self.ema = EMA(model, config.ema_decay, warmup=config.ema_warmup) if config.ema_decay > 0 else None
        self.guard = NonFiniteGuard(config.max_bad_steps)
        self.tracker = Tracker(self.run_dir / LOG_DIR, enabled=self.accelerator.is_main_process)
        self.loader.shard(self.accelerator.num_processes, self.accelerator.process_index)
        self.step = 0
        self.last_checkpoint: Path | None = None
        task.bind(self.accelerator, self.prepared, self.ema)
        task.on_prepared(self.accelerator)

    # ------------------------------------------------------------------ public

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train to ``config.max_steps`` (resuming first if asked) and return a summary.

        ``stop_at`` ends this call early, with a checkpoint, after that step (e.g. for jobs with a
        time limit); the LR schedule still runs to ``max_steps`` and a later ``fit()`` resumes.
        The ``final/`` export is written when ``max_steps`` is reached, and when the wall-clock
        budget ``max_minutes`` runs out first (the run's result for its budget; a later ``fit()``
        continues towards ``max_steps``).
        """
        cfg = self.config
        acc = self.accelerator
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        self.step = self._start()
        started = time.monotonic()  # the budget counts training, not set-up or resuming
        out_of_time = False
        for module in self.prepared.values():
            module.train()
        if acc.device.type == "cpu":
            if acc.num_processes == 1:  # several processes would count each other as the other load
                rechoose_threads()
            if acc.is_main_process:
                log.info("train: %s", describe(self.loader.num_workers))
        progress = Progress(cfg.max_steps, initial=self.step, enabled=acc.is_main_process, print_every=cfg.log_every)
        window = _ScalarWindow()
        logged: dict[str, float] = {}
        try:
            with _CtrlC(acc.is_main_process) as ctrl_c:
                while self.step < end:
                    position = self.loader.state_dict()
                    try:
                        batches = [self._next_batch() for _ in range(cfg.gradient_accumulation_steps)]
                    except Exception:
                        if not ctrl_c.requested:
                            raise
                        # A data worker stopped by the same Ctrl-C: the step never ran, save what was.
                        self.loader.load_state_dict(position)
                        self._stop_for_ctrl_c()
                    try:
                        window.add(self._train_step(self.step, batches))
                    except LoditError as exc:
                        if not self._diverged():
                            raise
                        raise LoditError(f"{exc}; {self._last_good_advice()}") from None
                    self.step += 1
                    if self.step % cfg.log_every == 0 or self.step == end:
                        logged = self._log(window)
                    progress.update(self.step, logged)
                    if cfg.preview_every and self.step % cfg.preview_every == 0:
                        self._preview(batches[-1], self.step)
                    out_of_time = self._budget_spent(started)
                    if self.step % cfg.checkpoint_every == 0 or self.step == end or out_of_time:
                        self._save_unless_bad()
                    if self._agree(ctrl_c.requested):
                        self._stop_for_ctrl_c()
                    if out_of_time:
                        break
        finally:
            progress.close()
            self.tracker.flush()
        if self.last_checkpoint != checkpoint_path(self.run_dir, self.step):
            # nothing ran (resumed at the end from elsewhere): the run still gets its checkpoint
            self._save_unless_bad()
        out_of_time = out_of_time and self.step < end
        bad = self._bad_run_length()
        final = None
        if (self.step >= cfg.max_steps or out_of_time) and not bad:
            final = self.export_final()
        self.tracker.close()
        return TrainResult(
            step=self.step,
            scalars=logged,
            run_dir=self.run_dir,
            checkpoint=self.last_checkpoint,
            final=final,
            skipped_steps=dict(self.guard.skipped),
            out_of_time=out_of_time,
            unsaved_bad_steps=bad,
        )

    # ------------------------------------------------------------------ skipped steps and Ctrl-C

    def _bad_run_length(self) -> int:
        """How many steps in a row (of any phase) the guard has just skipped; 0 when the last one was good."""
        return max(self.guard.consecutive.values(), default=0)

    def _diverged(self) -> bool:
        return self._bad_run_length() >= self.guard.max_bad_steps

    def _save_unless_bad(self) -> Path | None:
        """Save a checkpoint, except inside a run of skipped (non-finite) steps.

        Weights at such a moment come from the steps just before a divergence (often already huge);
        a checkpoint of them would be what the next run resumes from, and fail again at once.
        """
        if self._bad_run_length():
            if self.accelerator.is_main_process:
                log.warning("train: no checkpoint at step %d: the last %d steps were skipped as non-finite",
                            self.step, self._bad_run_length())
            return None
        return self.save_checkpoint()

    def _last_good_advice(self) -> str:
        good = latest_checkpoint(self.run_dir)
        if good is None:
            return ("no checkpoint was saved before it; after changing the settings, run the same command again "
                    "to start over")
        return (f"the last good checkpoint is {good} (step {checkpoint_step(good)}; none is saved during skipped "
                "steps): after changing the settings, run the same command again to resume from it")

    def _agree(self, flag: bool) -> bool:
        """``flag`` on any process (so all of them stop at the same step)."""
        if self.accelerator.num_processes > 1:
            value = torch.tensor([float(flag)], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(value, reduction="sum").item() > 0)
        return flag

    def _stop_for_ctrl_c(self) -> None:
        """After the first Ctrl-C: save the current step (unless it is inside skipped steps) and stop."""
        if self.last_checkpoint == checkpoint_path(self.run_dir, self.step):
            saved: Path | None = self.last_checkpoint
        else:
            saved = self._save_unless_bad()
        if saved is not None:
            raise KeyboardInterrupt(f"checkpoint of step {self.step} saved in {saved}; run the same command "
                                    "again to continue")
        good = latest_checkpoint(self.run_dir)
        where = f"the newest good one is {good}" if good is not None else "there is no earlier one"
        raise KeyboardInterrupt(f"step {self.step} not saved (inside skipped non-finite steps); {where}")

    def _budget_spent(self, started: float) -> bool:
        """Whether ``max_minutes`` have passed since ``started`` (the main process decides for all)."""
        if not self.config.max_minutes:
            return False
        spent = time.monotonic() - started >= self.config.max_minutes * 60
        if self.accelerator.num_processes > 1:  # clocks differ a little: every process must stop at the same step
            flag = torch.tensor([float(spent)], device=self.accelerator.device)
            spent = bool(broadcast(flag, from_process=0).item())
        return spent

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-<step>/`` (main process; every process must call it) and prune old ones."""
        acc = self.accelerator
        acc.wait_for_everyone()
        rng_states = [rng_state()]
        if acc.num_processes > 1:
            rng_states = gather_object(rng_states)  # one entry per process, in process order
        folder = checkpoint_path(self.run_dir, self.step)
        if acc.is_main_process:
            weights = {name: module.state_dict() for name, module in self.modules.items()}
            if self.ema is not None:
                weights[EMA_NAME] = self.ema.state_dict()
            optimizer_state = {
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            }
            state = {
                "step": self.step,
                "data": self.loader.state_dict(),
                "guard": self.guard.state_dict(),
                "ema_updates": self.ema.num_updates if self.ema is not None else 0,
                "modules": self.names,
                "num_processes": acc.num_processes,
                "rng": rng_states,
                "lodit_version": __version__,
                "training": to_dict(self.config),
            }
            save_checkpoint(
                folder,
                config=self.task.export_config(),
                weights=weights,
                optimizer_state=optimizer_state,
                state=state,
            )
            prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        self.last_checkpoint = folder
        return folder

    def export_final(self) -> Path:
        """Write the stable ``final/`` export (config + model + EMA weights) from the current weights."""
        acc = self.accelerator
        acc.wait_for_everyone()
        folder = self.run_dir / "final"
        if acc.is_main_process:
            export_final(
                self.run_dir,
                config=self.task.export_config(),
                model=self.modules[MODEL_NAME].state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
            )
        acc.wait_for_everyone()
        return folder

    # ------------------------------------------------------------------ set-up and resume

    def _make_optimizer(self, name: str) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.trainable[name]
        if not params:
            raise LoditError(
                f"trained module '{name}' has no parameters that require gradients; "
                "return only trained modules from modules() (keep frozen ones as plain attributes)"
            )
        # fused: one kernel over all parameters; on CPU the default foreach AdamW was ~6x slower
        # (benchmarks/RESULTS.md, DiT speed), which matters with adaLN's many small tensors.
        groups = [{"params": group, "weight_decay": decay} for group, decay in _decay_groups(params, cfg.weight_decay)]
        return torch.optim.AdamW(groups, lr=cfg.lr_for(name), betas=tuple(cfg.betas), eps=cfg.eps, fused=True)

    def _start(self) -> int:
        """Resume or seed a fresh run; write the resolved config; return the first step to run."""
        acc = self.accelerator
        folder = self._resume_folder()
        if folder is None:
            seed_everything(self.config.seed + acc.process_index)
            start = 0
        else:
            if self.resume is True:
                folder, start = self._restore_newest_readable()
            else:
                start = self._restore(folder)
            if acc.is_main_process:
                log.info("resuming from %s (step %d)", folder, start)
        if acc.is_main_process:
            save_config(self.resolved_config if self.resolved_config is not None else self.config,
                        self.run_dir / RUN_CONFIG_FILE)
        return start

    def _resume_folder(self) -> Path | None:
        latest = latest_checkpoint(self.run_dir)
        if self.resume is True:
            return latest
        if self.resume is False:
            if latest is not None:
                raise LoditError(
                    f"{self.run_dir} already has checkpoints (newest {latest.name}); "
                    "resume from them or choose a new run directory"
                )
            return None
        folder = Path(self.resume)
        if not folder.is_dir():
            raise LoditError(f"{folder}: checkpoint folder not found; pass a <run>/checkpoints/step-* folder")
        return folder

    def _restore_newest_readable(self) -> tuple[Path, int]:
        """Restore the newest checkpoint that loads; damaged newer ones are moved aside (and said so).

        A crash or a full disk can damage the newest checkpoint after it was renamed into place
        (e.g. a file truncated by a failing disk); the one before it is then the place to resume.
        If none loads, the newest one's error is raised: a checkpoint that doesn't fit this run's
        config fails the same way for every checkpoint, and that is the error to see.
        """
        found = list_checkpoints(self.run_dir)
        damaged: list[tuple[Path, LoditError]] = []
        for folder in reversed(found):
            try:
                step = self._restore(folder)
            except LoditError as exc:
                damaged.append((folder, exc))
                continue
            if self.accelerator.is_main_process:
                for bad, exc in damaged:
                    aside = bad.with_name(f"damaged-{bad.name}")
                    os.replace(bad, aside)  # out of the step-* names, so no later resume tries it again
                    log.warning("train: %s could not be loaded (%s); moved it to %s and resumed from the previous "
                                "checkpoint", bad, " ".join(str(exc).split())[:200], aside.name)
            self.accelerator.wait_for_everyone()
            return folder, step
        raise damaged[0][1]

    def _restore(self, folder: Path) -> int:
        """Load everything a checkpoint holds; return its step."""
        acc = self.accelerator
        self.task.check_resume(folder)
        state = read_state(folder)
        saved_modules = state.get("modules", [])
        if sorted(saved_modules) != sorted(self.names):
            raise LoditError(
                f"{folder}: trained modules {saved_modules} but this trainer has {self.names}; "
                "resume with the trainer (and config) that wrote the checkpoint"
            )
        for name, module in self.modules.items():
            load_weights(folder / f"{name}.safetensors", module)
        if self.ema is not None:
            ema_file = folder / f"{EMA_NAME}.safetensors"
            if ema_file.is_file():
                found = read_weights(ema_file)
                check_compatible(self.ema.state_dict(), found, ema_file)
                self.ema.load_state_dict(found)
                self.ema.num_updates = int(state.get("ema_updates", 0))
            else:  # EMA switched on for a resumed run: start the average at the loaded weights
                self.ema.load_state_dict(self.modules[MODEL_NAME].state_dict())
                self.ema.num_updates = 0

        training = read_optimizer_state(folder)
        for name, optimizer in self.optimizers.items():
            try:
                optimizer.load_state_dict(_regrouped(training["optimizers"][name], self.trainable[name],
                                                     self.config.weight_decay))
                self.schedulers[name].load_state_dict(training["schedulers"][name])
            except (KeyError, ValueError) as exc:
                raise LoditError(
                    f"{folder / OPTIMIZER_FILE}: the optimizer state of '{name}' does not fit "
                    f"({' '.join(str(exc).split())}); resume with the same modules and frozen parameters"
                ) from None
        if acc.scaler is not None and training.get("scaler"):
            acc.scaler.load_state_dict(training["scaler"])
        self._apply_current_schedule()

        self.loader.load_state_dict(state["data"])
        self.guard.load_state_dict(state.get("guard", {}))
        step = int(state["step"])
        if folder.resolve() == checkpoint_path(self.run_dir, step).resolve():
            self.last_checkpoint = checkpoint_path(self.run_dir, step)
        rng_states = state.get("rng", [])
        if len(rng_states) == acc.num_processes:
            set_rng_state(rng_states[acc.process_index])
        else:
            log.warning("%s was written by %d process(es), this run has %d: random streams are re-seeded, so the "
                        "run will not repeat the original one exactly", folder, len(rng_states), acc.num_processes)
            seed_everything(self.config.seed + acc.process_index + 1_000_003 * step)
        return step

    def _apply_current_schedule(self) -> None:
        """Recompute every learning rate from the current config at the restored scheduler position.

        The saved optimizer holds the rate the *old* config scheduled for the next step; a resumed
        run whose ``lr`` or ``max_steps`` changed must use its own. The product is computed exactly as
        ``LambdaLR`` does (base rate times :func:`lr_factor` of the scheduler's position: the schedulers
        are made by :func:`make_scheduler` from this config), so an unchanged config gives
        bit-identical rates. The logged rate is read from the optimizer, so it is the new one at once.
        """
        for name, scheduler in self.schedulers.items():
            base = self.config.lr_for(name)
            scheduler.base_lrs = [base] * len(scheduler.base_lrs)
            rate = base * lr_factor(scheduler.last_epoch, self.config)
            for group in scheduler.optimizer.param_groups:
                group["initial_lr"] = base
                group["lr"] = rate

    # ------------------------------------------------------------------ one step

    def _next_batch(self) -> Any:
        return send_to_device(next(self.loader), self.accelerator.device, non_blocking=self.loader.pin_memory)

    def _train_step(self, step: int, batches: list[Any]) -> dict[str, float]:
        scalars: dict[str, float] = {}
        model_stepped = False
        for phase in self.task.phases(step):
            if phase not in self.prepared:
                raise ValueError(f"task.phases({step}) names {phase!r}, which is not a trained module {self.names}")
            stepped = self._train_phase(phase, step, batches, scalars)
            model_stepped = model_stepped or (stepped and phase == MODEL_NAME)
        for name, scheduler in self.schedulers.items():
            scalars[f"{name}/lr"] = scheduler.optimizer.param_groups[0]["lr"]  # the rate this step used
            with warnings.catch_warnings():
                # a module whose first phase comes later (a GAN discriminator) has never stepped yet
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                scheduler.step()
        if self.ema is not None and model_stepped:
            self.ema.update(self.modules[MODEL_NAME])
        return scalars

    def _train_phase(self, phase: str, step: int, batches: list[Any], scalars: dict[str, float]) -> bool:
        """Accumulate, clip, guard and step one module; True if its optimizer stepped."""
        acc = self.accelerator
        module = self.prepared[phase]
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=acc.device)
        task_scalars: dict[str, float] = {}
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            # gradients are all-reduced only on the last micro-batch of a step
            with nullcontext() if last else acc.no_sync(module):
                loss, logs = self.task.loss(phase, batch, step)
                acc.backward(loss)  # divides by gradient_accumulation_steps
            loss_sum += loss.detach().float()
            for key, value in (logs or {}).items():
                task_scalars[key] = task_scalars.get(key, 0.0) + float(value) / len(batches)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = acc.clip_grad_norm_(self.trainable[phase], max_norm)
        status = torch.stack([loss_sum / len(batches), torch.as_tensor(grad_norm, device=acc.device).float()])
        if acc.num_processes > 1:
            # every process must take the same decision, and a non-finite loss on one is enough
            status = acc.reduce(status, reduction="mean")
        loss_value, norm_value = status.tolist()
        if not self.guard.check(phase, step, loss_value, norm_value):
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            if acc.scaler is not None:
                acc.scaler.update()  # lets fp16 loss scaling back off after an overflow
            return False
        self.optimizers[phase].step()
        scalars[f"{phase}/loss"] = loss_value
        scalars[f"{phase}/grad_norm"] = norm_value
        for key, value in task_scalars.items():
            scalars[f"{phase}/{key}"] = value
        return True

    # ------------------------------------------------------------------ logging and previews

    def _log(self, window: _ScalarWindow) -> dict[str, float]:
        means = window.means()
        if self.accelerator.num_processes > 1:
            means = _average_dicts(gather_object([means]))
        means["train/steps_per_second"] = window.steps_per_second()
        for name in self.names:
            means[f"{name}/skipped_steps"] = float(self.guard.skipped.get(name, 0))
        window.clear()
        self.tracker.log_scalars(means, self.step)
        return means

    def _preview(self, batch: Any, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        saved = rng_state()  # previews must not shift the training run's random streams
        try:
            with torch.no_grad():
                self.task.preview(batch, step, self.tracker)
        finally:
            set_rng_state(saved)
            for module in self.prepared.values():
                module.train()


class _CtrlC:
    """While active, the first SIGINT only sets :attr:`requested` (the loop saves and stops after
    the step in flight); a second one raises ``KeyboardInterrupt`` at once, as usual."""

    def __init__(self, announce: bool):
        self.announce = announce
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _CtrlC:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
            # None: a handler installed outside Python; restoring Python's default is the closest
            self._previous = previous if previous is not None else signal.default_int_handler
            self._installed = True
        except ValueError:  # not the main thread: Ctrl-C keeps its default meaning
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous)
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            log.warning("\nCtrl-C: saving a checkpoint after this step (press Ctrl-C again to exit at once)")


class _ScalarWindow:
    """Means of the scalars logged between two log steps (each key over the steps that had it)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.started = time.monotonic()

    def add(self, scalars: Mapping[str, float]) -> None:
        self.steps += 1
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}

    def steps_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.steps / elapsed if elapsed > 0 else 0.0


def _average_dicts(dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in sorted(keys)}


def _check_modules(modules: Mapping[str, nn.Module], config: TrainingConfig) -> None:
    if MODEL_NAME not in modules:
        raise ValueError(f"task.modules() must include {MODEL_NAME!r} (the exported module), got {sorted(modules)}")
    for name in modules:
        if name in RESERVED_NAMES or not name.isidentifier():
            raise ValueError(f"trained module name {name!r} is not allowed (reserved: {sorted(RESERVED_NAMES)})")
    unknown = sorted(set(config.module_lr) - set(modules))
    if unknown:
        raise LoditError(f"module_lr names {unknown}, but the trained modules are {sorted(modules)}; fix the keys")


def _decay_groups(
    params: list[torch.nn.Parameter], weight_decay: float
) -> list[tuple[list[torch.nn.Parameter], float]]:
    """AdamW's parameter groups with their weight decay: decay only on tensors with 2+ dimensions
    (weight matrices, conv kernels, embeddings), none on biases, norm gains and other vectors, as
    usual for transformers. Without decay, one group of everything."""
    if weight_decay == 0:
        return [(list(params), 0.0)]
    return [([p for p in params if p.dim() >= 2], weight_decay), ([p for p in params if p.dim() < 2], 0.0)]


def _regrouped(saved: dict[str, Any], params: list[torch.nn.Parameter], weight_decay: float) -> dict[str, Any]:
    """A saved AdamW state in the grouping :func:`_decay_groups` gives now.

    A run saved with one group (no decay, or before decay skipped vectors) resumed with decay, or
    the other way round, keeps every parameter's moments: the per-parameter state is renumbered
    from the saved order of the parameters to the current one.
    """
    groups = saved["param_groups"]
    now = _decay_groups(params, weight_decay)
    if len(groups) == len(now) or len(groups) not in (1, 2):
        return saved  # the same grouping (or one torch will refuse with its own message)
    before = _decay_groups(params, 1.0 if len(groups) == 2 else 0.0)
    position = {id(p): i for i, p in enumerate(p for group, _ in now for p in group)}
    renumber = {old: position[id(p)] for old, p in enumerate(p for group, _ in before for p in group)}
    state = {renumber[int(index)]: value for index, value in saved["state"].items()}
    template = {key: value for key, value in groups[0].items() if key not in ("params", "weight_decay")}
    start, param_groups = 0, []
    for group, decay in now:
        param_groups.append({**template, "weight_decay": decay, "params": list(range(start, start + len(group)))})
        start += len(group)
    return {"state": state, "param_groups": param_groups}

