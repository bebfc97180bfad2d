"""Tokenizer training (waveform autoencoder + GAN) on the shared loop, and the ``lodit train-tokenizer`` command.

:class:`TokenizerTrainConfig` is the whole run: the model (``tokenizer``), the loss weights
(``loss``), the discriminators (``discriminator``), the shared loop settings (``training``) and the
data (``data``). A YAML file in ``configs/tokenizer/`` holds all five sections.

:class:`TokenizerTask` trains two modules, ``"model"`` (the :class:`Tokenizer`, exported) and
``"discriminator"`` (:class:`Discriminators`). Before ``loss.adversarial_start_step`` a step only
updates the tokenizer on the reconstruction (and model) losses; from then on every step first
updates the discriminators on real vs. reconstructed audio (hinge loss), then the tokenizer on
reconstruction + adversarial + feature-matching losses (:class:`TokenizerLoss` weights them all,
including whatever named losses the encoder or bottleneck reports).

The tokenizer's forward pass runs once per step and serves both phases: the discriminator phase
sees the reconstruction detached, the generator phase backpropagates through the same graph. With
``gradient_accumulation_steps > 1`` the forward is recomputed in the generator phase instead,
because keeping one live graph per micro-batch would cost the memory accumulation is meant to
save, and a data-parallel module may not run several forwards before their backwards.

Data: random crops of ``data.segment_seconds`` from the clips of a manifest; shorter clips are
zero-padded and the reconstruction is masked to the real samples, so padding teaches nothing.

Teacher features: an encoder with a frozen semantic teacher (LoSATok) runs it on every crop of
every step unless ``data.teacher_cache`` names a folder. Then, before training, the teacher
computes each clip's whole-clip features once into a
:class:`~lodit.latent_tokenizer.feature_cache.FeatureCache` there (clips already cached, e.g. by an
earlier run with the same teacher and data, are skipped; several processes share the work), random
crops start at multiples of the tokenizer hop, and each batch carries the cached features of its
crops' frames as ``encoder_inputs``, which the task passes to :meth:`Tokenizer.forward` (see
:mod:`lodit.latent_tokenizer.teacher_features`). The teacher is not loaded during training. Cached
features see the whole clip as context, the teacher on the fly only the crop, so the two differ
somewhat for a teacher with long context such as Whisper.

Running: ``lodit train-tokenizer --config configs/tokenizer/default.yaml --manifest M --out RUN``;
running the same command again resumes from the newest checkpoint in ``RUN``. ``--max-steps N``
stops this invocation after global step ``N`` (with a checkpoint; the LR schedule still runs to
``training.max_steps``), so a long run can be cut into jobs. Every checkpoint folder and
``RUN/final`` load with ``Tokenizer.from_pretrained``. Several GPUs: ``accelerate launch -m
lodit.cli train-tokenizer ...`` (``training.batch_size`` is the global batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from lodit.config import to_dict
from lodit.data.audio import ChannelPolicy
from lodit.data.dataset import AudioClipDataset, collate_audio
from lodit.errors import LoditError
from lodit.latent_tokenizer.discriminators import DiscriminatorConfig, Discriminators
from lodit.latent_tokenizer.feature_cache import FeatureCache
from lodit.latent_tokenizer.losatok import FrozenTeacher
from lodit.latent_tokenizer.losses import (
    MultiResolutionMelLoss,
    TokenizerLoss,
    TokenizerLossConfig,
    hinge_discriminator_loss,
)
from lodit.latent_tokenizer.teacher_features import (
    ENCODER_INPUTS,
    TeacherFeatureCrops,
    collate_audio_with_teacher_features,
    fill_teacher_cache,
)
from lodit.latent_tokenizer.tokenizer import Tokenizer, TokenizerConfig, TokenizerOutput
from lodit.training.config import TrainingConfig
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer, TrainResult, TrainTask
from lodit.training.seed import seed_everything
from lodit.training.tracking import Tracker

DISCRIMINATOR = "discriminator"
MODEL = "model"


# ============================================================================ config


@dataclass
class TokenizerDataConfig:
    manifest: str = ""  # JSON Lines manifest (`lodit prepare`); also --manifest
    segment_seconds: float = 1.0  # training crops; shorter clips are padded and masked
    random_crop: bool = True  # a random window per (seed, epoch, clip); false = each clip's start
    min_seconds: float = 0.0  # clips shorter than this are left out
    loudness: float | None = None  # LUFS to normalise every crop to; null = keep the recorded level
    channels: Literal["mix", "first"] = "mix"  # the tokenizer is mono: average the channels or take the first
    on_error: Literal["fail", "skip"] = "fail"  # a bad manifest row stops the run, or is skipped and logged
    # Folder caching the frozen semantic teacher's whole-clip features (encoders with a teacher, e.g.
    # LoSATok); "" = run the teacher on every crop. Shared safely by runs: entries are keyed by teacher and clip.
    teacher_cache: str = ""
    teacher_batch_size: int = 8  # clips per teacher forward when filling the teacher cache

    def __post_init__(self):
        if self.segment_seconds <= 0:
            raise ValueError(f"data.segment_seconds must be positive, got {self.segment_seconds}")
        if self.min_seconds < 0:
            raise ValueError(f"data.min_seconds must not be negative, got {self.min_seconds}")
        if self.teacher_batch_size < 1:
            raise ValueError(f"data.teacher_batch_size must be at least 1, got {self.teacher_batch_size}")


@dataclass
class TokenizerTrainConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)


# ============================================================================ the task


@contextmanager
def frozen(module: nn.Module):
    """Run ``module`` without recording gradients for its parameters (gradients still flow to its input)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def split_real_fake(outputs: Sequence, batch_size: int) -> tuple[list, list]:
    """Split discriminator outputs of ``cat([real, fake])`` into the real and the fake halves.

    ``outputs`` is a list of tensors (logits) or a list of lists of tensors (feature maps)."""
    real, fake = [], []
    for item in outputs:
        if isinstance(item, torch.Tensor):
            real.append(item[:batch_size])
            fake.append(item[batch_size:])
        else:
            halves = split_real_fake(item, batch_size)
            real.append(halves[0])
            fake.append(halves[1])
    return real, fake


