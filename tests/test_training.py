"""Training plumbing: LR schedule, EMA, NaN guard, atomic checkpoints, resumable data, logging and
the trainer's exact resume (a GAN-like two-module task with dropout, shuffling, EMA, accumulation)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import lodit.training.checkpoint as checkpoint_module
from lodit.config import load_yaml
from lodit.errors import LoditError
from lodit.training import (
    EMA,
    NonFiniteGuard,
    Progress,
    ResumableLoader,
    Tracker,
    Trainer,
    TrainingConfig,
    TrainTask,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    lr_factor,
    make_scheduler,
    prune_checkpoints,
    read_optimizer_state,
    read_state,
    read_weights,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

# --------------------------------------------------------------------------- a tiny GAN-like task


class PairDataset(Dataset):
    """Random (x, y) regression pairs, fixed by a seed."""

    def __init__(self, n: int = 20, dim: int = 3, seed: int = 123):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.randn(n, dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "name": f"item{i}"}


def collate(items: list[dict]) -> dict:
    return {
        "x": torch.stack([it["x"] for it in items]),
        "y": torch.stack([it["y"] for it in items]),
        "names": [it["name"] for it in items],
    }


def mlp(dim: int = 3, hidden: int = 8, out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, out))


class GanLikeTask(TrainTask):
    """A generator ("model") and a critic ("discriminator"); adversarial phases from step 2 on."""

    def __init__(self, hidden: int = 8, nan_steps: frozenset[int] = frozenset(), always_nan: bool = False):
        self.model = mlp(hidden=hidden)
        self.discriminator = mlp(out=1)
        self.nan_steps = nan_steps
        self.always_nan = always_nan
        self.previews = []

    def modules(self):
        return {"model": self.model, "discriminator": self.discriminator}

    def phases(self, step):
        return ("model",) if step < 2 else ("discriminator", "model")

    def loss(self, phase, batch, step):
        assert isinstance(batch["names"][0], str) and batch["x"].device.type == self.device.type
        fake = self.trained("model")(batch["x"])
        if phase == "discriminator":
            critic = self.trained("discriminator")(torch.cat([batch["y"], fake.detach()]))  # one call: DDP-friendly
            real, gen = critic.chunk(2)
            loss = torch.relu(1 - real).mean() + torch.relu(1 + gen).mean()
            return loss, {"real": real.mean().item()}
        loss = nn.functional.mse_loss(fake, batch["y"])
        if step >= 2:
            loss = loss - 0.1 * self.trained("discriminator")(fake).mean()
        if self.always_nan or step in self.nan_steps:
            loss = loss * float("nan")
        return loss, {"mse": nn.functional.mse_loss(fake, batch["y"]).item()}

    def export_config(self):
        return {"kind": "tiny-mlp", "hidden": self.model[0].out_features}

    def preview(self, batch, step, tracker):
        self.previews.append(step)
        torch.rand(100)  # must not shift the training run's random stream
        tracker.log_audio("preview/noise", torch.rand(1, 800) * 2 - 1, 8000, step)


def make_trainer(run_dir, *, task=None, resume=True, seed_model=0, **overrides):
    settings = {
        "max_steps": 8, "lr": 1e-2, "warmup_steps": 2, "grad_clip": 0.5, "ema_decay": 0.9, "ema_warmup": True,
        "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 2, "batch_size": 4, "seed": 7,
        "gradient_accumulation_steps": 2, "module_lr": {"discriminator": 2e-2},
    }
    settings.update(overrides)
    config = TrainingConfig(**settings)
    torch.manual_seed(seed_model)
    task = task or GanLikeTask()
    loader = ResumableLoader(PairDataset(), collate, batch_size=config.batch_size, seed=config.seed)
    return Trainer(config, run_dir, task, loader, resume=resume)


def optimizer_tensors(trainer):
    out = {}
    for name, opt in trainer.optimizers.items():
        for i, state in enumerate(opt.state_dict()["state"].values()):
            for key, value in state.items():
                out[f"{name}.{i}.{key}"] = value
        out[f"{name}.lr"] = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64)
    return out


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_exact_resume_matches_uninterrupted_run(tmp_path, schedule):
    # run A also makes previews (which draw random numbers): they must not shift the trajectory
    straight = make_trainer(tmp_path / "a", lr_schedule=schedule, preview_every=3)
    result_a = straight.fit()
    assert straight.task.previews == [3, 6]
    assert result_a.step == 8 and result_a.checkpoint == tmp_path / "a/checkpoints/step-00000008"

    if schedule == "constant":  # interrupted by a shorter max_steps (warm-up only: same rates as run A)
        first_half = make_trainer(tmp_path / "b", lr_schedule=schedule, max_steps=4)
        assert first_half.fit().step == 4
    else:  # a cosine depends on max_steps: interrupt with stop_at instead
        first_half = make_trainer(tmp_path / "b", lr_schedule=schedule, checkpoint_every=3)
        partial = first_half.fit(stop_at=4)
        assert partial.step == 4 and partial.final is None
        assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-00000003", "step-00000004"]
    resumed = make_trainer(tmp_path / "b", lr_schedule=schedule, seed_model=99)  # other init: all from the checkpoint
    result_b = resumed.fit()
    assert result_b.step == 8

    for name in ("model", "discriminator"):
        a_state, b_state = straight.modules[name].state_dict(), resumed.modules[name].state_dict()
        for key in a_state:
            assert torch.equal(a_state[key], b_state[key]), f"{name}.{key} differs after resume"
    ema_a, ema_b = straight.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert straight.ema.num_updates == resumed.ema.num_updates == 8
    opt_a, opt_b = optimizer_tensors(straight), optimizer_tensors(resumed)
    assert opt_a.keys() == opt_b.keys() and all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    assert straight.loader.state_dict() == resumed.loader.state_dict() == {"epoch": 3, "batches_in_epoch": 1}
    assert result_a.scalars.keys() == result_b.scalars.keys()
    assert result_a.scalars["model/loss"] == result_b.scalars["model/loss"]

    # the step-8 checkpoints of both runs hold the same weights, and the run folder is complete
    for name in ("model", "discriminator", "ema"):
        a = read_weights(tmp_path / f"a/checkpoints/step-00000008/{name}.safetensors")
        b = read_weights(tmp_path / f"b/checkpoints/step-00000008/{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    folder = result_b.checkpoint
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "discriminator.safetensors", "ema.safetensors", "model.safetensors", "optimizer.pt", "state.json"
    ]
    assert json.loads((folder / "config.json").read_text()) == {"kind": "tiny-mlp", "hidden": 8}
    state = read_state(folder)
    assert state["step"] == 8 and state["lodit_version"] and state["training"]["max_steps"] == 8
    assert state["guard"] == {"consecutive": {"discriminator": 0, "model": 0}, "skipped": {}}
    assert set(read_optimizer_state(folder)) == {"optimizers", "schedulers", "scaler"}
    final_files = sorted(p.name for p in (tmp_path / "b/final").iterdir())
    assert final_files == ["config.json", "ema.safetensors", "model.safetensors"]
    assert load_yaml(tmp_path / "b/config.yaml")["max_steps"] == 8


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    make_trainer(tmp_path, max_steps=2, checkpoint_every=2, log_every=1).fit()
    wider = make_trainer(tmp_path, task=GanLikeTask(hidden=16), max_steps=4)
    mismatch = r"model\.safetensors: does not fit the model \(shape mismatch: 0\.weight \[8, 3\]"
    with pytest.raises(LoditError, match=mismatch):
        wider.fit()
    with pytest.raises(LoditError, match=r"missing keys: 4\.weight, 4\.bias; unexpected keys: 3\.bias, 3\.weight"):
        other = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(), nn.Identity(), nn.Linear(8, 3))
        load_weights(tmp_path / "final/model.safetensors", other)
    with pytest.raises(LoditError, match="already has checkpoints"):
        make_trainer(tmp_path, resume=False).fit()
    with pytest.raises(LoditError, match="module_lr names"):
        make_trainer(tmp_path / "other", module_lr={"generator": 1e-3})


def test_resume_uses_the_current_lr_schedule(tmp_path):
    make_trainer(tmp_path, max_steps=3, checkpoint_every=3, gradient_accumulation_steps=1).fit()
    longer = make_trainer(tmp_path, max_steps=6, lr=3e-2, module_lr={}, gradient_accumulation_steps=1)
    result = longer.fit(stop_at=3)  # loads the step-3 checkpoint (saved with a rate of 0 next), runs nothing
    assert result.step == 3 and result.final is None
    expected = 3e-2 * lr_factor(3, longer.config)
    assert 0 < expected < 3e-2
    for name in ("model", "discriminator"):
        assert longer.optimizers[name].param_groups[0]["lr"] == pytest.approx(expected)


# --------------------------------------------------------------------------- guard, pruning, previews


def test_guard_skips_bad_steps_and_training_goes_on(tmp_path):
    trainer = make_trainer(
        tmp_path, task=GanLikeTask(nan_steps=frozenset({1})), max_steps=5, checkpoint_every=1, keep_checkpoints=2,
        preview_every=2, gradient_accumulation_steps=1, ema_decay=0.5,
    )
    result = trainer.fit()
    assert result.step == 5 and result.skipped_steps == {"model": 1}
    assert trainer.ema.num_updates == 4  # the skipped step did not move the EMA
    assert math.isfinite(result.scalars["model/loss"]) and result.scalars["model/skipped_steps"] == 1.0
    assert [checkpoint_module.checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [4, 5]  # pruned to 2
    assert trainer.task.previews == [2, 4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [e.step for e in events.Scalars("model/loss")] == [2, 4, 5]
    assert [e.value for e in events.Scalars("model/skipped_steps")] == [1.0, 1.0, 1.0]
    assert events.Tags()["audio"] == ["preview/noise"]
    assert all(torch.isfinite(p).all() for p in trainer.modules["model"].parameters())


def test_guard_raises_after_max_bad_steps(tmp_path):
    task = GanLikeTask(always_nan=True)
    trainer = make_trainer(tmp_path, task=task, max_bad_steps=3, gradient_accumulation_steps=1)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    diverged = r"'model' loss = nan was not finite for 3 consecutive steps.*lower the learning rate"
    with pytest.raises(LoditError, match=diverged):
        trainer.fit()
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())  # no step was taken
    assert latest_checkpoint(tmp_path) is None

    guard = NonFiniteGuard(2)
    assert guard.check("d", 0, 1.0, 2.0) and not guard.check("d", 1, 1.0, float("inf"))
    assert guard.check("d", 2, 1.0, 1.0)  # a good step resets the consecutive count
    assert not guard.check("d", 3, float("nan"), 1.0)
    with pytest.raises(LoditError, match="gradient norm = inf"):
        guard.check("d", 4, 1.0, float("inf"))
    assert guard.state_dict() == {"consecutive": {"d": 2}, "skipped": {"d": 3}}


class NanFromTask(GanLikeTask):
    """Finite losses until ``start``, then NaN for good (a run that diverges at a known step)."""

    def __init__(self, start: int):
        super().__init__()
        self.start = start

    def loss(self, phase, batch, step):
        loss, logs = super().loss(phase, batch, step)
        return (loss * float("nan") if step >= self.start else loss), logs


def test_no_checkpoint_inside_skipped_steps_and_divergence_names_the_last_good_one(tmp_path):
    trainer = make_trainer(tmp_path, task=NanFromTask(start=3), max_bad_steps=4, checkpoint_every=1,
                           keep_checkpoints=10, gradient_accumulation_steps=1)
    with pytest.raises(LoditError) as diverged:
        trainer.fit()
    good = tmp_path / "checkpoints" / "step-00000003"
    # steps 0-2 were good (checkpoints 1-3); steps 3-6 were skipped: none of them was saved
    assert [checkpoint_module.checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [1, 2, 3]
    message = str(diverged.value)
    assert "not finite for 4 consecutive steps" in message
    assert f"the last good checkpoint is {good} (step 3" in message and "run the same command again" in message
    assert "\n" not in message


def test_ctrl_c_saves_the_current_step_and_the_run_resumes_exactly(tmp_path):
    import os
    import signal

    class CtrlCAt(GanLikeTask):
        def loss(self, phase, batch, step):
            if step == 4 and phase == "model" and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C would, mid-step
            return super().loss(phase, batch, step)

    straight = make_trainer(tmp_path / "a", checkpoint_every=100)
    straight.fit()
    torch.manual_seed(0)  # the same initial weights as make_trainer's own task
    stopped = make_trainer(tmp_path / "b", task=CtrlCAt(), checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt) as info:
        stopped.fit()
    saved = tmp_path / "b/checkpoints/step-00000005"  # the step in flight finished, then was saved
    assert str(info.value) == f"checkpoint of step 5 saved in {saved}; run the same command again to continue"
    assert latest_checkpoint(tmp_path / "b") == saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the trainer's handler is gone
    resumed = make_trainer(tmp_path / "b", seed_model=5)
    resumed.fit()
    for name in ("model", "discriminator"):
        a, b = straight.modules[name].state_dict(), resumed.modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_second_ctrl_c_exits_at_once(tmp_path):
    import os
    import signal

    class TwoCtrlC(GanLikeTask):
        def loss(self, phase, batch, step):
            if step == 1 and phase == "model":
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # the second one raises here, inside the step
            return super().loss(phase, batch, step)

    trainer = make_trainer(tmp_path, task=TwoCtrlC(), checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt) as info:
        trainer.fit()
    assert str(info.value) == ""  # not the "saved" message: nothing was waited for
    assert latest_checkpoint(tmp_path) is None


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    straight = make_trainer(tmp_path / "a")
    straight.fit()
    first = make_trainer(tmp_path / "b", checkpoint_every=2, keep_checkpoints=3)
    first.fit(stop_at=6)
    newest = tmp_path / "b/checkpoints/step-00000006"
    (newest / "model.safetensors").write_bytes(b"\0" * 10)  # truncated by a failing disk
    resumed = make_trainer(tmp_path / "b", seed_model=3)
    with caplog.at_level("INFO", logger="lodit"):
        resumed.fit()
    err = caplog.text  # the Trainer reports through logging (lodit.status)
    assert "step-00000006" in err and "moved it to damaged-step-00000006" in err
    assert "resuming from" in err and "step-00000004 (step 4)" in err
    assert (tmp_path / "b/checkpoints/damaged-step-00000006").is_dir()
    a, b = straight.modules["model"].state_dict(), resumed.modules["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # when no checkpoint loads, the newest one's own error is the one reported
    for folder in list_checkpoints(tmp_path / "b"):
        (folder / "optimizer.pt").write_bytes(b"not a zip")
    with pytest.raises(LoditError, match="step-00000008/optimizer.pt: unreadable"):
        make_trainer(tmp_path / "b").fit()


def test_unwritable_run_folder_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoditError, match="exists and is a file, not a folder"):
        make_trainer(tmp_path / "file")
    with pytest.raises(LoditError, match="is a file, so no folder can be made under it"):
        make_trainer(tmp_path / "file" / "run")


def test_bf16_on_cpu_then_full_precision_in_one_process(tmp_path):
    bf16 = make_trainer(tmp_path / "bf16", max_steps=2, mixed_precision="bf16", gradient_accumulation_steps=1)
    assert bf16.accelerator.mixed_precision == "bf16" and bf16.fit().step == 2
    fp32 = make_trainer(tmp_path / "fp32", max_steps=2, gradient_accumulation_steps=1)
    assert fp32.accelerator.mixed_precision == "no" and fp32.fit().step == 2


def test_compile_wraps_the_trained_modules_and_saves_plain_weights(tmp_path):
    from accelerate.utils import is_compiled_module

    # aot_eager traces through dynamo + AOTAutograd without generating code: the wiring, fast.
    compiled = make_trainer(tmp_path / "compiled", max_steps=2, gradient_accumulation_steps=1,
                            compile=True, compile_backend="aot_eager")
    assert all(is_compiled_module(m) for m in compiled.prepared.values())
    assert not any(is_compiled_module(m) for m in compiled.modules.values())
    result = compiled.fit()
    eager = make_trainer(tmp_path / "eager", max_steps=2, gradient_accumulation_steps=1)
    assert not any(is_compiled_module(m) for m in eager.prepared.values())  # the process state was reset
    eager_result = eager.fit()
    for name in ("model", "discriminator"):
        saved = read_weights(result.checkpoint / f"{name}.safetensors")
        reference = read_weights(eager_result.checkpoint / f"{name}.safetensors")
        assert saved.keys() == reference.keys()  # no "_orig_mod." prefixes
        for key in saved:
            torch.testing.assert_close(saved[key], reference[key], rtol=1e-5, atol=1e-6)


def test_unknown_compile_backend_is_refused():
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        TrainingConfig(compile=True, compile_backend="turbo")


def _denormals_flushed() -> bool:
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # below float32's smallest normal (1.2e-38)
    return bool((tiny * 1.0).item() == 0.0)


def test_trainer_on_cpu_flushes_denormals(tmp_path):
    was_flushed = _denormals_flushed()
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal is unsupported)")
    try:
        assert not _denormals_flushed()  # the default: denormals are kept (and slow)
        trainer = make_trainer(tmp_path, max_steps=1, gradient_accumulation_steps=1)
        assert trainer.accelerator.device.type == "cpu" and _denormals_flushed()
        assert trainer.fit().step == 1 and _denormals_flushed()
    finally:
        torch.set_flush_denormal(was_flushed)  # leave the process as it was


# --------------------------------------------------------------------------- checkpoint files


def _tiny_checkpoint(folder, value: float, step: int = 1):
    weights = {"model": {"w": torch.full((2, 2), value)}, "discriminator": {"v": torch.zeros(3)}}
    return save_checkpoint(folder, config={"w": value}, weights=weights, optimizer_state={"x": torch.ones(1)},
                           state={"step": step})


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    good = _tiny_checkpoint(root / "step-00000001", 1.0)
    real_save = checkpoint_module.save_file

    def fail_on_discriminator(tensors, path, metadata=None):
        if "discriminator" in str(path):
            raise OSError("disk full")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", fail_on_discriminator)
    # a full disk is a one-line user error that says the earlier checkpoints are intact
    with pytest.raises(
        LoditError, match="step-00000002: could not be written .disk full.; earlier checkpoints are intact"
    ):
        _tiny_checkpoint(root / "step-00000002", 2.0, step=2)
    with pytest.raises(LoditError, match="disk full"):
        _tiny_checkpoint(good, 3.0)  # overwriting an existing checkpoint fails half-way too
    assert [p.name for p in root.iterdir()] == ["step-00000001"]  # no half folder, no temp leftovers
    assert latest_checkpoint(tmp_path) == good
    assert torch.equal(read_weights(good / "model.safetensors")["w"], torch.ones(2, 2))
    assert read_state(good) == {"step": 1}

    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    _tiny_checkpoint(good, 4.0)  # a successful overwrite replaces the folder
    assert torch.equal(read_weights(good / "model.safetensors")["w"], torch.full((2, 2), 4.0))


def test_prune_keeps_newest(tmp_path):
    for step in (3, 1, 10, 2):
        _tiny_checkpoint(tmp_path / "checkpoints" / f"step-{step:08d}", float(step), step)
    (tmp_path / "checkpoints" / ".tmp-step-00000011-123").mkdir()  # leftover of a killed write
    removed = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-00000001", "step-00000002"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003", "step-00000010"]
    assert latest_checkpoint(tmp_path).name == "step-00000010"


def test_unsafe_or_corrupt_files_are_refused(tmp_path):
    folder = _tiny_checkpoint(tmp_path / "ckpt", 1.0)
    torch.save({"evil": object()}, folder / "optimizer.pt")  # needs unpickling of arbitrary objects
    with pytest.raises(LoditError, match=r"optimizer\.pt: holds Python objects other than tensors") as refused:
        read_optimizer_state(folder)
    assert "weights_only" not in str(refused.value)  # lodit never suggests turning the safety off
    (folder / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(LoditError, match=r"optimizer\.pt: unreadable .*resume from an earlier one") as corrupt:
        read_optimizer_state(folder)
    assert "weights_only" not in str(corrupt.value)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoditError, match=r"model\.safetensors: not a readable safetensors file"):
        read_weights(folder / "model.safetensors")
    with pytest.raises(LoditError, match="not a training checkpoint"):
        read_state(tmp_path)


# --------------------------------------------------------------------------- schedule, EMA, RNG


def test_lr_factor_hand_values():
    cfg = TrainingConfig(max_steps=10, warmup_steps=2, min_lr_ratio=0.1, lr=2.0)
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 6: 0.55, 10: 0.1, 14: 0.1}
    for step, factor in expected.items():
        assert lr_factor(step, cfg) == pytest.approx(factor)
    assert lr_factor(4, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    constant = TrainingConfig(max_steps=10, warmup_steps=4, lr_schedule="constant")
    assert [lr_factor(s, constant) for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]

    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_factor(s, cfg) for s in range(7)])
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["last_epoch"] == 7


def test_ema_math_and_swap():
    module = nn.Linear(1, 1, bias=False)
    module.register_buffer("count", torch.tensor(0))
    nn.init.zeros_(module.weight)
    ema = EMA(module, decay=0.5)
    for value, expected in ((2.0, 1.0), (4.0, 2.5), (4.0, 3.25)):
        module.weight.data.fill_(value)
        module.count += 1
        ema.update(module)
        assert ema.state_dict()["weight"].item() == pytest.approx(expected)
    assert ema.state_dict()["count"].item() == 3  # buffers are copied, not averaged
    assert ema.state_dict().keys() == module.state_dict().keys()

    with ema.swapped(module):
        assert module.weight.item() == pytest.approx(3.25)
    assert module.weight.item() == 4.0

    warm = EMA(module, decay=0.99, warmup=True)
    assert [round(warm.current_decay(), 4)] == [0.1]  # (1 + 0) / (10 + 0)
    module.weight.data.fill_(0.0)
    warm.update(module)
    assert warm.state_dict()["weight"].item() == pytest.approx(4.0 * 0.1)
    assert warm.current_decay() == pytest.approx(2 / 11)

    copy = nn.Linear(1, 1, bias=False)
    copy.register_buffer("count", torch.tensor(0))
    ema.copy_to(copy)
    assert copy.weight.item() == pytest.approx(3.25) and copy.count.item() == 3


def test_rng_state_round_trips_through_json():
    seed_everything(5)
    saved = json.loads(json.dumps(rng_state()))
    import random

    import numpy as np

    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(saved)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


# --------------------------------------------------------------------------- data position


class EpochTaggedDataset(Dataset):
    """Items carry the epoch the dataset was set to (checks that set_epoch reaches workers)."""

    def __init__(self, n: int = 10):
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, self.epoch


def _take(loader, count):
    return [tuple(map(tuple, (batch[0].tolist(), batch[1].tolist()))) for batch in (next(loader) for _ in range(count))]


def test_resumable_loader_state_round_trip_with_workers():
    loader = ResumableLoader(EpochTaggedDataset(), batch_size=4, seed=3, num_workers=2)
    assert len(loader) == 3
    before = torch.get_rng_state()
    first = _take(loader, 4)
    assert torch.equal(before, torch.get_rng_state())  # starting epochs never draws from the global RNG
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches_in_epoch": 1}
    rest = _take(loader, 4)

    resumed = ResumableLoader(EpochTaggedDataset(), batch_size=4, seed=3, num_workers=0)
    resumed.load_state_dict(state)
    assert _take(resumed, 4) == rest
    epoch0 = [idx for batch in first[:3] for idx in batch[0]]
    assert sorted(epoch0) == list(range(10)) and epoch0 != list(range(10))  # a shuffled full epoch
    assert {tag for batch in first[3:] + rest for tag in batch[1]} >= {1, 2}  # workers saw set_epoch

    shards = []
    for rank in range(3):
        part = ResumableLoader(EpochTaggedDataset(), batch_size=4, seed=3)
        part.shard(3, rank)
        shards.append(_take(part, 3))
    for step in range(3):
        together = sorted(i for rank in range(3) for i in shards[rank][step][0])
        expected = first[step][0]
        assert set(together) == set(expected) and len(together) == max(3, len(expected))


# --------------------------------------------------------------------------- logging and progress


def test_tensorboard_scalars_and_audio_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(tmp_path / "logs")
    tracker.log_scalars({"model/loss": 1.5}, step=3)
    tracker.log_scalars({"model/loss": 0.5}, step=6)
    tracker.log_audio("preview/sine", torch.sin(torch.arange(1600) / 5.0).reshape(1, 1, -1), 16000, step=6)
    tracker.close()
    Tracker(tmp_path / "silent", enabled=False).log_scalars({"x": 1.0}, 0)
    assert not (tmp_path / "silent").exists()

    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("model/loss")] == [(3, 1.5), (6, 0.5)]
    assert events.Tags()["audio"] == ["preview/sine"]
    assert events.Audio("preview/sine")[0].sample_rate == 16000


def test_progress_prints_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(10, initial=2, print_every=5, stream=stream)
    for step in range(3, 11):
        progress.update(step, {"model/loss": 0.123456, "model/lr": 1e-3})
    progress.close()
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("train step 5/10 (50%)") and lines[1].startswith("train step 10/10")
    assert "step/s" in lines[0] and "ETA" in lines[0] and "model/loss=0.1235" in lines[0]


# --------------------------------------------------------------------------- wall-clock budget


def test_time_budget_stops_with_checkpoint_and_final_then_continues(tmp_path, monkeypatch):
    import lodit.training.loop as loop_module

    trainer = make_trainer(tmp_path / "run", max_minutes=3.0, checkpoint_every=100, max_steps=50)
    # Every finished step takes one "minute": the 3-minute budget is spent by step 3 exactly.
    monkeypatch.setattr(loop_module.time, "monotonic", lambda: 60.0 * trainer.step)
    result = trainer.fit()
    monkeypatch.undo()
    assert result.out_of_time and result.step == 3
    assert result.checkpoint is not None and result.checkpoint.name == "step-00000003"
    assert result.final is not None and (result.final / "config.json").is_file()
    # the same command again trains further: resumed from the budget's checkpoint, not from scratch
    again = make_trainer(tmp_path / "run", max_minutes=0.0, checkpoint_every=100, max_steps=50).fit()
    assert again.step == 50 and not again.out_of_time


def test_no_budget_means_no_time_stop(tmp_path):
    result = make_trainer(tmp_path / "run").fit()
    assert result.step == 8 and not result.out_of_time


def test_negative_budget_is_refused():
    with pytest.raises(ValueError, match="max_minutes"):
        TrainingConfig(max_minutes=-1)


def test_weight_decay_only_on_tensors_with_two_or_more_dims_and_resume_across_groupings(tmp_path):
    decayed = make_trainer(tmp_path / "decay", weight_decay=0.1, max_steps=4)
    for optimizer in decayed.optimizers.values():
        matrices, vectors = optimizer.param_groups
        assert matrices["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in matrices["params"])
        assert vectors["weight_decay"] == 0.0 and all(p.dim() < 2 for p in vectors["params"]) and vectors["params"]
    plain = make_trainer(tmp_path / "plain", max_steps=4)
    assert all(len(o.param_groups) == 1 for o in plain.optimizers.values())

    # A run saved without decay (one group) resumes with decay: every parameter keeps its moments.
    plain.fit()
    saved = {name: {id(p): optimizer.state[p]["exp_avg"].clone() for p in optimizer.param_groups[0]["params"]}
             for name, optimizer in plain.optimizers.items()}
    order = {name: list(plain.trainable[name]) for name in plain.trainable}
    resumed = make_trainer(tmp_path / "plain", weight_decay=0.1, max_steps=8)
    resumed._start()
    for name, optimizer in resumed.optimizers.items():
        assert len(optimizer.param_groups) == 2
        for before, after in zip(order[name], resumed.trainable[name]):
            torch.testing.assert_close(optimizer.state[after]["exp_avg"], saved[name][id(before)], rtol=0, atol=0)
