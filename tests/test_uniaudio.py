"""UniAudio-Token: SAE, the EMA codebook, SAP heads, the token decoder and the CLI end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import save_tiny_whisper

from lodit import cli
from lodit.data.audio import save_audio
from lodit.data.latent_cache import LatentCache
from lodit.data.manifest import ManifestRow
from lodit.dit.token_decoder import TokenDecoder
from lodit.latent_tokenizer.sae import SAE, mean_gate
from lodit.latent_tokenizer.sap import (
    IGNORE,
    SAPConfig,
    SAPHeads,
    build_vocabulary,
    collate_targets,
    sap_targets,
    transcript_ids,
)
from lodit.latent_tokenizer.uniaudio import TokenDecoderConfig, load_uniaudio
from lodit.latent_tokenizer.vq import EMAVectorQuantizer

pytest.importorskip("transformers")
SR = 16000


# ------------------------------------------------------------------------------------------- SAE


def test_sae_gate_shapes_and_mean_gate():
    torch.manual_seed(0)
    sae = SAE(8, gate_hidden=12, adapter_hidden=6)
    deep, shallow = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out, gamma = sae(deep, shallow)
    assert out.shape == gamma.shape == (2, 5, 8)
    assert bool(((gamma > 0) & (gamma < 1)).all())
    assert sae.gate[0].in_features == 16 and sae.gate[0].out_features == 12 and isinstance(sae.gate[1], torch.nn.Tanh)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    expected = torch.cat([gamma[0], gamma[1, :2]]).mean()
    assert torch.allclose(mean_gate(gamma, mask), expected)


def test_sae_closed_gate_is_exactly_the_deep_stream_and_matches_sae_off():
    torch.manual_seed(0)
    sae = SAE(8).eval()
    with torch.no_grad():
        sae.gate[2].bias.fill_(-1e4)  # sigmoid underflows to exactly 0
    off = SAE(8, enabled=False)
    off.norm.load_state_dict(sae.norm.state_dict())
    deep, shallow = torch.randn(3, 4, 8), 100 * torch.randn(3, 4, 8)
    out, gamma = sae(deep, shallow)
    assert bool((gamma == 0).all())
    assert torch.equal(out, sae.norm(deep))
    assert torch.equal(off(deep)[0], out)


def test_sae_gradients_reach_both_streams():
    torch.manual_seed(0)
    sae = SAE(8)
    deep = torch.randn(2, 3, 8, requires_grad=True)
    shallow = torch.randn(2, 3, 8, requires_grad=True)
    out, _ = sae(deep, shallow)
    (out * torch.randn_like(out)).sum().backward()
    assert deep.grad.abs().sum() > 0 and shallow.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sae.parameters())


# -------------------------------------------------------------------------------------- codebook


def _clustered_frames(seed: int, n: int = 512, centres: int = 16, dim: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = 5 * torch.randn(centres, dim, generator=torch.Generator().manual_seed(123)) + 20  # far from the init
    return means[torch.randint(0, centres, (n,), generator=g)] + 0.1 * torch.randn(n, dim, generator=g)


def test_codebook_usage_rises_and_dead_codes_are_restarted():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(32, 4, decay=0.9, restart_every=5, dead_threshold=1.0)
    first = vq(_clustered_frames(0)[None]).stats
    restarted = 0
    for step in range(1, 40):
        stats = vq(_clustered_frames(step)[None]).stats
        restarted += stats["restarted"]
    assert first["usage"] <= 2 / 32  # random codes far from the data: one or two take every frame
    assert restarted > 0
    assert stats["usage"] >= 0.4 and stats["perplexity"] >= 8
    # the codes moved onto the data: quantisation error collapsed
    x = _clustered_frames(99)
    vq.eval()
    error = (vq(x[None]).quantized[0] - x).pow(2).mean()
    assert error < 0.5


def test_codebook_is_frozen_in_eval_and_straight_through_passes_gradients():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(8, 4)
    x = torch.randn(2, 6, 4, requires_grad=True)
    vq.eval()
    before = vq.codebook.clone()
    out = vq(x)
    assert torch.equal(vq.codebook, before)
    assert torch.allclose(out.quantized, vq.lookup(out.ids))  # forward value is the code
    weights = torch.randn(2, 6, 4)
    (out.quantized * weights).sum().backward()
    assert torch.allclose(x.grad, weights)  # identity gradient
    x.grad = None
    vq(x).commitment_loss.backward()
    assert x.grad.abs().sum() > 0  # commitment pulls the encoder output


# ------------------------------------------------------------------------------------------- SAP


def _rows():
    return [
        ManifestRow(audio="a.wav", transcript="Hello there.", speaker="s1", caption="a man speaking softly",
                    labels={"gender": "male"}),
        ManifestRow(audio="b.wav", transcript="good day", speaker="s2", caption="a woman speaking loudly",
                    labels={"gender": "female"}),
        ManifestRow(audio="c.wav", caption="rain falling softly", labels={"event": "rain"}),
        ManifestRow(audio="d.wav", labels={"event": "wind"}),
        ManifestRow(audio="e.wav"),
    ]


def test_sap_vocabulary_and_targets():
    config = SAPConfig(vocal_keys=["speaker", "gender"], scene_keys=["event"])
    vocab = build_vocabulary(_rows(), config)
    assert vocab.vocal == {"speaker": ["s1", "s2"], "gender": ["female", "male"]}
    assert "event=rain" in vocab.tags and "word=softly" in vocab.tags and "word=speaking" in vocab.tags
    assert transcript_ids("Hi, yo!") == [transcript_ids("h")[0], transcript_ids("i")[0], 1] + transcript_ids("yo")
    t = [sap_targets(r, config, vocab) for r in _rows()]
    assert t[2]["transcript"] is None and t[2]["vocal"]["speaker"] == IGNORE
    assert t[4]["has_tags"] is False and t[3]["has_tags"] is True


def test_sap_losses_ignore_missing_fields():
    torch.manual_seed(0)
    config = SAPConfig(vocal_keys=["speaker", "gender"], scene_keys=["event"], min_word_clips=1)
    rows = _rows()
    vocab = build_vocabulary(rows, config)
    heads = SAPHeads(6, config, vocab)
    frames, mask = torch.randn(5, 20, 6), torch.ones(5, 20, dtype=torch.bool)
    targets = collate_targets([sap_targets(r, config, vocab) for r in rows])
    _, losses = heads(frames, mask, targets)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    # clips without any field: every family is exactly zero and no head learns from them
    bare = collate_targets([sap_targets(ManifestRow(audio="x.wav"), config, vocab)] * 2)
    total, losses = heads(frames[:2], mask[:2], bare)
    assert all(float(v) == 0.0 for v in losses.values()) and float(total) == 0.0
    # changing the frames of a clip without a transcript leaves the linguistic loss unchanged
    _, base = heads(frames, mask, targets)
    moved = frames.clone()
    moved[2:] += 3.0
    _, other = heads(moved, mask, targets)
    assert torch.allclose(base["linguistic"], other["linguistic"])
    assert not torch.allclose(base["scene"], other["scene"])


# ---------------------------------------------------------------------------------- token decoder


def test_token_decoder_overfits_one_clip():
    torch.manual_seed(0)
    frames, dim = 24, 6
    ids = torch.randint(0, 16, (1, frames))
    latents = torch.cumsum(torch.randn(1, frames, dim), dim=1) / 3  # a smooth-ish latent path
    config = TokenDecoderConfig(token_dim=16, width=32, depth=2, heads=2, steps=12, prompt=True)
    decoder = TokenDecoder(16, dim, config)
    decoder.set_latent_stats(latents[0].mean(0), latents[0].std(0))
    mask = torch.ones(1, frames, dtype=torch.bool)
    prompt = decoder.prompt_of(latents)
    before = (decoder.generate(ids, prompt) - latents).pow(2).mean()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(250):
        loss = decoder.loss(ids.expand(8, -1), latents.expand(8, -1, -1), mask.expand(8, -1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    after = (decoder.generate(ids, prompt) - latents).pow(2).mean()
    assert np.mean(losses[-20:]) < 0.35 * np.mean(losses[:20])
    assert after < 0.25 * before and after < 0.2 * latents.var()


# ------------------------------------------------------------------------------------ CLI end to end


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"), 32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rows = [
        {"transcript": "hello world", "speaker": "a", "caption": "a voice speaking", "labels": {"gender": "male"}},
        {"transcript": "good day", "speaker": "b", "caption": "a voice speaking", "labels": {"gender": "female"}},
        {"caption": "rain falling", "labels": {"event": "rain"}},
        {"caption": "a beep", "labels": {"event": "beep"}},
    ]
    t = np.arange(SR) / SR
    with open(folder / "manifest.jsonl", "w") as handle:
        for i, row in enumerate(rows):
            wav = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.01 * np.random.default_rng(i).standard_normal(SR)
            save_audio(folder / f"{i}.wav", torch.from_numpy(wav.astype(np.float32))[None], SR)
            handle.write(json.dumps({"audio": f"{i}.wav", **row}) + "\n")
    return folder / "manifest.jsonl"


def test_cli_train_encode_tokens_and_reconstruct(whisper_dir, manifest, tmp_path):
    from lodit.config import load_yaml
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    tiny = load_yaml("configs/tokenizer/tiny.yaml")["tokenizer"]
    autoencoder = Tokenizer.from_config(tiny).save_pretrained(tmp_path / "ae")
    small = [
        f"uniaudio.teacher.model={whisper_dir}",
        "uniaudio.teacher_dim=32",
        "uniaudio.teacher_layers=2",
        "uniaudio.sae.gate_hidden=32",
        "uniaudio.sae.adapter_hidden=32",
        "uniaudio.codebook.size=16",
        "uniaudio.trainable_layers=1",
        "uniaudio.teacher_heads=2",
        "uniaudio.teacher_ffn=64",
        "uniaudio.trainable_lr_scale=0.05",
        f"decoder.autoencoder={autoencoder}",
        "training.max_steps=4",
        "decoder_training.max_steps=3",
        "training.batch_size=2",
        "decoder_training.batch_size=2",
    ]
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train-tokenizer",
                "--config",
                "configs/uniaudio/tiny.yaml",
                "--manifest",
                str(manifest),
                "--out",
                str(run),
                *small,
            ]
        )
        == 0
    )
    model = load_uniaudio(run / "final")
    assert model.config.vocabulary.vocal == {"speaker": ["a", "b"], "gender": ["female", "male"]}
    assert (
        cli.main(
            [
                "encode",
                "--tokens",
                str(run / "final"),
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "tokens"),
                "--no-progress",
            ]
        )
        == 0
    )
    cache = LatentCache(tmp_path / "tokens")
    assert cache.producer["codebook_hash"] == model.quantizer.codebook_hash() and cache.producer["codebook_size"] == 16
    ids = cache[0].latents
    assert ids.shape == (25, 1) and torch.equal(ids, ids.round()) and 0 <= ids.min() and ids.max() < 16
    from lodit.eval.understanding import uniaudio_statistics

    stats = {
        m.name: m for m in uniaudio_statistics(run / "final", [manifest.parent / "0.wav", manifest.parent / "2.wav"])
    }
    assert 0 < stats["sae_gate"].value < 1 and stats["sae_gate"].n == 2
    assert 0 < stats["codebook_usage"].value <= 1 and 1 <= stats["codebook_perplexity"].value <= 16
    assert (
        cli.main(
            ["encode", "--tokenizer", str(run / "final"), "--manifest", str(manifest), "--out", str(tmp_path / "wrong")]
        )
        == 2
    )  # points at --tokens
    out = tmp_path / "rec.wav"
    assert cli.main(["reconstruct", "--tokenizer", str(run / "final"), str(manifest.parent / "0.wav"), str(out)]) == 0
    assert out.is_file()
    # the tokenizer alone (no decoder stage) can't reconstruct: one clear line, exit 2
    assert (
        cli.main(
            [
                "reconstruct",
                "--tokenizer",
                str(run / "tokenizer" / "final"),
                str(manifest.parent / "0.wav"),
                str(tmp_path / "x.wav"),
            ]
        )
        == 2
    )


def test_cli_bad_uniaudio_configs_are_one_line_errors(manifest, tmp_path, capsys):
    base = [
        "train-tokenizer",
        "--config",
        "configs/uniaudio/tiny.yaml",
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli.main([*base, "uniaudio.sae.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "tiny.yaml" in err and "bogus" in err and "Traceback" not in err
    assert cli.main(base) == 2  # the decoder stage without decoder.autoencoder, refused before any work
    assert "decoder.autoencoder" in capsys.readouterr().err
    assert not (tmp_path / "run" / "tokenizer").exists()
    assert cli.main([*base, "uniaudio.sae.shallow_layer=9"]) == 2
    assert "shallow_layer=9" in capsys.readouterr().err


def test_trainable_top_blocks_start_as_the_pretrained_encoder(whisper_dir):
    from lodit.latent_tokenizer.sae import SAEConfig
    from lodit.latent_tokenizer.semantic import SemanticEncoderConfig
    from lodit.latent_tokenizer.uniaudio import (
        UniAudioToken,
        UniAudioTokenConfig,
        build_teacher,
    )
    from lodit.latent_tokenizer.vq import CodebookConfig

    config = UniAudioTokenConfig(
        teacher=SemanticEncoderConfig(model=str(whisper_dir)),
        teacher_dim=32,
        teacher_layers=2,
        trainable_layers=1,
        teacher_heads=2,
        teacher_ffn=64,
        codebook=CodebookConfig(size=8),
        sae=SAEConfig(shallow_layer=1),
    )
    assert config.layers == (1, 1) and config.teacher_deep_layer == 1
    teacher = build_teacher(config)
    model = UniAudioToken(config)
    model.top.load_from(teacher.encoder)
    wav = 0.1 * torch.randn(1, 30 * SR, generator=torch.Generator().manual_seed(0))  # one whole Whisper window
    below, final = teacher.hidden_states(wav, [1, None])
    assert torch.allclose(model.top(below), final, atol=1e-4)
    # padding frames are masked: a clip's deep stream does not depend on what pads it
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    h = torch.randn(2, 40, 32)
    other = h.clone()
    other[1, 30:] = 50.0
    assert torch.allclose(model.top(h, mask)[1, :30], model.top(other, mask)[1, :30], atol=1e-5)
    # the top block trains with the rest
    model.train()
    out = model(torch.randn(2, 10, 64))
    (out.quantized.sum() + out.commitment_loss).backward()
    assert all(p.grad is not None for p in model.top.parameters())
    with pytest.raises(ValueError, match="sae.shallow_layer <= 0"):
        UniAudioTokenConfig(
            teacher_layers=2, trainable_layers=2, teacher_dim=32, teacher_heads=2, sae=SAEConfig(shallow_layer=1)
        )


def test_trainable_lr_scale_slows_the_fine_tuned_blocks_only():
    from lodit.latent_tokenizer.sae import SAEConfig
    from lodit.latent_tokenizer.uniaudio import TopBlocks, UniAudioTokenConfig

    def moved(scale: float) -> float:
        torch.manual_seed(0)
        config = UniAudioTokenConfig(
            teacher_dim=16,
            teacher_layers=2,
            trainable_layers=1,
            teacher_heads=2,
            teacher_ffn=32,
            trainable_lr_scale=scale,
            sae=SAEConfig(shallow_layer=1),
        )
        top = TopBlocks(config)
        reference = TopBlocks(
            UniAudioTokenConfig(
                teacher_dim=16,
                teacher_layers=2,
                trainable_layers=1,
                teacher_heads=2,
                teacher_ffn=32,
                sae=SAEConfig(shallow_layer=1),
            )
        )
        top.load_from(
            type("Encoder", (), {"layers": [None, reference.layers[0]], "layer_norm": reference.layer_norm})()
        )
        before = top.layers[0].fc1.weight.detach().clone()
        assert torch.allclose(before, reference.layers[0].fc1.weight)  # loading sets the effective weight
        optimizer = torch.optim.Adam(top.parameters(), lr=1e-2)
        top(torch.randn(2, 5, 16)).pow(2).sum().backward()
        optimizer.step()
        return float((top.layers[0].fc1.weight.detach() - before).abs().mean())

    assert moved(0.05) == pytest.approx(0.05 * moved(1.0), rel=0.05)  # Adam eps: not exactly
