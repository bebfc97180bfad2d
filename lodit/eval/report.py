"""The comparison report: results of an experiment folder aggregated over seeds, as JSON, Markdown, HTML and PNG.

:func:`collect_results` reads what :class:`~lodit.eval.experiment.ExperimentRunner` wrote (scores per
arm, seed and DiT step; reconstruction and latent statistics per arm; the samples) into one
JSON-able dict; :func:`aggregate` turns per-seed numbers into mean and confidence interval per
(arm, step, metric); :func:`write_report` writes into the report folder:

- ``results.json``: all of it (every number with its model and N; ``adherence``: the caption
  attributes recovered from the generated audio, per arm, step and attribute, with chance levels;
  ``tts_variants``: which metrics are TTS from the transcript alone and which with a reference
  voice, and what each measures);
- ``convergence_fad.png``, ``convergence_clap_score.png``, ``convergence_wer.png``: the metric
  against DiT steps, one line per arm (band: the confidence interval), and ``latent_spectrum.png``
  (cumulative variance against the number of principal components, per arm);
- ``audio/``: a few generated clips per arm at the last step, with the reference clips;
- ``report.md`` (linking the PNGs and wavs) and ``report.html``, self-contained: inline CSS,
  PNGs and wavs embedded as ``data:`` URIs, no scripts and no external addresses.

Confidence intervals are two-sided Student-t intervals over seeds, ``mean ± t(0.975, n-1)·s/√n``
(s the sample standard deviation); with one seed there is no interval and the report says n=1.
"""

from __future__ import annotations

import base64
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from lodit.config import to_dict
from lodit.eval.adherence import ADHERENCE_SECTIONS, adherence_summary, adherence_table
from lodit.eval.layout import (
    LATENT_STATS_FILE,
    METRICS_FILE,
    REFERENCES_FILE,
    SAMPLES_INDEX,
    TTS_VARIANTS,
    ExperimentLayout,
)
from lodit.eval.summary import CI_LEVEL, aggregate
from lodit.eval.tables import Table, display_value, format_summary, format_value, label, templates
from lodit.eval.understanding import understanding_table
from lodit.files import read_json, write_atomically, write_json, write_text

RESULTS_FORMAT = "lodit-compare-results"
CONVERGENCE_METRICS = ("fad", "clap_score", "wer")
SPEED_METRICS = ("rtf", "nfe")
RECONSTRUCTION_METRICS = ("mel_distance", "mel_distance_80db", "level_ratio", "level_ratio_speech", "stft_distance",
                          "si_sdr", "pesq", "stoi")
TOPK_SHOWN = (1, 8, 32, 128)
MARKERS = ("o", "s", "^", "D", "v", "P")
DASHES = ("-", "--", "-.", ":")


# ============================================================================ statistics


# ============================================================================ collecting


def read_compare_json(path: Path) -> Any:
    """A JSON file of a ``lodit compare`` folder; a missing or broken one is a one-line error."""
    return read_json(path, missing=f"{path}: missing; run `lodit compare` again to produce it")


