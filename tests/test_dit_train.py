"""Tests for DiT training on a latent cache, sampling and the Generator API (lodit.dit.train,
lodit.dit.conditioned, lodit.dit.generator, lodit.dit.prompts, lodit.commands.sample).

Everything is tiny and random: a tiny tokenizer (saved to tmp) encodes generated clips into a
latent cache, a tiny random T5 (saved to tmp) encodes captions, and a tiny DiT trains on CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from lodit import cli
from lodit.conditioning.text_encoders import TextEncoderConfig, build_text_encoder
from lodit.conditioning.tts import FILLER_ID, TextFrontEnd
from lodit.config import load_config, load_yaml
from lodit.data.audio import save_audio
from lodit.data.latent_cache import LatentCache, LatentCacheWriter, normalize
from lodit.dit.conditioned import (
    ConditionedDiT,
    Conditions,
    TTSConfig,
    resolve_dit_config,
)
from lodit.dit.generator import Generator
from lodit.dit.model import DiTConfig
from lodit.dit.train import DiTTask, build_training, train_dit
from lodit.dit.train_config import DiTTrainConfig
from lodit.dit.train_data import collate_dit
from lodit.errors import ConfigError, LoditError
from lodit.latent_tokenizer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "dit" / "tiny.yaml"
FRAME_RATE = 25.0
WORDS = ["a", "high", "beep", "low", "hum", "piano", "melody", "slow", "fast", "noise", "man", "speaks",
         "hello", "world", "the", "quick", "fox"]

# The tiny tokenizer config of the project (random weights; 16 kHz, 16-dim latents at 25 Hz).
TOKENIZER = load_yaml(ROOT / "configs" / "tokenizer" / "tiny.yaml")["tokenizer"]
SAMPLE_RATE = TOKENIZER["sample_rate"]
LATENT_DIM = TOKENIZER["latent_dim"]
HOP = round(SAMPLE_RATE / FRAME_RATE)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A tiny random T5 caption encoder with a word-level tokenizer (nothing downloaded)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models, pre_tokenizers, processors
    from transformers import (
        PreTrainedTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    raw = RawTokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    folder = tmp_path_factory.mktemp("tiny_t5")
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def encoder(tiny_t5):
    return build_text_encoder(TextEncoderConfig(name="t5", model=tiny_t5, device="cpu"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    Tokenizer.from_config(TOKENIZER).save_pretrained(folder)
    return folder


def _clip(kind: str, seconds: float, seed: int) -> torch.Tensor:
    """A generated mono clip ``(S,)``: a beep, a melody, or noise shaped like syllables."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    if kind == "audio":
        wav = 0.5 * np.sin(2 * np.pi * 880 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    elif kind == "music":
        notes = 220 * 2 ** (rng.integers(0, 12, size=int(seconds * 4) + 1) / 12)
        wav = 0.4 * np.sin(2 * np.pi * np.cumsum(notes[(t * 4).astype(int)]) / SAMPLE_RATE)
    else:
        wav = 0.3 * rng.standard_normal(t.shape) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return torch.tensor(wav, dtype=torch.float32)


# (key, domain, caption, transcript, seconds)
MIXED = [
    ("beep0", "audio", "a high beep", "", 1.2),
    ("beep1", "audio", "a low hum", "", 1.0),
    ("music0", "music", "slow piano melody", "", 1.2),
    ("music1", "music", "fast piano melody", "", 1.0),
    ("speech0", "speech", "a man speaks", "hello world", 1.6),
    ("speech1", "speech", "", "the quick fox", 1.4),
]


def make_cache(root: Path, tokenizer_dir: Path, clips) -> Path:
    """Encode generated clips with the tiny tokenizer into a latent cache at ``root``."""
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    producer = {**tokenizer.identity(), "checkpoint": str(tokenizer_dir)}
    with LatentCacheWriter(root, producer=producer) as writer:
        for index, (key, domain, caption, transcript, seconds) in enumerate(clips):
            latents = tokenizer.encode(_clip(domain, seconds, index))[0]  # (T, D)
            writer.add(key, latents, {"caption": caption, "transcript": transcript, "domain": domain})
    return root


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory, tokenizer_dir):
    return make_cache(tmp_path_factory.mktemp("caches") / "mixed", tokenizer_dir, MIXED)


def tiny_overrides(cache: Path, tiny_t5: str, *overrides: str) -> list[str]:
    base = [f"data.cache={cache}", "text_encoder.name=t5", f"text_encoder.model={tiny_t5}",
            "text_encoder.device=cpu", "training.log_every=1000"]
    return [*base, *overrides]


