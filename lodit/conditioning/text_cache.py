"""A disk cache of text-encoder states, so captions are encoded once, not every epoch.

Each text's token states (its valid tokens only, ``(L_i, dim)`` float32) are stored in one
safetensors file named by the SHA-256 of the encoder's identity and the text; a different
encoder, checkpoint or ``max_length`` therefore never reads another's entries. Writes are atomic
(temporary file + rename), so an interrupted run leaves no half-written entry and several
processes may share one cache folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lodit.conditioning.text_encoders import TextEncoder
from lodit.files import write_atomically


class TextEmbeddingCache:
    """Wraps a :class:`TextEncoder`; :meth:`encode` returns what the encoder returns, cached on disk."""

    def __init__(self, directory: str | os.PathLike, encoder: TextEncoder):
        self.directory = Path(directory)
        self.encoder = encoder
        self._identity = encoder.identity()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def identity(self) -> str:
        return self._identity

    def _path(self, text: str) -> Path:
        key = hashlib.sha256(f"{self._identity}\0{text}".encode()).hexdigest()
        return self.directory / key[:2] / f"{key}.safetensors"

    def _store(self, path: Path, states: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: save_file({"states": states.contiguous()}, str(tmp)))

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``states (B, L, dim)`` float32 (zero at padding) and ``mask (B, L)`` bool, like the encoder.

        Texts already cached are read from disk; the others are encoded in one batch and stored.
        """
        per_text: dict[str, torch.Tensor] = {}
        missing = []
        for text in dict.fromkeys(texts):
            path = self._path(text)
            if path.is_file():
                per_text[text] = load_file(str(path))["states"]
            else:
                missing.append(text)
        if missing:
            states, mask = self.encoder.encode(missing)
            for row, text in enumerate(missing):
                valid = states[row][mask[row]].to("cpu", torch.float32)  # (L_i, dim)
                self._store(self._path(text), valid)
                per_text[text] = valid
        return self._assemble([per_text[text] for text in texts])

    def _assemble(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad per-text states ``(L_i, dim)`` with zeros into ``(B, max L_i, dim)`` plus a mask."""
        device = self.encoder.device
        if not rows:
            return torch.zeros(0, 1, self.dim, device=device), torch.zeros(
                0, 1, dtype=torch.bool, device=device
            )
        lengths = torch.tensor([len(row) for row in rows])
        states = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (B, L, dim)
        mask = torch.arange(states.shape[1])[None, :] < lengths[:, None]
        return states.to(device), mask.to(device)
