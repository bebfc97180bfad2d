"""What the app holds between requests: the models (each loaded once), the device and the folders.

:class:`AppState` knows the DiT checkpoints and tokenizers the app offers, by label: the ones
given on the command line, and every arm's of a ``lodit compare`` folder (``arms/<arm>/tokenizer/
final`` and ``arms/<arm>/seed-<s>/dit``), so ``lodit app --compare OUT`` alone makes all three tabs
usable on a comparison's outputs. A model is loaded the first time it is used and then kept; the
page's handlers run in worker threads, so loading and running share one lock (one CPU or GPU does
one request at a time anyway).
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lodit.devices import choose_device
from lodit.errors import LoditError


@dataclass
class ModelSpec:
    """A model the app offers: a DiT checkpoint (and the tokenizer that decodes it) or a tokenizer."""

    label: str
    path: Path
    tokenizer: Path | None = None  # DiT only: the decoding tokenizer; None = the one its config records


@dataclass
class AppState:
    device: torch.device
    out_dir: Path  # generated files go here (one sub-folder per request)
    checkpoints: dict[str, ModelSpec] = field(default_factory=dict)
    tokenizers: dict[str, ModelSpec] = field(default_factory=dict)
    compare_dir: Path | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    _generators: dict[str, Any] = field(default_factory=dict)
    _tokenizers: dict[str, Any] = field(default_factory=dict)
    _counter: int = 0

    @classmethod
    def create(
        cls,
        *,
        checkpoint: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        compare: str | os.PathLike | None = None,
        device: str | None = None,
        out_dir: str | os.PathLike | None = None,
    ) -> AppState:
        """The app's state. The first checkpoint and the given tokenizer are loaded now, so a wrong
        folder stops the command before the server starts."""
        from lodit.app.listening import experiment_folder

        out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="lodit-app-"))
        out.mkdir(parents=True, exist_ok=True)
        state = cls(device=choose_device(device, option="--device"), out_dir=out)
        given_tokenizer = Path(tokenizer) if tokenizer is not None else None
        if given_tokenizer is not None:
            state.tokenizers[f"{given_tokenizer} (--tokenizer)"] = ModelSpec(
                f"{given_tokenizer} (--tokenizer)", given_tokenizer
            )
        if checkpoint is not None:
            label = f"{Path(checkpoint)} (--checkpoint)"
            state.checkpoints[label] = ModelSpec(label, Path(checkpoint), given_tokenizer)
        if compare is not None:
            state.compare_dir = experiment_folder(compare)
            state.add_compare_models(state.compare_dir)
        # The first checkpoint (the page opens on it) and the given tokenizer load now; the rest on first use.
        if state.checkpoints:
            state.generator(next(iter(state.checkpoints)))
        if given_tokenizer is not None:
            state.tokenizer(next(iter(state.tokenizers)))
        return state

    def add_compare_models(self, folder: Path) -> None:
        """Offer every arm's tokenizer and every arm-and-seed DiT run of an experiment folder."""
        arms = sorted(p for p in (folder / "arms").glob("*") if p.is_dir())
        for arm in arms:
            tokenizer = arm / "tokenizer" / "final"
            if not (tokenizer / "config.json").is_file():
                tokenizer = None
            else:
                self.tokenizers.setdefault(f"{arm.name} (compare)", ModelSpec(f"{arm.name} (compare)", tokenizer))
            for seed_dir in sorted(arm.glob("seed-*")):
                if (seed_dir / "dit").is_dir():
                    label = f"{arm.name} {seed_dir.name} (compare)"
                    self.checkpoints.setdefault(label, ModelSpec(label, seed_dir / "dit", tokenizer))

    # ------------------------------------------------------------------ models, loaded once

    def generator(self, label: str | None):
        """The DiT generator offered under ``label``, loaded on first use."""
        from lodit.dit.generator import Generator

        spec = _pick(self.checkpoints, label, "DiT checkpoint", "--checkpoint DIR or --compare DIR")
        with self.lock:
            if spec.label not in self._generators:
                tokenizer = self._tokenizer_object(spec.tokenizer) if spec.tokenizer is not None else None
                self._generators[spec.label] = Generator.from_pretrained(
                    spec.path, tokenizer=tokenizer, device=self.device
                )
            return self._generators[spec.label]

    def tokenizer(self, label: str | None):
        """The tokenizer offered under ``label``, loaded on first use."""
        spec = _pick(self.tokenizers, label, "tokenizer", "--tokenizer DIR or --compare DIR")
        return self._tokenizer_object(spec.path)

    def _tokenizer_object(self, path: Path):
        from lodit.latent_tokenizer.tokenizer import Tokenizer

        key = str(Path(path).resolve())
        with self.lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer.from_pretrained(path, map_location=self.device)
            return self._tokenizers[key]

    def request_dir(self, kind: str) -> Path:
        """A fresh folder for one request's files (``generate-0001``, ``roundtrip-0002``, ...)."""
        with self.lock:
            self._counter += 1
            folder = self.out_dir / f"{kind}-{self._counter:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _pick(specs: dict[str, ModelSpec], label: str | None, what: str, how: str) -> ModelSpec:
    if not specs:
        raise LoditError(f"no {what} loaded; start the app with {how}")
    if label is None or label == "":
        return next(iter(specs.values()))
    if label not in specs:
        raise LoditError(f"unknown {what} {label!r}; choose one of: {', '.join(specs)}")
    return specs[label]
