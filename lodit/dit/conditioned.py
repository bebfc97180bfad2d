"""The trained generator module: the DiT plus the conditioning it owns, and the conditions it reads.

:class:`ConditionedDiT` is what ``lodit train-dit`` optimises and what
:class:`~lodit.dit.generator.Generator` runs. It holds the :class:`~lodit.dit.model.DiT` and, when
TTS is enabled, the trained :class:`~lodit.conditioning.tts.TTSTextEmbedding`. The frozen caption
text encoder stays *outside* (its states arrive in :class:`Conditions`), so its weights never end up
in a DiT checkpoint.

One mechanism serves TTA, TTM and TTS:

- captions -> text-encoder states the DiT cross-attends to (``text``/``text_mask``); a row with no
  caption has an all-False text mask and attends only to the DiT's learned null token;
- with TTS enabled every row also gets a per-frame condition
  ``frame_cond = concat(TTSTextEmbedding(ids), cond_audio)`` ``(B, T, tts.text_dim + D)``: the
  transcript's token ids padded with the filler token to the row's frames (all filler for a
  caption-only row) and the F5-style audio prompt (clean latents on prompt frames, zeros elsewhere);
- the task id (multi-task models) and the target duration go into the DiT's global vector.

The unconditional input for classifier-free guidance (:meth:`Conditions.drop`) removes the
caption, the transcript and the audio prompt *together* and keeps what describes the output's
shape (frame mask, duration, task), in training (condition dropout) and sampling alike. Training
also removes the audio prompt *alone* (``tts.prompt_drop_prob``), which is the input of text-only
TTS: a transcript and no reference voice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lodit.conditioning.tts import FILLER_ID, VOCAB_SIZE, TTSTextEmbedding
from lodit.dit.model import DiT, DiTConfig
from lodit.errors import LoditError


@dataclass
class TTSConfig:
    """Text-to-speech conditioning: transcript tokens padded to the frames + audio-prompt infilling."""

    enabled: bool = False
    front_end: Literal["chars", "phonemes"] = "chars"  # phonemes need espeak-ng
    language: str = "en-us"  # espeak-ng voice for the phonemes front-end
    text_dim: int = 512  # width of the trained transcript embedding (TTSTextEmbedding)
    convnext_layers: int = 4  # ConvNeXt-V2 blocks refining the filler-padded tokens
    # Training: each utterance gets a contiguous span of this fraction of its frames to generate;
    # the rest is the audio prompt (F5-TTS: 0.7..1.0; 1.0 = no prompt, plain TTS).
    mask_min_frac: float = 0.7
    mask_max_frac: float = 1.0
    # Training: probability that an utterance loses its audio prompt alone (it keeps its transcript
    # and the whole clip becomes the span to generate), so the model also learns text-only speech
    # in a voice of its own, what `lodit sample --transcript` without a reference asks for (F5-TTS:
    # 0.3). Drawn independently of flow.cond_dropout, which drops transcript, prompt and caption together.
    prompt_drop_prob: float = 0.3

    def __post_init__(self) -> None:
        if self.text_dim < 1 or self.convnext_layers < 0:
            raise ValueError(f"tts.text_dim must be >= 1 and tts.convnext_layers >= 0, got "
                             f"{self.text_dim} and {self.convnext_layers}")
        if not 0.0 <= self.mask_min_frac <= self.mask_max_frac <= 1.0:
            raise ValueError(f"tts.mask_min_frac/mask_max_frac must satisfy 0 <= min <= max <= 1, got "
                             f"{self.mask_min_frac} and {self.mask_max_frac}")
        if not 0.0 <= self.prompt_drop_prob <= 1.0:
            raise ValueError(f"tts.prompt_drop_prob must be between 0 and 1, got {self.prompt_drop_prob}")


def resolve_dit_config(
    dit: DiTConfig, *, latent_dim: int, text_dim: int, tts: TTSConfig, num_tasks: int
) -> DiTConfig:
    """The DiT config with the widths that come from the data filled in and checked.

    ``latent_dim`` (the latent cache's width) and ``text_dim`` (the text encoder's width) may be
    given as 0 ("take it from there") or must match; ``frame_cond_dim`` follows from ``tts`` and
    ``num_tasks`` from the trained tasks, so they must be left at 0 in a config.
    """
    for key, value, source in (("latent_dim", latent_dim, "the latent cache"),
                               ("text_dim", text_dim, "the text encoder")):
        given = getattr(dit, key)
        if given not in (0, value):
            raise LoditError(f"dit.{key}={given} but {source} gives {value}; set dit.{key}=0 to take it from there")
    frame_cond_dim = tts.text_dim + latent_dim if tts.enabled else 0
    for key, value, source in (("frame_cond_dim", frame_cond_dim, "tts.*"), ("num_tasks", num_tasks, "tasks")):
        given = getattr(dit, key)
        if given not in (0, value):
            raise LoditError(f"dit.{key}={given}: it is derived from {source} ({value}); leave dit.{key}=0")
    return dataclasses.replace(
        dit, latent_dim=latent_dim, text_dim=text_dim, frame_cond_dim=frame_cond_dim, num_tasks=num_tasks
    )


@dataclass
class Conditions:
    """Everything the network sees besides the noisy latents and the time, batch first.

    ``frame_mask (B, T)`` True on frames to generate or keep (valid, not padding);
    ``duration (B,)`` target seconds; ``text (B, L, text_dim)`` / ``text_mask (B, L)`` caption
    states (None or all-False mask = no caption); ``tts_ids (B, T)`` long transcript ids padded
    with ``FILLER_ID``; ``cond_audio (B, T, D)`` the audio prompt (normalised latents on prompt
    frames, zeros elsewhere); ``task (B,)`` long task ids. Unused entries stay None.
    """

    frame_mask: torch.Tensor
    duration: torch.Tensor
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    tts_ids: torch.Tensor | None = None
    cond_audio: torch.Tensor | None = None
    task: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.frame_mask.shape[0]

    def as_dict(self) -> dict[str, Any]:
        """Field -> tensor (or None), the form the samplers stack for batched guidance."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to(self, device: torch.device | str) -> Conditions:
        return Conditions(**{k: None if v is None else v.to(device) for k, v in self.as_dict().items()})

    def drop(self, rows: torch.Tensor) -> Conditions:
        """A copy whose ``rows`` (``(B,)`` bool) carry the null condition: no caption (zero states,
        all-False mask), an all-filler transcript and no audio prompt, all dropped together."""
        rows = rows.to(self.frame_mask.device).bool()
        text, text_mask, tts_ids, cond_audio = self.text, self.text_mask, self.tts_ids, self.cond_audio
        if text is not None:
            text = text * (~rows).to(text.dtype)[:, None, None]
        if text_mask is not None:
            text_mask = text_mask & ~rows[:, None]
        if tts_ids is not None:
            tts_ids = tts_ids.masked_fill(rows[:, None], FILLER_ID)
        if cond_audio is not None:
            cond_audio = cond_audio * (~rows).to(cond_audio.dtype)[:, None, None]
        return dataclasses.replace(self, text=text, text_mask=text_mask, tts_ids=tts_ids, cond_audio=cond_audio)

    def unconditional(self) -> Conditions:
        """The null condition for every row (classifier-free guidance's unconditional branch)."""
        return self.drop(torch.ones(self.batch_size, dtype=torch.bool, device=self.frame_mask.device))