def tiny_config(cache: Path, tiny_t5: str, *overrides: str) -> DiTTrainConfig:
    return load_config(DiTTrainConfig, TINY_CONFIG, tiny_overrides(cache, tiny_t5, *overrides))


def run_command(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``lodit <name> ...`` as the CLI does; (exit code, stderr). Uses cli.main once registered."""
    if name in cli.COMMANDS:
        code = cli.main([name, *argv])
    else:  # not registered yet: same parsing and error handling as lodit.cli.main
        module = importlib.import_module(
            {"train-dit": "lodit.commands.train_dit", "sample": "lodit.commands.sample"}[name]
        )
        parser = argparse.ArgumentParser(prog=f"lodit {name}")
        module.add_arguments(parser)
        try:
            code = int(module.run(parser.parse_args(argv)) or 0)
        except LoditError as exc:
            print(f"lodit {name}: error: {exc}", file=sys.stderr)
            code = 2
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- conditioning


def test_tts_conditioning_shapes_and_masks(mixed_cache, tiny_t5, encoder, tmp_path):
    config = tiny_config(mixed_cache, tiny_t5, "flow.cond_dropout=0.0", "tts.mask_min_frac=0.3",
                         "tts.mask_max_frac=0.6", "tts.prompt_drop_prob=0.0")
    task, loader = build_training(config, tmp_path, text_encoder=encoder)
    assert task.tasks == ["tta", "ttm", "tts"] and task.dit_config.num_tasks == 3
    assert (
        task.dit_config.frame_cond_dim == config.tts.text_dim + LATENT_DIM and task.dit_config.text_dim == encoder.dim
    )
    speech = [i for i in range(len(loader.dataset)) if loader.dataset.tasks[i] == "tts"]
    caption = [i for i in range(len(loader.dataset)) if loader.dataset.tasks[i] != "tts"][:1]
    batch = collate_dit([loader.dataset[i] for i in speech + caption])
    inputs = task.training_batch(batch, step=0)
    cond, lengths = inputs.cond, batch["lengths"]
    batch_size, frames = batch["mask"].shape
    assert cond.tts_ids.shape == (batch_size, frames) and cond.cond_audio.shape == (batch_size, frames, LATENT_DIM)

    front_end = TextFrontEnd("chars")
    for row in range(len(speech)):
        tokens = front_end.tokens(batch["transcripts"][row])
        assert cond.tts_ids[row, : len(tokens)].tolist() == tokens  # ids, then filler to the end
        assert (cond.tts_ids[row, len(tokens) :] == FILLER_ID).all()
        prompt = cond.cond_audio[row].abs().sum(-1) > 0  # (T,) frames carrying the audio prompt
        assert prompt.any() and not (prompt & inputs.loss_mask[row]).any()  # prompt frames are not in the loss
        assert torch.equal(cond.cond_audio[row][prompt], batch["latents"][row][prompt])
        span = inputs.loss_mask[row].nonzero().flatten()  # one contiguous span to generate, 30-60 % of the clip
        assert span.numel() == span[-1] - span[0] + 1
        assert 0.3 <= span.numel() / lengths[row] <= 0.6 + 1 / lengths[row]
        assert (prompt | inputs.loss_mask[row]).sum() == lengths[row]
    caption_row = len(speech)  # a caption clip: all filler, no prompt, loss on every valid frame
    assert (cond.tts_ids[caption_row] == FILLER_ID).all() and not cond.cond_audio[caption_row].any()
    assert torch.equal(inputs.loss_mask[caption_row], batch["mask"][caption_row])
    assert cond.task.tolist() == [2] * len(speech) + [0]

    null = cond.unconditional()  # text, transcript and prompt are dropped together; shape info stays
    assert not null.text_mask.any() and not null.text.any() and not null.cond_audio.any()
    assert (null.tts_ids == FILLER_ID).all()
    assert torch.equal(null.frame_mask, cond.frame_mask) and torch.equal(null.duration, cond.duration)
    assert torch.equal(null.task, cond.task)
    partial = cond.drop(torch.tensor([True] + [False] * (batch_size - 1)))
    assert not partial.text_mask[0].any() and torch.equal(partial.tts_ids[1:], cond.tts_ids[1:])

    model = task.model
    velocity = model(inputs.x_t, inputs.t, cond)
    assert velocity.shape == inputs.x_t.shape and torch.isfinite(velocity).all()
    # Padding frames never change a row's valid output.
    short = 0 if lengths[0] < frames else 1
    n = int(lengths[short])
    one = Conditions(**{k: None if v is None else v[short : short + 1] for k, v in cond.as_dict().items()})
    one.frame_mask, one.tts_ids, one.cond_audio = one.frame_mask[:, :n], one.tts_ids[:, :n], one.cond_audio[:, :n]
    alone = model(inputs.x_t[short : short + 1, :n], inputs.t[short : short + 1], one)
    torch.testing.assert_close(alone[0], velocity[short, :n], atol=1e-5, rtol=1e-4)


def test_condition_dropout_reaches_the_batch_at_its_rate(mixed_cache, tiny_t5, encoder, tmp_path):
    config = tiny_config(mixed_cache, tiny_t5, "flow.cond_dropout=0.3")
    task, loader = build_training(config, tmp_path, text_encoder=encoder)
    batch = collate_dit([loader.dataset[i] for i in range(len(loader.dataset))])
    has_caption = torch.tensor([bool(c) for c in batch["captions"]])
    drops = []
    for step in range(150):
        inputs = task.training_batch(batch, step)
        dropped = inputs.dropped
        # a dropped row reaches the network without caption, transcript or prompt
        assert not inputs.cond.text_mask[dropped].any() and not inputs.cond.cond_audio[dropped].any()
        assert (inputs.cond.tts_ids[dropped] == FILLER_ID).all()
        assert inputs.cond.text_mask[~dropped & has_caption].any(dim=1).all()
        drops.append(dropped)
    rate = torch.stack(drops).float().mean().item()
    assert abs(rate - 0.3) < 0.05, rate  # 900 rows: 4 sigma is 0.06
    config = tiny_config(mixed_cache, tiny_t5, "flow.cond_dropout=0.0")
    task, _ = build_training(config, tmp_path, text_encoder=encoder)
    assert not task.training_batch(batch, 0).dropped.any()


def test_prompt_drop_alone_at_its_rate_with_matching_loss_mask(mixed_cache, tiny_t5, encoder, tmp_path):
    """tts.prompt_drop_prob removes the audio prompt alone (transcript kept, whole clip generated),
    independently of the joint condition dropout, each at its own rate."""
    config = tiny_config(mixed_cache, tiny_t5, "flow.cond_dropout=0.2", "tts.prompt_drop_prob=0.3")
    task, loader = build_training(config, tmp_path, text_encoder=encoder)
    speech = [i for i in range(len(loader.dataset)) if loader.dataset.tasks[i] == "tts"]
    caption = [i for i in range(len(loader.dataset)) if loader.dataset.tasks[i] != "tts"][:1]
    batch = collate_dit([loader.dataset[i] for i in speech * 10 + caption])  # 20 utterances + 1 caption clip
    is_speech = torch.tensor([t == "tts" for t in batch["tasks"]])
    valid, latents = batch["mask"], batch["latents"]
    front_end = TextFrontEnd("chars")
    alone, joint = [], []
    for step in range(100):  # 2000 utterance draws
        inputs = task.training_batch(batch, step)
        cond, loss_mask, dropped, prompt_dropped = inputs.cond, inputs.loss_mask, inputs.dropped, inputs.prompt_dropped
        assert not prompt_dropped[~is_speech].any()  # a caption clip has no prompt to drop
        for row in is_speech.nonzero().flatten().tolist():
            shown = cond.cond_audio[row].abs().sum(-1) > 0  # (T,) frames whose clean latents the model sees
            tokens = front_end.tokens(batch["transcripts"][row])
            if prompt_dropped[row] or dropped[row]:
                # no prompt frame at all, and every valid frame is generated and counted in the loss
                assert not cond.cond_audio[row].any() and torch.equal(loss_mask[row], valid[row])
            else:  # the prompt is the clip's own latents; the loss counts exactly the other valid frames
                assert torch.equal(cond.cond_audio[row][shown], latents[row][shown])
                assert torch.equal(loss_mask[row], valid[row] & ~shown)
            if dropped[row]:
                assert (cond.tts_ids[row] == FILLER_ID).all()
            else:  # the transcript stays, with or without the prompt
                assert cond.tts_ids[row, : len(tokens)].tolist() == tokens
        alone.append(prompt_dropped[is_speech])
        joint.append(dropped[is_speech])
    alone, joint = torch.stack(alone).flatten(), torch.stack(joint).flatten()
    # 2000 draws: one standard deviation is 0.010 (p = 0.3), 0.009 (p = 0.2) and 0.005 (both, 0.06)
    assert abs(alone.float().mean().item() - 0.3) < 0.04
    assert abs(joint.float().mean().item() - 0.2) < 0.036
    assert abs((alone & joint).float().mean().item() - 0.3 * 0.2) < 0.02  # drawn independently

    never = tiny_config(mixed_cache, tiny_t5, "flow.cond_dropout=0.0", "tts.prompt_drop_prob=0.0")
    task, _ = build_training(never, tmp_path, text_encoder=encoder)
    assert not any(task.training_batch(batch, step).prompt_dropped.any() for step in range(5))
    with pytest.raises(ConfigError, match="tts.prompt_drop_prob"):
        tiny_config(mixed_cache, tiny_t5, "tts.prompt_drop_prob=1.5")


def test_resolve_dit_config_checks_derived_widths():
    dit = DiTConfig(width=32, depth=1, heads=2, text_dim=0)
    tts = TTSConfig(enabled=True, text_dim=16)
    resolved = resolve_dit_config(dit, latent_dim=8, text_dim=24, tts=tts, num_tasks=3)
    assert (resolved.latent_dim, resolved.text_dim, resolved.frame_cond_dim, resolved.num_tasks) == (8, 24, 24, 3)
    with pytest.raises(LoditError, match="dit.latent_dim=4 but the latent cache gives 8"):
        resolve_dit_config(DiTConfig(latent_dim=4), latent_dim=8, text_dim=384, tts=tts, num_tasks=0)
    with pytest.raises(LoditError, match="dit.text_dim=384 but the text encoder gives 1024"):
        resolve_dit_config(DiTConfig(), latent_dim=8, text_dim=1024, tts=tts, num_tasks=0)
    model = ConditionedDiT(resolved, tts)
    assert model.tts_embed is not None and model.dit.config.frame_cond_dim == 24


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, tokenizer_dir, tiny_t5, encoder):
    """A tiny DiT trained 600 steps on ONE cached clip (its caption only)."""
    root = tmp_path_factory.mktemp("overfit")
    cache = make_cache(root / "cache", tokenizer_dir, [("beep", "audio", "a high beep", "", 1.0)])
    config = tiny_config(cache, tiny_t5, "training.max_steps=600", "training.batch_size=1", "training.lr=3e-3",
                         "training.warmup_steps=20", "training.min_lr_ratio=0.05", "training.ema_decay=0",
                         "training.checkpoint_every=1000", "training.log_every=50", "flow.cond_dropout=0.1")
    result = train_dit(config, root / "run", text_encoder=encoder)
    return root, cache, result


def test_tiny_dit_overfits_one_clip_and_sampling_returns_it(overfit_run):
    root, cache_root, result = overfit_run
    assert result.step == 600 and result.scalars["model/loss"] < 0.3  # mean of the last 50 steps; starts near 2
    cache = LatentCache(cache_root)
    generator = Generator.from_pretrained(root / "run", device="cpu")
    assert generator.tasks == ["tta"] and generator.sample_rate == SAMPLE_RATE
    target = normalize(cache.read(0), cache.mean, cache.std)  # (T, D), unit variance per channel
    for seed in (0, 3):
        out = generator.generate(["a high beep"], seconds=1.0, seed=seed,
                                 sampling=generator.config.sampling.with_changes(steps=20, cfg=1.0, sampler="euler"))
        generated = normalize(out.latents[0], cache.mean, cache.std)
        assert generated.shape == target.shape == (25, LATENT_DIM)
        error = (generated - target).pow(2).mean() / target.pow(2).mean()
        # From noise, 20 Euler steps: measured 0.007-0.013 over 6 seeds (the untrained model returns its noise: ~2).
        assert error < 0.05, f"normalised error {error:.4f}"
    assert out.waveforms[0].shape == (1, SAMPLE_RATE)
    assert out.settings["nfe"] == 20 and out.settings["model_calls"] == 20  # cfg 1: one branch


def test_same_seed_same_audio_other_seed_other_audio(mixed_cache, tiny_t5, encoder, tmp_path):
    config = tiny_config(mixed_cache, tiny_t5, "training.max_steps=3")
    train_dit(config, tmp_path / "run", text_encoder=encoder)
    generator = Generator.from_pretrained(tmp_path / "run", device="cpu")
    prompts = ["a high beep", ""]
    kwargs = {"seconds": [0.6, 0.8], "transcripts": ["", "hello world"],
              "sampling": generator.config.sampling.with_changes(steps=4, cfg=3.0)}
    first = generator.generate(prompts, seed=7, **kwargs)
    again = generator.generate(prompts, seed=7, **kwargs)
    other = generator.generate(prompts, seed=8, **kwargs)
    assert first.settings["tasks"] == ["tta", "tts"] and first.settings["model_calls"] == 4  # CFG batched
    for a, b, c in zip(first.waveforms, again.waveforms, other.waveforms):
        assert torch.equal(a, b)
        assert (a - c).abs().max() > 1e-4
    alone = generator.generate(prompts[1:], seed=8, **{**kwargs, "seconds": 0.8, "transcripts": "hello world"})
    torch.testing.assert_close(alone.waveforms[0], first.waveforms[1], atol=1e-5, rtol=1e-4)  # seed + i per request

    # One task per request: a batch mixing TTM and TTA gives each row what it gives alone under its task.
    music = {"seconds": 0.6, "sampling": generator.config.sampling.with_changes(steps=4, cfg=3.0)}
    mixed = generator.generate(["slow piano melody"] * 2, task=["ttm", "tta"], seed=[3, 3], **music)
    assert mixed.settings["tasks"] == ["ttm", "tta"]
    as_ttm = generator.generate(["slow piano melody"], task="ttm", seed=3, **music)
    torch.testing.assert_close(mixed.waveforms[0], as_ttm.waveforms[0], atol=1e-5, rtol=1e-4)
    assert not torch.equal(mixed.waveforms[0], mixed.waveforms[1])  # same caption and noise, other task
    with pytest.raises(LoditError, match="prompt 1: unknown task 'asr'"):
        generator.generate(["a", "b"], task=["tta", "asr"], **music)
    with pytest.raises(LoditError, match="task has 3 entries for 2 prompts"):
        generator.generate(["a", "b"], task=["tta", "tta", "ttm"], **music)


def test_text_only_tts_trains_and_samples_at_the_requested_length(mixed_cache, tiny_t5, encoder, tmp_path, capsys):
    config = tiny_config(mixed_cache, tiny_t5, "training.max_steps=3", "tts.prompt_drop_prob=0.5",
                         "training.log_every=1", "tasks=[tts]")
    result = train_dit(config, tmp_path / "run", text_encoder=encoder)
    assert result.step == 3 and math.isfinite(result.scalars["model/loss"])
    assert 0.0 <= result.scalars["model/tts_prompt_dropped"] <= 1.0
    # A checkpoint written before tts.prompt_drop_prob existed loads: the training-only key defaults.
    config_file = tmp_path / "run" / "final" / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["tts"].pop("prompt_drop_prob") == 0.5
    config_file.write_text(json.dumps(saved))
    generator = Generator.from_pretrained(tmp_path / "run", device="cpu")
    assert generator.config.tts.prompt_drop_prob == 0.3

    # A transcript and no reference: no prompt frames, the whole length is generated.
    out = generator.generate([""], transcripts="hello world", seconds=0.8, seed=1,
                             sampling=generator.config.sampling.with_changes(steps=2, cfg=2.0))
    assert out.settings["tasks"] == ["tts"] and out.waveforms[0].shape == (1, round(0.8 * SAMPLE_RATE))
    assert out.latents[0].shape == (math.ceil(0.8 * FRAME_RATE), LATENT_DIM) and out.waveforms[0].abs().max() > 0
    rate = generator.config.tts_frames_per_unit  # without a length: the training data's speaking rate
    out = generator.generate(
        [""], transcripts="hello world", seed=1, sampling=generator.config.sampling.with_changes(steps=2)
    )
    frames = round(rate * len("hello world"))
    assert out.latents[0].shape[0] == frames and out.waveforms[0].shape == (1, frames * HOP)

    code, err = run_command("sample", ["--checkpoint", str(tmp_path / "run"), "--transcript", "the quick fox",
                                       "--seconds", "0.6", "--steps", "2", "--out", str(tmp_path / "tts")], capsys)
    assert code == 0, err
    assert sf.info(tmp_path / "tts" / "0000.wav").frames == round(0.6 * SAMPLE_RATE)
    entry = json.loads((tmp_path / "tts" / "samples.json").read_text())["samples"][0]
    assert entry["task"] == "tts" and entry["transcript"] == "the quick fox" and not entry.get("reference_audio")


def test_multitask_batch_with_mixed_domains_trains(mixed_cache, tiny_t5, encoder, tmp_path):
    config = tiny_config(mixed_cache, tiny_t5)
    task, loader = build_training(config, tmp_path, text_encoder=encoder)
    batch = collate_dit([loader.dataset[i] for i in range(len(loader.dataset))])  # every domain at once
    assert sorted(set(batch["tasks"])) == ["tta", "ttm", "tts"]
    optimizer = torch.optim.Adam(task.model.parameters(), lr=1e-3)
    for step in range(3):  # adaLN-Zero: the global vector gets gradients once the zero-init layers moved
        optimizer.zero_grad()
        loss, scalars = task.loss("model", batch, step=step)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss) and {"loss_tta", "loss_ttm", "loss_tts"} <= set(scalars)
    task_grad = task.model.dit.task_embed.weight.grad  # (3, width): each task's embedding is trained
    assert task_grad.shape[0] == 3 and (task_grad.abs().sum(dim=1) > 0).all()
    assert task.model.tts_embed.embedding.weight.grad.abs().sum() > 0


def test_bf16_autocast_path_runs_on_cpu(mixed_cache, tiny_t5, encoder, tmp_path):
    config = tiny_config(mixed_cache, tiny_t5, "training.max_steps=2", "training.mixed_precision=bf16",
                         "training.gradient_accumulation_steps=2", "dit.grad_checkpointing=true", "dit.patch_size=2")
    result = train_dit(config, tmp_path / "run", text_encoder=encoder)
    assert result.step == 2 and math.isfinite(result.scalars["model/loss"])
    weights = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())  # bf16 compute, float32 master weights


def test_compiled_training_matches_eager(mixed_cache, tiny_t5, encoder, tmp_path):
    # aot_eager: dynamo + AOTAutograd trace the DiT task (no code generation, so no compiler needed).
    overrides = ("training.max_steps=2", "training.batch_size=2")
    compiled = train_dit(tiny_config(mixed_cache, tiny_t5, *overrides, "training.compile=true",
                                     "training.compile_backend=aot_eager"), tmp_path / "compiled", text_encoder=encoder)
    eager = train_dit(tiny_config(mixed_cache, tiny_t5, *overrides), tmp_path / "eager", text_encoder=encoder)
    assert compiled.scalars["model/loss"] == pytest.approx(eager.scalars["model/loss"], rel=1e-4)
    compiled_weights = load_file(tmp_path / "compiled" / "final" / "model.safetensors")
    eager_weights = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    assert compiled_weights.keys() == eager_weights.keys()
    for key, value in compiled_weights.items():
        torch.testing.assert_close(value, eager_weights[key], rtol=1e-4, atol=1e-5)


def test_exact_resume_through_train_dit(mixed_cache, tiny_t5, encoder, tmp_path, monkeypatch, capsys):
    overrides = ["training.max_steps=6", "training.checkpoint_every=3", "training.batch_size=3",
                 "dit.dropout=0.1"]
    config = tiny_config(mixed_cache, tiny_t5, *overrides)
    train_dit(config, tmp_path / "straight", text_encoder=encoder)

    def same_final_weights(run: Path) -> None:
        for name in ("model", "ema"):
            straight = load_file(tmp_path / "straight" / "final" / f"{name}.safetensors")
            resumed = load_file(run / "final" / f"{name}.safetensors")
            assert straight.keys() == resumed.keys()
            for key in straight:
                assert torch.equal(straight[key], resumed[key]), f"{run.name} {name}: {key}"

    original = DiTTask.loss

    def interrupted(self, phase, batch, step):
        if step == 4:
            raise KeyboardInterrupt  # after the step-3 checkpoint, mid-way through step 4
        return original(self, phase, batch, step)

    monkeypatch.setattr(DiTTask, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_dit(config, tmp_path / "resumed", text_encoder=encoder)
    monkeypatch.setattr(DiTTask, "loss", original)
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000003").is_dir()
    result = train_dit(config, tmp_path / "resumed", text_encoder=encoder)
    assert result.step == 6
    same_final_weights(tmp_path / "resumed")

    # Stopped on purpose at step 4 (off the checkpoint grid) by `lodit train-dit --max-steps 4`, then continued:
    # the LR schedule spans all 6 steps either way, so the weights are the uninterrupted run's.
    stopped = tmp_path / "stopped"
    code, err = run_command("train-dit", ["--config", str(TINY_CONFIG), "--out", str(stopped), "--max-steps", "4",
                                          *tiny_overrides(mixed_cache, tiny_t5, *overrides)], capsys)
    assert code == 0, err
    assert (stopped / "checkpoints" / "step-00000004").is_dir() and not (stopped / "final").exists()
    early = train_dit(config, stopped, text_encoder=encoder, stop_at=5)
    assert (early.step, early.final) == (5, None) and early.checkpoint.name == "step-00000005"
    result = train_dit(config, stopped, text_encoder=encoder)
    assert result.step == 6 and result.final is not None
    same_final_weights(stopped)


# ----------------------------------------------------------------------------- command line


def test_train_dit_then_sample_end_to_end(mixed_cache, tokenizer_dir, tiny_t5, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_command("train-dit", [
        "--config", str(TINY_CONFIG), "--cache", str(mixed_cache), "--out", str(run), "--seed", "1",
        "text_encoder.name=t5", f"text_encoder.model={tiny_t5}", "training.max_steps=4",
        "training.checkpoint_every=2", "training.preview_every=2", "preview.steps=2", "preview.seconds=0.4",
    ], capsys)
    assert code == 0, err
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["format"] == "lodit-dit" and config["tasks"] == ["tta", "ttm", "tts"]
    assert config["latents"]["producer"]["checkpoint"] == str(tokenizer_dir)
    assert len(config["latents"]["mean"]) == LATENT_DIM and config["tts_frames_per_unit"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs"), size_guidance={"audio": 0})
    events.Reload()
    assert {"model/loss", "model/loss_tta", "model/lr"} <= set(events.Tags()["scalars"])
    assert {"preview/0/cfg_1", "preview/0/cfg_3", "preview/1/cfg_3"} <= set(events.Tags()["audio"])

    out = tmp_path / "samples"
    code, err = run_command("sample", [
        "--checkpoint", str(run), "--prompt", "a high beep", "--prompt", "slow piano melody",
        "--seconds", "1.5", "--steps", "3", "--seed", "5", "--out", str(out),
    ], capsys)
    assert code == 0, err
    for name in ("0000.wav", "0001.wav"):
        info = sf.info(out / name)
        assert info.samplerate == SAMPLE_RATE and info.frames == round(1.5 * SAMPLE_RATE)
    summary = json.loads((out / "samples.json").read_text())
    assert summary["settings"]["steps"] == 3 and summary["settings"]["cfg"] == 3.0
    assert [s["prompt"] for s in summary["samples"]] == ["a high beep", "slow piano melody"]
    assert [s["seed"] for s in summary["samples"]] == [5, 6] and summary["samples"][0]["nfe"] == 3

    # TTS from a prompts file: one request with a reference voice (duration from its speaking rate), one without.
    save_audio(tmp_path / "voice.wav", _clip("speech", 1.0, 9)[None], SAMPLE_RATE)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps(
            {"transcript": "hello world", "reference_audio": "voice.wav", "reference_transcript": "the quick fox"}
        )
        + "\n"
        + json.dumps({"prompt": "a man speaks", "transcript": "hello", "seconds": 0.8})
        + "\n"
    )
    code, err = run_command("sample", ["--checkpoint", str(run), "--prompts-file", str(prompts), "--steps", "2",
                                       "--out", str(out / "tts")], capsys)
    assert code == 0, err
    summary = json.loads((out / "tts" / "samples.json").read_text())
    assert [s["task"] for s in summary["samples"]] == ["tts", "tts"]
    # the reference speaks 13 characters in 25 frames; 11 characters at that rate -> 21 frames
    assert sf.info(out / "tts" / "0000.wav").frames == round(25 / 13 * 11) * HOP
    assert sf.info(out / "tts" / "0001.wav").frames == round(0.8 * SAMPLE_RATE)

    # One prompts file mixing tasks: a row's task key wins, --task covers the rows without one.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(json.dumps(row) for row in [
        {"prompt": "slow piano melody", "task": "ttm"},
        {"prompt": "a high beep"},
        {"prompt": "a man speaks", "transcript": "hello", "task": "tts"},
        {"prompt": "fast piano melody", "task": "tta"},
    ]) + "\n")
    code, err = run_command("sample", ["--checkpoint", str(run), "--prompts-file", str(mixed), "--task", "ttm",
                                       "--seconds", "0.4", "--steps", "2", "--out", str(out / "mixed")], capsys)
    assert code == 0, err
    summary = json.loads((out / "mixed" / "samples.json").read_text())
    assert [s["task"] for s in summary["samples"]] == ["ttm", "ttm", "tts", "tta"]
    assert summary["settings"]["task"] == "ttm"


def test_bad_inputs_give_one_line_errors(mixed_cache, tiny_t5, tmp_path, capsys, tmp_path_factory):
    def fails(name, argv, pattern):
        code, err = run_command(name, argv, capsys)
        errors = [line for line in err.splitlines() if line.startswith(f"lodit {name}: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err  # one line, no traceback
        assert pattern in errors[0], err

    fails("train-dit", ["--config", str(TINY_CONFIG), "--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
          "latent cache")
    fails("train-dit", ["--config", str(TINY_CONFIG), "--cache", str(mixed_cache), "dit.latent_dim=5",
                        "text_encoder.name=t5", f"text_encoder.model={tiny_t5}", "--out", str(tmp_path / "r")],
          "dit.latent_dim=5")
    (tmp_path / "empty_ckpt").mkdir()
    fails("sample", ["--checkpoint", str(tmp_path / "empty_ckpt"), "--prompt", "x"], "config.json")

    fails("train-dit", ["--config", str(TINY_CONFIG), "--cache", str(mixed_cache), "--max-steps", "0"], "--max-steps")

    run = tmp_path / "run"
    train_dit(tiny_config(mixed_cache, tiny_t5, "training.max_steps=1", "tasks=[tta, ttm]"), run)
    other = tmp_path / "other_tokenizer"
    Tokenizer.from_config({**TOKENIZER, "name": "another"}).save_pretrained(other)
    fails(
        "sample",
        ["--checkpoint", str(run), "--prompt", "x", "--tokenizer", str(other), "--out", str(tmp_path / "s")],
        "pass the tokenizer the latent cache was made with",
    )
    (tmp_path / "empty.txt").write_text("\n  \n")
    fails("sample", ["--checkpoint", str(run), "--prompts-file", str(tmp_path / "empty.txt")], "is empty")
    bad_task = tmp_path / "bad_task.jsonl"
    bad_task.write_text('{"prompt": "a high beep", "task": "ttm"}\n\n{"prompt": "x", "task": "asr"}\n')
    fails("sample", ["--checkpoint", str(run), "--prompts-file", str(bad_task)], f"{bad_task}:3: unknown task 'asr'")
    bad_task.write_text('{"prompt": "a man speaks", "task": "tts"}\n')
    fails(
        "sample",
        ["--checkpoint", str(run), "--prompts-file", str(bad_task)],
        f"{bad_task}:1: task tts needs a transcript",
    )
    bad_task.write_text('{"prompt": "a high beep"}\n{"prompt": "x", "transcript": "hello", "task": "tts"}\n')
    fails("sample", ["--checkpoint", str(run), "--prompts-file", str(bad_task), "--out", str(tmp_path / "s")],
          "request 1 asks for tts but this DiT was trained for tta, ttm")
    assert not (tmp_path / "s").exists()  # refused before generating anything
    fails("sample", ["--checkpoint", str(run), "--prompt", "", "--reference-audio", str(tmp_path / "x.wav"),
                     "--out", str(tmp_path / "s")], "nothing to generate")


@pytest.mark.parametrize("name", ["tta", "ttm", "tts", "multitask"])
def test_real_size_configs(name):
    config = load_config(DiTTrainConfig, ROOT / "configs" / "dit" / f"{name}.yaml")
    assert (config.dit.width, config.dit.depth, config.dit.heads) == (512, 12, 8)
    assert config.flow.timestep_sampler == "logit_normal" and config.flow.cond_dropout == 0.2
    assert config.sampling.sampler == "euler" and config.sampling.steps == 20 and config.sampling.guidance.scale == 3.0
    assert config.training.mixed_precision == "bf16" and config.training.ema_decay > 0
    assert config.training.warmup_steps > 0 and config.training.lr_schedule == "cosine"
    assert (config.text_encoder.name, config.text_encoder.model) == ("flan-t5", "google/flan-t5-large")
    assert config.tts.enabled == (name in ("tts", "multitask"))
    tasks = ["tta", "ttm", "tts"] if config.tasks == "auto" else config.tasks
    dit = resolve_dit_config(config.dit, latent_dim=128, text_dim=1024, tts=config.tts,
                             num_tasks=3 if len(tasks) > 1 else 0)
    with torch.device("meta"):  # shapes only, no memory
        model = ConditionedDiT(dit, config.tts)
    assert 75e6 < sum(p.numel() for p in model.parameters()) < 95e6