class TokenizerTask(TrainTask):
    """GAN training of a :class:`Tokenizer` against :class:`Discriminators` (see the module docstring)."""

    def __init__(self, config: TokenizerTrainConfig):
        self.config = config
        self.tokenizer = Tokenizer(config.tokenizer)
        self.discriminators = Discriminators(config.discriminator)
        self.criterion = TokenizerLoss.from_configs(config.loss, config.tokenizer)
        # The preview distance uses the default resolutions, as `lodit reconstruct` and lodit.eval do,
        # so preview numbers compare across configs whatever loss.mel_resolutions says.
        self.preview_mel = MultiResolutionMelLoss(config.tokenizer.sample_rate, TokenizerLossConfig().mel_resolutions)
        self.reuse_forward = config.training.gradient_accumulation_steps == 1
        self._forward_step = -1
        self._forwards: dict[int, TokenizerOutput] = {}  # id(micro-batch) -> its forward, within one step

    # --------------------------------------------------------------------------- TrainTask

    def modules(self) -> dict[str, nn.Module]:
        return {MODEL: self.tokenizer, DISCRIMINATOR: self.discriminators}

    def phases(self, step: int) -> Sequence[str]:
        return (DISCRIMINATOR, MODEL) if self.criterion.adversarial_active(step) else (MODEL,)

    def on_prepared(self, accelerator) -> None:
        self.criterion.to(accelerator.device)  # mel filterbanks and windows
        self.preview_mel.to(accelerator.device)

    def loss(self, phase: str, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        real, mask = self._target(batch)
        if phase == DISCRIMINATOR:
            out = self._forward(batch, real, mask, step, keep=True)
            return self._discriminator_loss(real, out.recon.detach())
        out = self._forward(batch, real, mask, step, keep=False)
        return self._generator_loss(real, out, step)

    def export_config(self) -> dict:
        return to_dict(self.config.tokenizer)

    @torch.no_grad()
    def preview(self, batch: dict, step: int, tracker: Tracker) -> None:
        model = self.tokenizer
        model.eval()
        real, mask = self._target(batch)
        with self.ema.swapped(model) if self.ema is not None else nullcontext():
            # forward in eval mode is reconstruct's deterministic path, and takes the batch's encoder inputs
            recon = model(real, **self._encoder_inputs(batch)).recon * mask  # (B, 1, S)
        tracker.log_scalars({"preview/mel_distance": float(self.preview_mel(recon, real))}, step)
        length = int(batch["lengths"][0])
        rate = self.config.tokenizer.sample_rate
        tracker.log_audio("preview/reconstruction", recon[0, :, :length], rate, step)
        tracker.log_audio("preview/target", real[0, :, :length], rate, step)

    # --------------------------------------------------------------------------- building blocks

    def _target(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's audio ``(B, 1, S)`` on the device and its validity mask ``(B, 1, S)``."""
        wav = batch["wav"].to(self.device)
        if wav.shape[1] != 1:
            raise LoditError(f"the tokenizer is mono but the batch has {wav.shape[1]} channels; set data.channels=mix")
        mask = batch["mask"].to(self.device)[:, None].to(wav.dtype)  # (B, 1, S)
        return wav, mask

    def _encoder_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch's extra encoder inputs (e.g. cached teacher features) on the device; none by default."""
        return {name: value.to(self.device) for name, value in batch.get(ENCODER_INPUTS, {}).items()}

    def _forward(
        self, batch: dict, real: torch.Tensor, mask: torch.Tensor, step: int, *, keep: bool
    ) -> TokenizerOutput:
        """The tokenizer's training forward for a micro-batch, computed once per step when possible."""
        if step != self._forward_step:
            self._forwards.clear()
            self._forward_step = step
        out = self._forwards.pop(id(batch), None)
        if out is None:
            reuse = keep and self.reuse_forward
            with nullcontext() if reuse or not keep else torch.no_grad():
                out = self.trained(MODEL)(real, **self._encoder_inputs(batch))
            out.recon = out.recon * mask  # padding must stay silent, not be learned
            if reuse:
                self._forwards[id(batch)] = out
        return out

    def _discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # Real and fake through the (possibly data-parallel) discriminator as one batch: one call per backward.
        logits, _ = self.trained(DISCRIMINATOR)(torch.cat([real, fake]))
        real_logits, fake_logits = split_real_fake(logits, real.shape[0])
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        scores = torch.stack([torch.cat([x.flatten() for x in real_logits]).mean(),
                              torch.cat([x.flatten() for x in fake_logits]).mean()]).tolist()
        return loss, {"real_logit": scores[0], "fake_logit": scores[1]}

    def _generator_loss(
        self, real: torch.Tensor, out: TokenizerOutput, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        fake = out.recon
        adversarial = {}
        if self.criterion.adversarial_active(step):
            # The discriminator only judges here: its parameters get no gradient in this phase.
            with frozen(self.discriminators) as judge:
                logits, features = judge(torch.cat([real, fake]))
            _, fake_logits = split_real_fake(logits, real.shape[0])
            real_features, fake_features = split_real_fake(features, real.shape[0])
            adversarial = {"fake_logits": fake_logits, "real_features": real_features, "fake_features": fake_features}
        total, terms = self.criterion.generator_loss(real, fake, out.losses, **adversarial)
        values = torch.stack(list(terms.values())).float().tolist() if terms else []  # one device sync
        scalars = dict(zip(terms, values))
        scalars.update({f"bottleneck_{name}": value for name, value in out.stats.items()})
        return total, scalars


# ============================================================================ assembling a run


def build_dataset(config: TokenizerTrainConfig) -> AudioClipDataset:
    """The training clips of ``data.manifest`` at the tokenizer's sample rate; with a teacher cache,
    random crops start at multiples of the tokenizer hop (whole frames of the cached features)."""
    data = config.data
    if not data.manifest:
        raise LoditError("no manifest given: pass --manifest FILE or set data.manifest in the config")
    channels: ChannelPolicy = data.channels
    dataset = AudioClipDataset(
        data.manifest,
        config.tokenizer.sample_rate,
        segment_seconds=data.segment_seconds,
        random_crop=data.random_crop,
        seed=config.training.seed,
        channels=channels,
        loudness=data.loudness,
        min_seconds=data.min_seconds,
        on_error=data.on_error,
        crop_multiple=config.tokenizer.hop_length if data.teacher_cache else 1,
    )
    if len(dataset) == 0:
        raise LoditError(dataset.why_empty())
    return dataset


def with_teacher_features(
    config: TokenizerTrainConfig, tokenizer: Tokenizer, clips: AudioClipDataset
) -> tuple[Dataset, Callable[[Sequence[dict]], dict]]:
    """The training dataset and its collate function: with ``data.teacher_cache``, ``clips`` with
    the cached teacher features of every crop (computed first for the clips not yet cached, see
    the module docstring); without it, ``clips`` and :func:`collate_audio` unchanged."""
    data = config.data
    if not data.teacher_cache:
        return clips, collate_audio
    frozen = getattr(tokenizer.encoder, "teacher", None)
    if not isinstance(frozen, FrozenTeacher):
        raise LoditError(
            f"data.teacher_cache is set but the {config.tokenizer.encoder.name!r} encoder has no semantic teacher; "
            "remove data.teacher_cache (data.teacher_cache='')"
        )
    if frozen.config.target_rate != config.tokenizer.latent_rate:
        raise LoditError(
            f"tokenizer.encoder.semantic.teacher.target_rate={frozen.config.target_rate:g} Hz differs from "
            f"tokenizer.latent_rate={config.tokenizer.latent_rate:g} Hz, so teacher frames are not latent frames; "
            "set them equal"
        )
    # A teacher of our own, not the encoder's: it is dropped (with its memory) once the cache is filled.
    teacher = FrozenTeacher(frozen.config, frozen.expected_dim).get()
    cache = FeatureCache(data.teacher_cache, teacher.identity())
    keys = fill_teacher_cache(clips, teacher, cache, batch_size=data.teacher_batch_size)
    del teacher
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return TeacherFeatureCrops(clips, cache, keys, tokenizer.hop_length), collate_audio_with_teacher_features


def build_task(config: TokenizerTrainConfig) -> TokenizerTask:
    """The task with freshly initialised modules; initialisation is seeded by ``training.seed``."""
    seed_everything(config.training.seed)
    return TokenizerTask(config)


def train_tokenizer(
    config: TokenizerTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool | str | Path = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train (or resume) a tokenizer run into ``run_dir``; ``stop_at`` ends this call after that step."""
    # the run's config.yaml must still find the data and the teacher cache when resumed from elsewhere
    paths = {name: getattr(config.data, name) for name in ("manifest", "teacher_cache")}
    absolute = {name: str(Path(path).resolve()) for name, path in paths.items() if path}
    config = replace(config, data=replace(config.data, **absolute))
    clips = build_dataset(config)
    task = build_task(config)
    dataset, collate = with_teacher_features(config, task.tokenizer, clips)
    loader = ResumableLoader.from_config(dataset, collate, config.training)
    trainer = Trainer(config.training, run_dir, task, loader, resolved_config=config, resume=resume)
    return trainer.fit(stop_at=stop_at)

