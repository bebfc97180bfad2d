"""CLAP score: how well generated audio matches its text prompt, in a CLAP model's joint space.

The CLAP model (``transformers`` ``ClapModel`` + ``ClapProcessor``, by hub name or local folder —
e.g. LAION-CLAP ``630k-audioset`` converted to ``transformers``, as papers use) is loaded by
:class:`~lodit.eval.embedders.ClapAudioText`, which also serves the ``clap`` FAD embedder. No CLAP
weights ship in any offline package, so there is no default: without a model the score is
reported as unavailable, with the reason, instead of failing the evaluation.

CLAP score (:func:`clap_score`): for each (prompt, clip) pair, the cosine between the prompt's
text embedding and the clip's audio embedding (the normalised mean of its window embeddings);
the value is the mean over pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lodit.errors import LoditError
from lodit.eval.embedders import NO_CLAP_MODEL, Audio, ClapAudioText, model_label, quiet_loading
from lodit.eval.results import MetricResult


def clap_available(model: str | None) -> bool:
    """Whether ``model`` names a CLAP checkpoint this machine can load (a local folder, or a hub
    name that is cached or reachable). Reads only the config, not the weights."""
    if not model:
        return False
    from transformers import AutoConfig

    try:
        with quiet_loading():
            config = AutoConfig.from_pretrained(model, local_files_only=Path(model).expanduser().exists())
    except (OSError, ValueError, KeyError):
        return False
    return config.model_type == "clap"


def clap_score(
    model_name_or_path: str | ClapAudioText | None,
    texts: Sequence[str],
    audio: Sequence[Audio],
    *,
    sample_rate: int | None = None,
    device: str = "auto",
) -> MetricResult:
    """Mean cosine between each prompt's CLAP text embedding and its clip's audio embedding.

    ``audio``: paths, or mono waveforms at ``sample_rate``. Without a model (``None`` or ``""``)
    or when it cannot be loaded, the result is NaN with the reason in ``details["unavailable"]``.
    """
    texts, audio = list(texts), list(audio)
    if len(texts) != len(audio):
        raise LoditError(
            f"CLAP score pairs prompts with clips one to one: got {len(texts)} prompts and {len(audio)} clips"
        )
    if not texts:
        raise LoditError("CLAP score needs at least one (prompt, clip) pair")
    if not model_name_or_path:
        return MetricResult.unavailable("clap_score", NO_CLAP_MODEL, n=len(texts))
    if isinstance(model_name_or_path, ClapAudioText):
        clap = model_name_or_path
    else:
        try:
            clap = ClapAudioText(model_name_or_path, device)
        except LoditError as exc:
            return MetricResult.unavailable("clap_score", str(exc), model=model_label(model_name_or_path), n=len(texts))
    text_emb = clap.text_embeddings(texts)  # (N, dim)
    audio_emb = torch.stack([clap.audio_embedding(item, sample_rate) for item in audio])  # (N, dim)
    cosines = (text_emb * audio_emb).sum(1).tolist()
    return MetricResult("clap_score", float(np.mean(cosines)), len(cosines), clap.description, {"per_clip": cosines})