def collect_results(out_dir: str | os.PathLike, config: Any) -> dict[str, Any]:
    """Everything the experiment in ``out_dir`` produced, as one dict (paths relative to ``out_dir``)."""
    out = Path(out_dir)
    layout = ExperimentLayout(out)
    arms, runs = [], []
    for arm in config.arms:
        reconstruction = read_compare_json(layout.reconstruction_dir(arm.name) / METRICS_FILE)
        latent = read_compare_json(layout.latent_stats_dir(arm.name) / LATENT_STATS_FILE)
        examples = []
        for seed in config.seeds:
            for step in config.eval_steps:
                scores = read_compare_json(layout.scores_dir(arm.name, seed, step) / METRICS_FILE)
                runs.append({"arm": arm.name, "seed": seed, "step": step, "metrics": scores["metrics"],
                             "settings": scores.get("settings", {}),
                             "samples": str(layout.samples_dir(arm.name, seed, step).relative_to(out))})
                for key in ADHERENCE_SECTIONS:  # per-attribute scores; the per-sample items stay in metrics.json
                    if key in scores:
                        runs[-1][key] = {k: v for k, v in scores[key].items() if k != "items"}
        final_samples = layout.samples_dir(arm.name, config.seeds[0], config.eval_steps[-1])
        index = read_compare_json(final_samples / SAMPLES_INDEX)
        references = read_compare_json(final_samples / REFERENCES_FILE)
        for entry, reference in list(zip(index["samples"], references))[: config.evaluation.audio_examples]:
            examples.append({"file": str((final_samples / entry["file"]).relative_to(out)),
                             "prompt": entry.get("prompt", ""), "transcript": entry.get("transcript", ""),
                             "reference": reference})
        arms.append({"name": arm.name, "description": arm.description,
                     "source": arm.checkpoint or arm.tokenizer, "overrides": list(arm.overrides),
                     "tokenizer": reconstruction["tokenizer"], "reconstruction": reconstruction["metrics"],
                     "reconstruction_clips": reconstruction["clips"], "latent_statistics": latent,
                     "examples": examples})
    results = {"format": RESULTS_FORMAT, "experiment": config.name, "config": to_dict(config),
               "ci": f"two-sided Student-t {int(CI_LEVEL * 100)}% interval over seeds", "arms": arms,
               "runs": runs, "summary": aggregate(runs)}
    for key in ADHERENCE_SECTIONS:
        if (adherence := adherence_summary(runs, key)) is not None:
            results[key] = adherence
    if (layout.understanding_dir / METRICS_FILE).is_file():
        results["understanding"] = read_compare_json(layout.understanding_dir / METRICS_FILE)
    if any(m["name"] == TTS_VARIANTS["with_reference"]["wer"] for run in runs for m in run["metrics"]):
        results["tts_variants"] = TTS_VARIANTS  # which metric is TTS with, which without a reference voice
    return results


# ============================================================================ formatting


# ============================================================================ the report


