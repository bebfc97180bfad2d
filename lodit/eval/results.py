"""The metric result record: one number, with the model that produced it and how many items it covers.

Every metric in :mod:`lodit.eval` returns a :class:`MetricResult`; ``metrics.json`` is a list of
their :meth:`MetricResult.to_dict`. A metric that could not be computed (no CLAP model given, an
optional package missing) is still a result: ``value`` is NaN and ``details["unavailable"]`` says
why, so a report can print the reason instead of silently leaving the row out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class MetricResult:
    name: str  # e.g. "fad", "wer", "clap_score", "si_sdr"
    value: float
    n: int  # clips, utterances or pairs the value is computed over
    model: str  # which model produced it, e.g. "whisper tiny.en (offline, CTranslate2)"; "" for model-free metrics
    details: dict[str, Any] = field(default_factory=dict)  # CI, durations, reference set, per-item values, ...

    @classmethod
    def unavailable(cls, name: str, reason: str, *, model: str = "", n: int = 0, **details: Any) -> MetricResult:
        """A result that could not be computed: ``value`` NaN and the reason in ``details``."""
        return cls(name, math.nan, n, model, {"unavailable": reason, **details})

    @property
    def available(self) -> bool:
        return "unavailable" not in self.details

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data: tensors/arrays become lists and NaN/inf become ``None``
        (strict JSON has no NaN)."""
        return {
            "name": self.name,
            "value": _json_safe(self.value),
            "n": int(self.n),
            "model": self.model,
            "details": _json_safe(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricResult:
        """Inverse of :meth:`to_dict` (``None`` values read back as NaN)."""
        value = data.get("value")
        return cls(
            name=str(data["name"]),
            value=math.nan if value is None else float(value),
            n=int(data.get("n", 0)),
            model=str(data.get("model", "")),
            details=dict(data.get("details", {})),
        )


def _json_safe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()] if value.ndim else _json_safe(value.item())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
