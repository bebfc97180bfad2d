"""How metrics are shown: their labels, directions and units, and a table (as Markdown, or as
HTML through ``templates/table.html.j2``).

Used by the comparison report, the adherence section and the app; it imports no other part of
lodit's evaluation, so each of them can.
"""

from __future__ import annotations

import functools
from typing import Any

# Direction of each metric in the tables (lower or higher is better); others are shown without one.
LOWER_IS_BETTER = {"fad", "fad_tta", "fad_ttm", "fad_tts", "fad_inf", "wer", "wer_with_reference", "rtf",
                   "mel_distance", "mel_distance_80db", "stft_distance"}
HIGHER_IS_BETTER = {"clap_score", "speaker_similarity", "speaker_similarity_with_reference", "si_sdr", "pesq", "stoi",
                    "estoi"}
PERCENT_METRICS = {"wer", "wer_with_reference"}  # stored as fractions, shown in %
# The compare runner's plain TTS samples have no reference voice; those with one have their own
# metrics (lodit.eval.layout.TTS_VARIANTS).
LABELS = {"fad": "FAD", "fad_tta": "FAD (TTA)", "fad_ttm": "FAD (TTM)", "fad_tts": "FAD (TTS)",
          "clap_score": "CLAP score", "wer": "WER (%, text only)", "speaker_similarity": "speaker SIM (text only)",
          "wer_with_reference": "WER (%, with reference)",
          "speaker_similarity_with_reference": "speaker SIM (with reference)", "rtf": "RTF",
          "nfe": "NFE", "mel_distance": "mel distance", "stft_distance": "STFT distance", "si_sdr": "SI-SDR (dB)",
          "pesq": "PESQ (speech)", "stoi": "STOI (speech)", "mel_distance_80db": "mel distance (80 dB floor)",
          "level_ratio": "level (dB, 0 = as loud)", "level_ratio_speech": "level, speech (dB)"}


def display_value(metric: str, value: float) -> float:
    """``value`` in the unit the tables show ``metric`` in (WER in %)."""
    return value * 100.0 if metric in PERCENT_METRICS else value


def format_summary(row: dict[str, Any] | None) -> str:
    """``mean ± half-width`` (or ``mean`` with n=1), ``n/a`` when unavailable."""
    if row is None:
        return "—"
    if row["mean"] is None:
        return "n/a"
    mean = display_value(row["metric"], row["mean"])
    if row["ci_low"] is None:
        return f"{mean:.4g}"
    half = display_value(row["metric"], (row["ci_high"] - row["ci_low"]) / 2)
    return f"{mean:.4g} ± {half:.2g}"


def format_value(metric: dict[str, Any] | None) -> str:
    if metric is None:
        return "—"
    if metric.get("value") is None:
        return "n/a"
    return f"{display_value(metric['name'], metric['value']):.4g}"


def label(metric: str) -> str:
    arrow = " ↓" if metric in LOWER_IS_BETTER else " ↑" if metric in HIGHER_IS_BETTER else ""
    return LABELS.get(metric, metric.replace("_", " ")) + arrow


class Table:
    """A table once, rendered as Markdown (report.md) or HTML (the template ``templates/table.html.j2``)."""

    def __init__(self, title: str, headers: list[str], rows: list[list[str]], note: str = ""):
        self.title, self.headers, self.rows, self.note = title, headers, rows, note

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ")

        lines = [f"| {' | '.join(cell(h) for h in self.headers)} |", "|" + "---|" * len(self.headers)]
        lines += [f"| {' | '.join(cell(c) for c in row)} |" for row in self.rows]
        note = f"\n\n{self.note}" if self.note else ""
        return "\n".join(lines) + note

    def html(self) -> str:
        return str(templates().get_template("table.html.j2").module.table_body(self))


@functools.cache
def templates():
    """The HTML templates of lodit's evaluation (``lodit/eval/templates``), autoescaped."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("lodit.eval", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