class ReportBuilder:
    """Tables, plots and audio of one results dict."""

    def __init__(self, results: dict[str, Any], folder: Path):
        self.results = results
        self.folder = folder
        self.config = results["config"]
        self.arms = [arm["name"] for arm in results["arms"]]
        self.steps = sorted({row["step"] for row in results["summary"]})
        self.final_step = self.steps[-1]
        self.seeds = self.config["seeds"]
        self.summary = {(r["arm"], r["step"], r["metric"]): r for r in results["summary"]}

    def metric_names(self) -> list[str]:
        """Generation metrics present, in a fixed order (FAD first, speed last)."""
        present = {r["metric"] for r in self.results["summary"]}
        order = [
            "fad",
            "fad_tta",
            "fad_ttm",
            "fad_tts",
            "clap_score",
            "wer",
            "speaker_similarity",
            "wer_with_reference",
            "speaker_similarity_with_reference",
        ]
        return [m for m in order if m in present] + sorted(present - set(order) - set(SPEED_METRICS))

    def interval_note(self) -> str:
        if len(self.seeds) == 1:
            return "One seed (n=1): single values, no confidence interval."
        return f"Mean ± half-width of the {self.results['ci']} ({len(self.seeds)} seeds)."

    # --------------------------------------------------------------------------- tables

    def final_table(self) -> Table:
        names = self.metric_names()
        rows = [
            [arm] + [format_summary(self.summary.get((arm, self.final_step, m))) for m in names] for arm in self.arms
        ]
        return Table(f"Final metrics (DiT step {self.final_step})", ["arm"] + [label(m) for m in names], rows,
                     self.interval_note())

    def models_table(self) -> Table:
        """Which model produced each metric, over how many items, or why it is missing."""
        rows = []
        for metric in self.metric_names() + list(SPEED_METRICS):
            per_arm = [self.summary.get((arm, self.final_step, metric)) for arm in self.arms]
            per_arm = [r for r in per_arm if r is not None]
            if not per_arm:
                continue
            models = sorted({r["model"] or ("—" if r["unavailable"] else "(model-free)") for r in per_arm})
            ns = sorted({json.dumps(r["n"]) for r in per_arm})
            reasons = sorted({r["unavailable"] for r in per_arm if r["unavailable"]})
            rows.append([label(metric), "; ".join(models), ", ".join(ns), "; ".join(reasons)])
        return Table("How each number was measured", ["metric", "model", "N (per seed)", "unavailable because"], rows,
                     "N counts generated clips (FAD: generated clips; the reference set size is in results.json), "
                     "captioned clips (CLAP), utterances (WER) or pairs (SIM).")

    def convergence_table(self, metric: str) -> Table:
        rows = [
            [arm] + [format_summary(self.summary.get((arm, step, metric))) for step in self.steps] for arm in self.arms
        ]
        return Table(f"{label(metric)} against DiT steps", ["arm"] + [f"step {s}" for s in self.steps], rows,
                     self.interval_note())

    def reconstruction_table(self) -> Table:
        rows, reasons = [], set()
        for arm in self.results["arms"]:
            by_name = {m["name"]: m for m in arm["reconstruction"]}
            reasons.update(f"{label(m['name'])}: {m['details']['unavailable']}" for m in arm["reconstruction"]
                           if m.get("value") is None and "unavailable" in m.get("details", {}))
            tokenizer = arm["tokenizer"]
            rows.append(
                [
                    arm["name"],
                    tokenizer.get("name", ""),
                    str(tokenizer.get("latent_dim", "")),
                    f"{tokenizer.get('parameters', 0) / 1e6:.2f} M",
                ]
                + [format_value(by_name.get(m)) for m in RECONSTRUCTION_METRICS]
                + [str(arm["reconstruction_clips"])]
            )
        note = ("Round trips (encode, decode) of evaluation clips taken in turn from each domain; PESQ and STOI "
                "on the speech ones only. Level: median RMS of the reconstruction over the input, in dB.")
        if reasons:
            note += f" Unavailable: {'; '.join(sorted(reasons))}."
        return Table(
            "Reconstruction per tokenizer (evaluation set)",
            ["arm", "tokenizer", "latent dim", "parameters"] + [label(m) for m in RECONSTRUCTION_METRICS] + ["clips"],
            rows,
            note,
        )

    def latent_table(self) -> Table:
        rows = []
        for arm in self.results["arms"]:
            stats = arm["latent_statistics"]
            by_name = {m["name"]: m for m in stats["metrics"]}
            rank = by_name["effective_rank"]
            details = rank["details"]
            topk = [
                format_value(by_name.get(f"top{k}_variance_fraction")) if k <= stats["dim"] else "—" for k in TOPK_SHOWN
            ]
            rows.append(
                [
                    arm["name"],
                    str(stats["dim"]),
                    f"{rank['value']:.4g}",
                    f"{details['relative']:.3f}",
                    *topk,
                    f"{details['channel_std_min']:.3g} / {details['channel_std_max']:.3g}",
                    str(stats["n_frames"]),
                ]
            )
        return Table(
            "Latent statistics (training latents)",
            ["arm", "dim", "effective rank", "effective rank / dim"]
            + [f"top-{k} variance" for k in TOPK_SHOWN]
            + ["channel std min / max", "frames"],
            rows,
            "Effective rank: Roy & Vetterli's exp(entropy) of the normalised singular values of the centred "
            "frames; top-k variance: share of the variance in the k largest principal components.",
        )

    def speed_table(self) -> Table:
        rows = []
        for arm in self.arms:
            run = next(r for r in self.results["runs"] if r["arm"] == arm and r["step"] == self.final_step)
            settings = run.get("settings", {})
            sampler = (
                f"{settings.get('sampler', '?')} / {settings.get('steps', '?')} steps / cfg {settings.get('cfg', '?')}"
            )
            rows.append(
                [
                    arm,
                    sampler,
                    format_summary(self.summary.get((arm, self.final_step, "nfe"))),
                    format_summary(self.summary.get((arm, self.final_step, "rtf"))),
                    str(settings.get("device", "?")),
                ]
            )
        return Table("Sampling speed", ["arm", "sampler", "NFE", "RTF ↓ (wall s per audio s)", "device"], rows,
                     "RTF includes text encoding, sampling and decoding, measured by `lodit sample` at batch size "
                     f"{self.config['sampling']['batch_size']}.")

    # --------------------------------------------------------------------------- plots

    def plot_convergence(self, metric: str) -> Path:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.0), dpi=110)
        ax = fig.subplots()
        rows = [self.summary.get((arm, step, metric)) for arm in self.arms for step in self.steps]
        rows = [r for r in rows if r is not None]
        available = [r for r in rows if r["mean"] is not None]
        if not available:
            reason = rows[0]["unavailable"] if rows else "not measured"
            ax.text(0.5, 0.5, textwrap.fill(f"{label(metric)}: unavailable ({reason})", 60), ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
        else:
            for number, arm in enumerate(self.arms):
                points = [(s, self.summary[(arm, s, metric)]) for s in self.steps
                          if (arm, s, metric) in self.summary and self.summary[(arm, s, metric)]["mean"] is not None]
                if not points:
                    continue
                steps = [s for s, _ in points]
                means = [display_value(metric, r["mean"]) for _, r in points]
                # distinct markers and dashes keep arms with equal values (e.g. all at 100 % WER) visible
                line, = ax.plot(steps, means, marker=MARKERS[number % len(MARKERS)],
                                linestyle=DASHES[number % len(DASHES)], label=arm)
                bounded = [(s, r) for s, r in points if r["ci_low"] is not None]
                if bounded:
                    ax.fill_between(
                        [s for s, _ in bounded],
                        [display_value(metric, r["ci_low"]) for _, r in bounded],
                        [display_value(metric, r["ci_high"]) for _, r in bounded],
                        color=line.get_color(),
                        alpha=0.2,
                    )
            ax.set_xlabel("DiT training step")
            ax.set_ylabel(label(metric))
            ax.grid(True, alpha=0.3)
            ax.legend()
            model = available[0]["model"]
            ax.set_title(textwrap.fill(f"{label(metric)} ({model})", 70), fontsize=9)
        return self._save(fig, f"convergence_{metric}.png")

    def plot_spectrum(self) -> Path:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.0), dpi=110)
        ax = fig.subplots()
        for arm in self.results["arms"]:
            cumulative = arm["latent_statistics"]["cumulative_variance"]
            ax.plot(np.arange(1, len(cumulative) + 1), cumulative, label=f"{arm['name']} ({len(cumulative)}-dim)")
        ax.set_xscale("log")
        ax.set_xlabel("principal components")
        ax.set_ylabel("cumulative variance fraction")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title("Variance of the training latents in their top principal components", fontsize=9)
        return self._save(fig, "latent_spectrum.png")

    def _save(self, fig, name: str) -> Path:
        fig.tight_layout()
        return write_atomically(self.folder / name, lambda tmp: fig.savefig(tmp, format="png"))

    # --------------------------------------------------------------------------- audio

    def copy_audio(self, out_dir: Path) -> list[dict[str, Any]]:
        """Example clips into ``audio/`` (reference and each arm's sample per prompt)."""
        from lodit.data.audio import audio_info, load_audio, save_audio

        audio = self.folder / "audio"
        audio.mkdir(parents=True, exist_ok=True)
        first = self.results["arms"][0]["examples"]
        prompts = []
        for i, example in enumerate(first):
            reference = example["reference"]
            rate = audio_info(reference["audio"])[0]
            wav = load_audio(
                reference["audio"], offset=reference.get("offset") or 0.0, duration=reference.get("duration")
            )
            entry = {"prompt": example["prompt"] or reference.get("caption", ""), "transcript": example["transcript"],
                     "reference": save_audio(audio / f"reference-{i}.wav", wav, rate).name, "arms": {}}
            for arm in self.results["arms"]:
                if i < len(arm["examples"]):
                    source = out_dir / arm["examples"][i]["file"]
                    rate = audio_info(source)[0]
                    entry["arms"][arm["name"]] = save_audio(
                        audio / f"{arm['name']}-{i}.wav", load_audio(source), rate
                    ).name
            prompts.append(entry)
        return prompts


