"""UniAudio-Token end to end: the decoder stage, the stage runner behind ``lodit train-tokenizer``
for UniAudio-Token configs, and reconstruction (tokens back to audio) behind ``lodit reconstruct``.

Stages run in the order of the config's ``stages`` into sub-folders of the run folder, each a
normal resumable run of the shared trainer:

* ``RUN/tokenizer``: SAE + codebook + SAP (:mod:`lodit.latent_tokenizer.uniaudio_train`);
* ``RUN/decoder``: the token decoder (:class:`~lodit.dit.token_decoder.TokenDecoder`), trained on
  the frozen tokenizer's token ids of every clip and the frozen autoencoder's latents of the same
  clip (both 25 Hz, so frame ``t`` of one is frame ``t`` of the other), in random crops of
  ``decoder.segment_frames``; the latents' per-channel mean/std over the whole set normalise them.

``RUN/final`` then holds the whole model: ``config.json`` (``uniaudio`` and, after the decoder
stage, ``decoder`` with the autoencoder's absolute path) and ``model.safetensors`` (``tokenizer.*``
and ``decoder.*``). ``lodit encode --tokens RUN/final`` needs only the tokenizer part;
``lodit reconstruct --tokenizer RUN/final`` needs the decoder too.

May import: torch, ``lodit.data``, ``lodit.training``, ``lodit.latent_tokenizer``, ``lodit.dit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from lodit.config import from_dict, to_dict
from lodit.data.audio import load_audio, save_audio
from lodit.data.batching import pad_sequences
from lodit.data.dataset import crop_start
from lodit.devices import choose_device
from lodit.dit.token_decoder import TokenDecoder
from lodit.errors import LoditError
from lodit.latent_tokenizer.reconstruct import (
    RoundTrip,
    level_db,
    mel_distance,
    si_sdr_db,
)
from lodit.latent_tokenizer.semantic import SAMPLE_RATE
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.latent_tokenizer.uniaudio import (
    CONFIG_KEY,
    DECODER_KEY,
    TokenDecoderConfig,
    UniAudioToken,
    build_teacher,
    load_uniaudio,
    read_folder_config,
    read_weights,
)
from lodit.latent_tokenizer.uniaudio_train import (
    UniAudioTrainConfig,
    absolute_paths,
    clip_rows,
    teacher_cache_keys,
    train_tokenizer_stage,
)
from lodit.training.checkpoint import export_final
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer, TrainResult, TrainTask
from lodit.training.seed import seed_everything

STAGE_DIRS = {"tokenizer": "tokenizer", "decoder": "decoder"}


# ============================================================================ decoder-stage data


class TokenLatentCrops(Dataset):
    """Aligned crops of each clip's token ids ``(T,)`` and autoencoder latents ``(T, D)``."""

    def __init__(self, ids: Sequence[torch.Tensor], latents: Sequence[torch.Tensor], segment: int, seed: int):
        self.ids, self.latents, self.segment, self.seed, self.epoch = (
            list(ids),
            list(latents),
            int(segment),
            int(seed),
            0,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        total = self.ids[index].shape[0]
        start = crop_start(total, self.segment, random=True, seed=self.seed, epoch=self.epoch, index=int(index))
        end = start + self.segment
        return {"ids": self.ids[index][start:end], "latents": self.latents[index][start:end]}


def collate_token_latents(items: Sequence[dict]) -> dict:
    ids, mask, _ = pad_sequences([item["ids"] for item in items], dim=0)
    latents, _, _ = pad_sequences([item["latents"] for item in items], dim=0)
    return {"ids": ids, "latents": latents, "mask": mask}


@torch.no_grad()
def token_latent_pairs(
    config: UniAudioTrainConfig, run_dir: Path, tokenizer: UniAudioToken, autoencoder: Tokenizer
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every clip's token ids (from the cached encoder features) and autoencoder latents, aligned."""
    clips, _ = clip_rows(config)
    cache, keys = teacher_cache_keys(config, run_dir / STAGE_DIRS["tokenizer"], clips)
    max_frames = max(1, math.floor(config.data.max_seconds * config.uniaudio.teacher.target_rate))
    ids, latents = [], []
    for key, record in zip(keys, clips.records):
        features = cache.get(key, lambda: torch.zeros(0))[:max_frames].float()
        clip_ids = tokenizer(features[None]).ids[0]  # (T,)
        wav = load_audio(
            record.path, autoencoder.sample_rate, channels="mix", offset=record.offset, duration=record.duration
        )
        clip_latents = autoencoder.encode(wav[None]).float()[0]  # (T', D)
        frames = min(clip_ids.shape[0], clip_latents.shape[0])
        ids.append(clip_ids[:frames].cpu())
        latents.append(clip_latents[:frames].cpu())
    return ids, latents


def load_autoencoder(folder: str) -> Tokenizer:
    """The frozen autoencoder whose latents the token decoder generates (25 Hz, like the tokens)."""
    autoencoder = Tokenizer.from_pretrained(folder)
    if abs(autoencoder.latent_rate - 25.0) > 1e-9:
        raise LoditError(
            f"decoder.autoencoder={folder} makes {autoencoder.latent_rate:g} Hz latents; the token decoder "
            "needs 25 Hz latents, one per token: pick a 25 Hz lodit tokenizer"
        )
    return autoencoder


# ============================================================================ decoder-stage task


class DecoderStage(nn.Module):
    """The trained module of the decoder stage; weights are saved as ``decoder.*``."""

    def __init__(self, decoder: TokenDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, ids: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decoder.loss(ids, latents, mask)


class TokenDecoderTask(TrainTask):
    def __init__(self, decoder: TokenDecoder, config: UniAudioTrainConfig):
        self.decoder = decoder
        self.config = config
        self.model = DecoderStage(decoder)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def loss(self, phase: str, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.trained()(
            batch["ids"].to(self.device), batch["latents"].to(self.device), batch["mask"].to(self.device)
        )
        return loss, {"flow": float(loss.detach())}

    def export_config(self) -> dict:
        return {CONFIG_KEY: to_dict(self.config.uniaudio), DECODER_KEY: to_dict(self.config.decoder)}


def train_decoder_stage(
    config: UniAudioTrainConfig, run_dir: Path, *, resume: bool | str | Path = True, stop_at: int | None = None
) -> TrainResult:
    tokenizer_dir = run_dir / STAGE_DIRS["tokenizer"] / "final"
    if not (tokenizer_dir / "config.json").is_file():
        raise LoditError(
            f"{tokenizer_dir}: no trained tokenizer stage; run stage 'tokenizer' first (stages: [tokenizer, decoder])"
        )
    tokenizer = load_uniaudio(tokenizer_dir)
    config = replace(config, uniaudio=tokenizer.config)  # with the vocabularies the tokenizer stage read
    autoencoder = load_autoencoder(config.decoder.autoencoder)
    ids, latents = token_latent_pairs(config, run_dir, tokenizer, autoencoder)
    seed_everything(config.decoder_training.seed)
    decoder = TokenDecoder(tokenizer.codebook_size, autoencoder.latent_dim, config.decoder)
    frames = torch.cat(latents).double()  # (all frames, D)
    decoder.set_latent_stats(frames.mean(0).float(), frames.std(0).float())
    dataset = TokenLatentCrops(ids, latents, config.decoder.segment_frames, config.decoder_training.seed)
    loader = ResumableLoader.from_config(dataset, collate_token_latents, config.decoder_training)
    task = TokenDecoderTask(decoder, config)
    trainer = Trainer(
        config.decoder_training, run_dir / STAGE_DIRS["decoder"], task, loader, resolved_config=config, resume=resume
    )
    return trainer.fit(stop_at=stop_at)


# ============================================================================ the stage runner


@dataclass
class StagesResult:
    results: dict[str, TrainResult]
    final: Path | None  # RUN/final once every stage finished


def train_uniaudio(
    config: UniAudioTrainConfig, run_dir: str | Path, *, resume: bool | str | Path = True, stop_at: int | None = None
) -> StagesResult:
    """Run (or resume) the config's stages in order; ``stop_at`` applies to the stage running now."""
    run_dir = Path(run_dir)
    if "decoder" in config.stages and not config.decoder.autoencoder:
        raise LoditError(
            "stage 'decoder' needs decoder.autoencoder (a 25 Hz lodit tokenizer folder whose latents it "
            "generates); set decoder.autoencoder=FOLDER or stages=[tokenizer]"
        )
    config = absolute_paths(config)
    results: dict[str, TrainResult] = {}
    for stage in config.stages:
        if stage == "tokenizer":
            result = train_tokenizer_stage(config, run_dir / STAGE_DIRS[stage], resume=resume, stop_at=stop_at)
        else:
            result = train_decoder_stage(config, run_dir, resume=resume, stop_at=stop_at)
        results[stage] = result
        if result.final is None:
            return StagesResult(results, None)
    return StagesResult(results, assemble_final(run_dir, config.stages))


def assemble_final(run_dir: Path, stages: Sequence[str]) -> Path:
    """``RUN/final``: the last stage's config with every stage's weights."""
    weights: dict[str, torch.Tensor] = {}
    config: dict = {}
    for stage in ("tokenizer", "decoder"):
        folder = run_dir / STAGE_DIRS[stage] / "final"
        if stage in stages or (stage == "tokenizer" and (folder / "config.json").is_file()):
            config = read_folder_config(folder)
            weights.update({k: v for k, v in read_weights(folder).items() if k.startswith(f"{stage}.")})
    return export_final(run_dir, config=config, model=weights)


# ============================================================================ tokens back to audio


class UniAudioCodec:
    """A whole UniAudio-Token folder: encoder + tokenizer (audio -> ids) and decoder + autoencoder (ids -> audio)."""

    def __init__(self, folder: str | Path, device: str | torch.device | None = None):
        folder = Path(folder)
        data = read_folder_config(folder)
        if DECODER_KEY not in data:
            raise LoditError(
                f"{folder}: this UniAudio-Token has no decoder stage, so its tokens can't be turned back into "
                "audio; train it with stages: [tokenizer, decoder] and decoder.autoencoder set"
            )
        device = choose_device(device, option="--device")
        self.tokenizer = load_uniaudio(folder, map_location=device)
        self.decoder_config = from_dict(TokenDecoderConfig, data[DECODER_KEY], source=str(folder / "config.json"))
        self.autoencoder = load_autoencoder(self.decoder_config.autoencoder).to(device)
        self.decoder = TokenDecoder(self.tokenizer.codebook_size, self.autoencoder.latent_dim, self.decoder_config)
        state = {k[len("decoder.") :]: v for k, v in read_weights(folder).items() if k.startswith("decoder.")}
        self.decoder.load_state_dict(state, strict=True)
        self.decoder.to(device).eval()
        self.teacher = build_teacher(self.tokenizer.config).to(device)
        self.device = device

    @torch.no_grad()
    def round_trip(
        self, wav: torch.Tensor, reference: torch.Tensor | None = None, *, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz mono ``wav (1, S)`` -> (token ids ``(1, T)``, reconstruction ``(1, S)`` at the autoencoder's rate).
        ``reference`` (1, S') gives the prompt (default: ``wav`` itself)."""
        ids = self.tokenizer.tokens(self.teacher, wav.to(self.device)[None])  # (1, T)
        prompt = None
        if self.decoder_config.prompt:
            ref = wav if reference is None else reference
            prompt = self.decoder.prompt_of(self.autoencoder.encode(ref.to(self.device)[None]).float())
        latents = self.decoder.generate(ids, prompt, seed=seed)  # (1, T, D)
        recon = self.autoencoder.decode(latents)[0, :, : wav.shape[-1]].float().cpu()  # (1, S)
        return ids.cpu(), recon


def reconstruct_uniaudio(
    folder: str | Path,
    source: str | Path,
    target: str | Path,
    *,
    reference: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
) -> RoundTrip:
    """``lodit reconstruct`` for a UniAudio-Token folder: audio -> tokens -> generated latents -> audio."""
    if Path(target).resolve() == Path(source).resolve():
        raise LoditError(f"{target}: is the input file; write the reconstruction to another path")
    codec = UniAudioCodec(folder, device)
    rate = codec.autoencoder.sample_rate
    if rate != SAMPLE_RATE:
        raise LoditError(
            f"the decoder's autoencoder runs at {rate} Hz; UniAudio-Token reconstruction needs a 16 kHz autoencoder"
        )
    wav = load_audio(source, SAMPLE_RATE, channels="mix")
    if wav.shape[-1] == 0:
        raise LoditError(f"{source}: the file holds no audio samples; give a non-empty recording")
    ref = load_audio(reference, SAMPLE_RATE, channels="mix") if reference else None
    ids, recon = codec.round_trip(wav, ref, seed=seed)
    save_audio(target, recon, rate)
    return RoundTrip(
        recon=recon,
        sample_rate=rate,
        frames=ids.shape[1],
        latent_dim=1,
        mel_distance=mel_distance(wav, recon, rate),
        level_db=level_db(wav, recon),
        si_sdr=si_sdr_db(wav, recon),
    )


# ============================================================================ the command
