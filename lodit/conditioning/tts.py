"""The TTS text front-end and prompt infilling, F5-TTS style: no aligner, no duration model.

A transcript becomes a sequence of token ids (characters, or IPA phonemes when espeak-ng is
available) that is padded with a *filler* token to the number of latent frames of the utterance;
a small trained network (:class:`TTSTextEmbedding`: embedding + ConvNeXt-V2 blocks) refines it
into a time-aligned conditioning ``(B, T, dim)`` that the DiT concatenates to its input frames.
The DiT learns the alignment itself. Training infills a masked span of the latents given the
rest as an audio prompt (:class:`PromptInfill`, :func:`random_prompt_mask`), and a share of the
utterances lose the prompt altogether (the DiT trainer's ``tts.prompt_drop_prob``) so text-only
speech is learned too; at sampling time the reference audio is the prompt, its transcript is
prepended to the target text, and the total length comes from the user or from the prompt's
speaking rate (:func:`estimate_total_frames`); without a reference there is no prompt.

Vocabulary (:data:`VOCABULARY`, one table for both kinds, append-only because a trained model's
embedding rows follow it): id 0 is the filler/padding token, id 1 is ``<unk>`` (any symbol not in
the table), then space, punctuation, digits, ``a``-``z``, common accented Latin letters, and the
IPA symbols, stress/length marks and diacritics espeak-ng emits. One token per Unicode code point.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lodit.conditioning import phonemes
from lodit.errors import LoditError

FILLER_ID = 0
UNK_ID = 1

_SPECIALS = ("<filler>", "<unk>")
_PUNCTUATION = " !\"'(),-.:;?"
_DIGITS = "0123456789"
_LATIN = "abcdefghijklmnopqrstuvwxyz"
_ACCENTED_LATIN = "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿœß"
# IPA letters (pulmonic and non-pulmonic consonants, vowels) not already among the Latin ones.
_IPA_LETTERS = "ɐɑɒʙβɓɕðɖɗəɘɚɛɜɝɞɟʄɡɠɢʛɣɤɥħɦɧɨɪʝɭɬɫɮʟɯɰɱɲŋɳɴɵɶɸɹɺɻɽɾʀʁʂʃʈʉʊʋʌʍʎʏʐʑʒʔʕʡʢǀǁǂǃθχʘᵻᵊ"
# Suprasegmentals and modifier letters: primary/secondary stress, long, half-long, aspiration,
# palatalisation, labialisation, velarisation, pharyngealisation, nasal/lateral release, linking,
# then combining diacritics: nasalised, syllabic, non-syllabic, dental, voiceless, voiced, no
# audible release, tie bar.
_IPA_MARKS = "ˈˌːˑʰʲʷˠˤⁿˡ‿" + "\u0303\u0329\u032f\u032a\u0325\u032c\u031a\u0361"

VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        _SPECIALS + tuple(_PUNCTUATION + _DIGITS + _LATIN + _ACCENTED_LATIN + _IPA_LETTERS + _IPA_MARKS)
    )
)
VOCAB_SIZE = len(VOCABULARY)
_SYMBOL_IDS = {symbol: index for index, symbol in enumerate(VOCABULARY)}

# Typographic variants folded onto the ASCII punctuation in the vocabulary.
_TYPOGRAPHIC = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-"})


def normalize_text(text: str) -> str:
    """Characters as the ``chars`` front-end sees them: NFKC, typographic quotes and dashes
    folded to ASCII, lower-cased, runs of whitespace collapsed to one space."""
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHIC).lower()
    return re.sub(r"\s+", " ", text).strip()


class TextFrontEnd:
    """Transcript -> token ids over :data:`VOCABULARY`, and padding to a frame count.

    ``kind="chars"`` (default, works everywhere) tokenizes :func:`normalize_text`'s characters;
    ``kind="phonemes"`` tokenizes espeak-ng's IPA for voice ``language``.
    """

    def __init__(self, kind: Literal["chars", "phonemes"] = "chars", language: str = "en-us"):
        if kind not in ("chars", "phonemes"):
            raise LoditError(f"unknown TTS text front-end kind {kind!r}; choose 'chars' or 'phonemes'")
        if kind == "phonemes" and not phonemes.available():
            raise LoditError(
                "the 'phonemes' TTS front-end needs espeak-ng: pip install espeakng-loader, or use kind 'chars'"
            )
        self.kind = kind
        self.language = language

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def units(self, text: str) -> list[str]:
        """The symbols ``text`` is spoken as: characters, or IPA symbols (one per code point)."""
        if self.kind == "phonemes":
            return list(phonemes.phonemize(normalize_text(text), self.language))
        return list(normalize_text(text))

    def tokens(self, text: str) -> list[int]:
        """Token ids of ``text``; symbols outside the vocabulary map to ``UNK_ID``."""
        return [_SYMBOL_IDS.get(symbol, UNK_ID) for symbol in self.units(text)]

    def batch_to_frames(
        self, texts: Sequence[str], n_frames: Sequence[int], *, truncate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of each text padded with ``FILLER_ID`` to its frame count.

        Returns ``ids (B, T_max)`` long and ``mask (B, T_max)`` bool, True on each utterance's
        ``n_frames[i]`` frames. A text with more tokens than its frames can't be aligned and is an
        error unless ``truncate=True``, which keeps its first ``n_frames[i]`` tokens.
        """
        if len(texts) != len(n_frames):
            raise ValueError(f"{len(texts)} texts but {len(n_frames)} frame counts")
        lengths = [int(n) for n in n_frames]
        max_frames = max(lengths, default=0)
        ids = torch.full((len(texts), max_frames), FILLER_ID, dtype=torch.long)
        mask = torch.arange(max_frames)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
        for row, (text, frames) in enumerate(zip(texts, lengths, strict=True)):
            tokens = self.tokens(text)
            if len(tokens) > frames:
                if not truncate:
                    raise LoditError(
                        f"TTS text {row} has {len(tokens)} tokens but only {frames} latent frames "
                        f"({text[:40]!r}); give it a longer duration or drop the clip"
                    )
                tokens = tokens[:frames]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids, mask


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN over time for ``(B, T, C)``: channels whose energy over the valid frames is
    large relative to the other channels are amplified. Starts as the identity (zero gamma, beta)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        energy = (x * mask[..., None]).norm(dim=1, keepdim=True)  # (B, 1, C), valid frames only
        relative = energy / (energy.mean(dim=-1, keepdim=True) + self.eps)
        return x + self.gamma * (x * relative) + self.beta