def tts_variants_table(builder: ReportBuilder) -> Table | None:
    """TTS with and without a reference voice side by side (last step); None when no TTS sample had one."""
    variants = builder.results.get("tts_variants")
    if not variants:
        return None
    metrics = [spec[key] for spec in variants.values() for key in ("wer", "speaker_similarity")]
    rows = [[arm] + [format_summary(builder.summary.get((arm, builder.final_step, m))) for m in metrics]
            for arm in builder.arms]
    note = " ".join(f"{variant.replace('_', ' ').capitalize()}: {spec['description']}."
                    for variant, spec in variants.items())
    return Table(f"TTS with and without a reference voice (DiT step {builder.final_step})",
                 ["arm"] + [label(m) for m in metrics], rows, f"{note} {builder.interval_note()}")


def write_report(results: dict[str, Any], folder: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``results.json``, the PNG plots, ``audio/``, ``report.md`` and ``report.html`` into ``folder``.

    ``out_dir``: the experiment folder the results' relative paths start from (default: ``folder``'s parent)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out_dir = Path(out_dir) if out_dir is not None else folder.parent
    write_json(folder / "results.json", results)
    builder = ReportBuilder(results, folder)
    plots = [builder.plot_convergence(metric) for metric in CONVERGENCE_METRICS] + [builder.plot_spectrum()]
    examples = builder.copy_audio(out_dir)
    write_text(folder / "report.md", render_markdown(builder, plots, examples))
    write_text(folder / "report.html", render_html(builder, plots, examples))
    return folder