class ConditionedDiT(nn.Module):
    """The DiT with its trained conditioning modules (see the module docstring)."""

    def __init__(self, dit: DiTConfig, tts: TTSConfig):
        super().__init__()
        expected = tts.text_dim + dit.latent_dim if tts.enabled else 0
        if dit.frame_cond_dim != expected:
            raise LoditError(f"dit.frame_cond_dim={dit.frame_cond_dim} does not fit the TTS settings "
                             f"(expected {expected}); build the config with resolve_dit_config")
        self.dit_config = dit
        self.tts_config = tts
        self.dit = DiT(dit)
        self.tts_embed = TTSTextEmbedding(VOCAB_SIZE, tts.text_dim, tts.convnext_layers) if tts.enabled else None

    @property
    def latent_dim(self) -> int:
        return self.dit_config.latent_dim

    def dit_inputs(self, cond: Conditions, like: torch.Tensor) -> dict[str, Any]:
        """The DiT's keyword inputs for conditions ``cond`` and noisy latents ``like`` ``(B, T, D)``."""
        cfg = self.dit_config
        batch, frames, _ = like.shape
        if cond.frame_mask.shape != (batch, frames):
            raise ValueError(f"frame_mask {tuple(cond.frame_mask.shape)} must be (B, T) = {(batch, frames)}")
        frame_cond = None
        if self.tts_embed is not None:
            ids = cond.tts_ids
            if ids is None:
                ids = torch.full((batch, frames), FILLER_ID, dtype=torch.long, device=like.device)
            text_frames = self.tts_embed(ids, cond.frame_mask)  # (B, T, E)
            audio = cond.cond_audio if cond.cond_audio is not None else like.new_zeros(batch, frames, cfg.latent_dim)
            frame_cond = torch.cat((text_frames.to(like.dtype), audio.to(like.dtype)), dim=-1)  # (B, T, E + D)
        elif cond.tts_ids is not None or cond.cond_audio is not None:
            raise LoditError("a transcript or audio prompt was given but this model was trained without TTS "
                             "(tts.enabled=false); use a TTS checkpoint")
        text, text_mask = (cond.text, cond.text_mask) if cfg.text_dim > 0 else (None, None)
        return {
            "text": text,
            "text_mask": text_mask,
            "frame_cond": frame_cond,
            "mask": cond.frame_mask,
            "task": cond.task if cfg.num_tasks > 0 else None,
            "duration": cond.duration if cfg.duration_cond else None,
        }

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Velocity ``(B, T, D)`` for noisy latents ``x`` at flow times ``t`` ``(B,)`` under ``cond``."""
        return self.dit(x, t, **self.dit_inputs(cond, x))

    def velocity_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """``model_fn`` for :func:`lodit.samplers.sample`: conditions travel as :meth:`Conditions.as_dict`
        dicts so the sampler can stack the guided and unguided branches into one batch."""
        return self(x, t, Conditions(**cond))


def caption_states(
    encoder: Any, captions: Sequence[str], device: torch.device | str, length: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption states ``(B, L, dim)`` and mask ``(B, L)`` from a text encoder (or its disk cache).

    An empty caption is *no* caption: zero states and an all-False mask (the DiT's null token),
    the same input condition dropout produces. ``length`` pads ``L`` up to at least that many
    tokens (so two condition sets can be stacked into one guided batch).
    """
    rows = [i for i, caption in enumerate(captions) if caption.strip()]
    width = max(1, length)
    encoded = None
    if rows:
        states, mask = encoder.encode([captions[i] for i in rows])  # (R, L, dim), (R, L)
        encoded = (states.to(device), mask.to(device))
        width = max(width, states.shape[1])
    text = torch.zeros(len(captions), width, encoder.dim, device=device)
    text_mask = torch.zeros(len(captions), width, dtype=torch.bool, device=device)
    if encoded is not None:
        index = torch.tensor(rows, device=device)
        text[index, : encoded[0].shape[1]] = encoded[0].float()
        text_mask[index, : encoded[1].shape[1]] = encoded[1]
    return text, text_mask
