"""Named DiT sizes (width / depth / heads) and a helper to build a config from one.

A preset fixes only the network's size; everything else (latent width from the cache, text
width from the text encoder, tasks, patch size...) comes from the experiment config as overrides.

======  =====  =====  =====  =========  =====================================================
name    width  depth  heads  params     note
======  =====  =====  =====  =========  =====================================================
tiny       64      2      4  0.37 M     tests and smoke runs
s         512     12      8  70 M       LoSATok's downstream DiT shape (hidden 512, 12 layers)
m         768     16     12  202 M      UniFlow-Audio's medium size
l        1024     24     16  531 M      UniFlow-Audio's large size
======  =====  =====  =====  =========  =====================================================

Parameter counts are for the defaults (SwiGLU, ``mlp_ratio`` 4, no block biases, text width 384, 128-dim latents,
3 tasks); a 1024-wide text encoder (FLAN-T5-large) adds ~8 / 16 / 32 M. LoSATok reports ~208 M
for its "hidden 512, 12 layers" DiT; a standard DiT of that shape has ~70 M, and ~208 M is what
the ``m`` shape has, so that reported figure likely counts more than the width-512 transformer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lodit.dit.model import DiTConfig
from lodit.errors import LoditError

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"width": 64, "depth": 2, "heads": 4},
    "s": {"width": 512, "depth": 12, "heads": 8},
    "m": {"width": 768, "depth": 16, "heads": 12},
    "l": {"width": 1024, "depth": 24, "heads": 16},
}


def dit_config_from_preset(name: str, **overrides: Any) -> DiTConfig:
    """``DiTConfig`` of preset ``name`` with ``overrides`` (any ``DiTConfig`` field) applied."""
    if name not in PRESETS:
        raise LoditError(f"unknown DiT preset {name!r}; choose one of: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise LoditError(f"unknown DiT config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    return DiTConfig(**{**PRESETS[name], **overrides})