def _guidance_scale(sampling: dict[str, Any]) -> Any:
    # results.json written before the experiment used SamplerConfig holds the scale as `cfg`
    return sampling["guidance"]["scale"] if "guidance" in sampling else sampling["cfg"]


def _overview(builder: ReportBuilder) -> list[tuple[str, str]]:
    cfg = builder.config
    sampling = cfg["sampling"]
    evaluation = cfg["evaluation"]
    arms = "; ".join(f"{a['name']} ({a['description'] or Path(a['source']).name}, latent dim "
                     f"{a['tokenizer'].get('latent_dim')})" for a in builder.results["arms"])
    dit = f"{Path(cfg['dit']['config']).name}" + (
        f" with {' '.join(cfg['dit']['overrides'])}" if cfg["dit"]["overrides"] else ""
    )
    return [
        ("Arms", arms),
        (
            "DiT",
            f"{dit}; {cfg['dit_steps']} steps, evaluated at {', '.join(str(s) for s in builder.steps)}; "
            f"seeds {', '.join(str(s) for s in builder.seeds)}",
        ),
        (
            "Sampler",
            f"{sampling['sampler']}, {sampling['steps']} steps, {sampling['schedule']} schedule, "
            f"CFG {_guidance_scale(sampling)}"
            f"{'' if sampling['use_ema'] else ', raw (non-EMA) weights'}",
        ),
        (
            "Evaluation",
            f"{evaluation['num_prompts']} prompts from the held-out set; FAD embedder "
            f"{evaluation['embedder']['name']} {evaluation['embedder']['model']}; CLAP "
            f"{evaluation['clap_model'] or 'none'}; ASR {evaluation['asr_model']}; "
            f"speaker {evaluation['speaker_model']}",
        ),
    ]