class ConvNeXtV2Block1d(nn.Module):
    """Depthwise conv (k7) -> LayerNorm -> Linear -> GELU -> GRN -> Linear, plus the residual.

    Frames outside ``mask`` are zeroed before the convolution so an utterance's output does not
    depend on how much padding its batch has.
    """

    def __init__(self, dim: int, inner_dim: int, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep frames aligned, got {kernel_size}")
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.up = nn.Linear(dim, inner_dim)
        self.grn = GlobalResponseNorm(inner_dim)
        self.down = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask[..., None]
        h = self.depthwise(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        h = self.grn(F.gelu(self.up(self.norm(h))), mask)
        return x + self.down(h)


class TTSTextEmbedding(nn.Module):
    """Filler-padded token ids ``(B, T)`` -> time-aligned text features ``(B, T, dim)``.

    Trained together with the DiT (it is the DiT's ``frame_cond``). The filler token has its own
    learned embedding: it tells the network where the text has run out. Unconditional inputs (for
    classifier-free guidance) are all-filler ids.
    """

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        dim: int = 512,
        convnext_layers: int = 4,
        kernel_size: int = 7,
        expansion: int = 2,
    ):
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(
            ConvNeXtV2Block1d(dim, dim * expansion, kernel_size) for _ in range(convnext_layers)
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        x = self.embedding(ids)  # (B, T, D)
        for block in self.blocks:
            x = block(x, mask)
        return x * mask[..., None]


@dataclass(frozen=True)
class PromptInfill:
    """F5-style infilling inputs: the audio prompt the DiT sees and the frames it must produce.

    ``cond_audio (B, T, D)`` holds the clean latents on prompt frames and zeros elsewhere (the DiT
    concatenates it to its input); ``prompt_mask (B, T)`` is True on prompt frames;
    ``loss_mask (B, T)`` is True on the frames to predict: valid and not prompt.
    """

    cond_audio: torch.Tensor
    prompt_mask: torch.Tensor
    loss_mask: torch.Tensor

    @classmethod
    def build(
        cls, x0: torch.Tensor, prompt_mask: torch.Tensor, valid_mask: torch.Tensor | None = None
    ) -> PromptInfill:
        """Training inputs from clean latents ``x0 (B, T, D)`` and a prompt mask ``(B, T)``;
        ``valid_mask (B, T)`` marks real (not padded) frames, all frames when omitted."""
        if x0.dim() != 3 or prompt_mask.shape != x0.shape[:2]:
            raise ValueError(
                f"x0 must be (B, T, D) and prompt_mask (B, T); got {tuple(x0.shape)} and {tuple(prompt_mask.shape)}"
            )
        valid = torch.ones_like(prompt_mask, dtype=torch.bool) if valid_mask is None else valid_mask.bool()
        prompt = prompt_mask.bool() & valid
        return cls(
            cond_audio=x0 * prompt[..., None].to(x0.dtype), prompt_mask=prompt, loss_mask=valid & ~prompt
        )

    @classmethod
    def from_prompt(
        cls, prompt_latents: torch.Tensor, prompt_lengths: torch.Tensor, total_lengths: torch.Tensor
    ) -> PromptInfill:
        """Sampling inputs: each reference prompt ``prompt_latents[i, :prompt_lengths[i]]`` first,
        followed by ``total_lengths[i] - prompt_lengths[i]`` frames to generate."""
        if torch.any(prompt_lengths > total_lengths):
            raise LoditError(
                "a TTS prompt is longer than the requested total length; ask for a longer duration"
            )
        batch, _, dim = prompt_latents.shape
        frames = int(total_lengths.max())
        positions = torch.arange(frames, device=prompt_latents.device)[None, :]
        prompt = positions < prompt_lengths.to(prompt_latents.device)[:, None]  # (B, T)
        valid = positions < total_lengths.to(prompt_latents.device)[:, None]
        x0 = prompt_latents.new_zeros(batch, frames, dim)
        copied = min(frames, prompt_latents.shape[1])
        x0[:, :copied] = prompt_latents[:, :copied]
        return cls.build(x0, prompt, valid)


def random_prompt_mask(
    lengths: torch.Tensor,
    min_frac: float = 0.7,
    max_frac: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random prompt mask ``(B, max(lengths))`` for infilling training, as F5-TTS.

    For each utterance a fraction in ``[min_frac, max_frac]`` of its frames (at least one) is a
    contiguous span *to predict*, placed uniformly at random; its other valid frames are the prompt
    (True). ``max_frac=1`` allows no prompt at all, but only where the span rounds up to the whole
    utterance; text-only TTS is trained by dropping the prompt on purpose (``tts.prompt_drop_prob``).
    """
    if not 0.0 <= min_frac <= max_frac <= 1.0:
        raise LoditError(
            f"prompt mask fractions must satisfy 0 <= min_frac <= max_frac <= 1; got {min_frac}, {max_frac}"
        )
    lengths = lengths.long().cpu()
    fractions = min_frac + (max_frac - min_frac) * torch.rand(len(lengths), generator=generator)
    span = (fractions * lengths).round().long().clamp(min=1)
    span = torch.minimum(span, lengths)
    start = (torch.rand(len(lengths), generator=generator) * (lengths - span + 1)).floor().long()
    positions = torch.arange(int(lengths.max()) if len(lengths) else 0)[None, :]
    valid = positions < lengths[:, None]
    predicted = (positions >= start[:, None]) & (positions < (start + span)[:, None])
    return valid & ~predicted


def estimate_total_frames(
    prompt_frames: int,
    prompt_text: str,
    target_text: str,
    front_end: TextFrontEnd | None = None,
    speed: float = 1.0,
) -> int:
    """Total frames (prompt + generated) for speaking ``target_text`` at the prompt's rate.

    The prompt speaks ``len(units(prompt_text))`` symbols (characters including spaces and
    punctuation, or phonemes, as ``front_end`` counts them; characters by default) in
    ``prompt_frames`` frames; the target gets ``prompt_frames / n_prompt * n_target / speed`` more
    frames, rounded, at least one.
    """
    front_end = front_end or TextFrontEnd("chars")
    prompt_units = len(front_end.units(prompt_text))
    if prompt_frames <= 0 or prompt_units == 0:
        raise LoditError(
            "estimating a TTS duration needs a non-empty prompt transcript and prompt audio; or give the duration"
        )
    if speed <= 0:
        raise LoditError(f"speaking speed must be positive, got {speed}")
    target_units = len(front_end.units(target_text))
    generated = max(1, round(prompt_frames / prompt_units * target_units / speed))
    return int(prompt_frames) + generated


def frames_from_seconds(seconds: float, frame_rate: float) -> int:
    """Latent frames for ``seconds`` of audio at ``frame_rate`` frames per second (rounded, >= 1)."""
    if seconds <= 0:
        raise LoditError(f"a duration must be positive, got {seconds} s")
    return max(1, round(seconds * frame_rate))