def render_markdown(builder: ReportBuilder, plots: list[Path], examples: list[dict[str, Any]]) -> str:
    title = f"# {builder.results['experiment']}: latent-dimension comparison"
    parts = [title, "\n".join(f"- **{k}**: {v}" for k, v in _overview(builder))]

    def section(table: Table, level: str = "##") -> None:
        parts.append(f"{level} {table.title}\n\n{table.markdown()}")

    section(builder.final_table())
    if (tts := tts_variants_table(builder)) is not None:
        section(tts)
    section(builder.models_table())
    for key in ADHERENCE_SECTIONS:
        if (adherence := adherence_table(builder.results, key)) is not None:
            section(adherence)
    parts.append("## Convergence")
    for metric, plot in zip(CONVERGENCE_METRICS, plots):
        parts.append(f"![{label(metric)} against DiT steps]({plot.name})")
        section(builder.convergence_table(metric), "###")
    section(builder.reconstruction_table())
    section(builder.latent_table())
    if (understanding := understanding_table(builder.results.get("understanding"))) is not None:
        section(understanding)
    parts.append(f"![latent spectrum]({plots[-1].name})")
    section(builder.speed_table())
    lines = ["## Audio examples (last step, first seed)", ""]
    for i, example in enumerate(examples):
        text = example["prompt"] or example["transcript"]
        links = [f"[reference](audio/{example['reference']})"]
        links += [f"[{arm}](audio/{name})" for arm, name in example["arms"].items()]
        lines.append(f"{i + 1}. {text}: " + " · ".join(links))
    parts.append("\n".join(lines))
    parts.append("Every number is in `results.json` with its model, N and per-seed values.")
    return "\n\n".join(parts) + "\n"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(builder: ReportBuilder, plots: list[Path], examples: list[dict[str, Any]]) -> str:
    """The report page, from the template ``templates/report.html.j2`` (markup there, numbers here)."""
    tables_before = [builder.final_table()]
    if (tts := tts_variants_table(builder)) is not None:
        tables_before.append(tts)
    tables_before.append(builder.models_table())
    for key in ADHERENCE_SECTIONS:
        if (adherence := adherence_table(builder.results, key)) is not None:
            tables_before.append(adherence)
    audio = builder.folder / "audio"
    return templates().get_template("report.html.j2").render(
        title=f"{builder.results['experiment']}: latent-dimension comparison",
        overview=_overview(builder),
        tables_before=tables_before,
        convergence=[{"plot": _data_uri(plot, "image/png"), "alt": f"{label(metric)} against DiT steps",
                      "table": builder.convergence_table(metric)} for metric, plot in zip(CONVERGENCE_METRICS, plots)],
        reconstruction=builder.reconstruction_table(),
        latent=builder.latent_table(),
        understanding=understanding_table(builder.results.get("understanding")),
        spectrum=_data_uri(plots[-1], "image/png"),
        speed=builder.speed_table(),
        audio_headers=["prompt", "reference", *builder.arms],
        examples=[{"text": example["prompt"] or example["transcript"],
                   "clips": [_data_uri(audio / example["reference"], "audio/wav")]
                   + [_data_uri(audio / example["arms"][arm], "audio/wav") if arm in example["arms"] else None
                      for arm in builder.arms]}
                  for example in examples],
    )


def headline(results: dict[str, Any]) -> list[str]:
    """A few lines with each arm's main numbers at the last DiT step (for the terminal)."""
    summary = {(r["arm"], r["step"], r["metric"]): r for r in results["summary"]}
    final = max(r["step"] for r in results["summary"])
    lines = [f"{results['experiment']}: step {final}, {len(results['config']['seeds'])} seed(s)"]
    for arm in results["arms"]:
        parts = [f"{label(m)} {format_summary(summary[(arm['name'], final, m)])}"
                 for m in ("fad", "clap_score", "wer", "speaker_similarity", "wer_with_reference",
                           "speaker_similarity_with_reference") if (arm["name"], final, m) in summary
                 and summary[(arm["name"], final, m)]["mean"] is not None]
        recon = {m["name"]: m for m in arm["reconstruction"]}
        rank = next(m for m in arm["latent_statistics"]["metrics"] if m["name"] == "effective_rank")
        parts.append(f"mel distance {format_value(recon.get('mel_distance'))}")
        parts.append(f"effective rank {rank['value']:.3g} of {arm['latent_statistics']['dim']}")
        lines.append(f"  {arm['name']}: " + ", ".join(parts))
    return lines
