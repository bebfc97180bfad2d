"""The Compare tab: a ``lodit compare`` output folder, listed for listening, and a blind A/B test.

:func:`open_compare` reads an experiment folder (or its ``report/``) through ``report/results.json``
and each evaluation step's ``samples/samples.json`` + ``references.json`` into a
:class:`CompareListing`: the evaluation prompts (the same for every arm, step and seed, since they
come from one held-out set), the reference clip of each, and which wav every arm generated for it
at every evaluation step and seed, with that run's metrics and the arm's reconstruction metrics.
:func:`prompt_rows` gives one prompt's rows, step by step, for the page.

Blind A/B: :func:`new_trial` draws a prompt and two different arms at one step and hides which is
A and which is B (the page only ever gets the audio); :func:`record_preference` appends the
listener's verdict, with the hidden arms, to ``listening/preferences.json`` in the experiment
folder and returns the tally per arm (wins, losses, ties).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lodit.data.audio import load_audio
from lodit.errors import LoditError
from lodit.eval.report import RECONSTRUCTION_METRICS, RESULTS_FORMAT, read_compare_json
from lodit.eval.tables import format_value, label
from lodit.files import write_json

RESULTS = Path("report") / "results.json"
PREFERENCES = Path("listening") / "preferences.json"
CHOICES = ("A", "B", "same")
# Generation metrics shown next to a clip, in this order, when the run has them.
SHOWN_METRICS = ("fad", "fad_tta", "fad_ttm", "fad_tts", "clap_score", "wer", "speaker_similarity", "rtf", "nfe")


@dataclass
class ComparePrompt:
    index: int
    text: str  # the caption, or the transcript for a speech prompt without a caption
    caption: str
    transcript: str
    task: str
    reference: dict[str, Any]  # manifest row of the reference clip: audio, offset, duration, ...


@dataclass
class CompareListing:
    folder: Path  # the experiment folder
    experiment: str
    arms: list[str]
    seeds: list[int]
    steps: list[int]
    prompts: list[ComparePrompt]
    clips: dict[tuple[str, int, int, int], Path]  # (arm, seed, step, prompt index) -> wav
    run_metrics: dict[tuple[str, int, int], list[dict[str, Any]]]  # (arm, seed, step) -> MetricResult dicts
    reconstruction: dict[str, list[dict[str, Any]]]  # arm -> MetricResult dicts
    descriptions: dict[str, str] = field(default_factory=dict)

    def choices(self) -> list[tuple[str, int]]:
        """``(label, index)`` per prompt for a drop-down."""
        return [(f"{p.index + 1}. [{p.task}] {p.text}", p.index) for p in self.prompts]


def experiment_folder(path: str | os.PathLike) -> Path:
    """The experiment folder from it or its ``report/`` folder; a clear error for anything else."""
    folder = Path(path)
    if not folder.is_dir():
        raise LoditError(
            f"{folder}: folder not found; pass the --out folder of `lodit compare` (or `lodit demo`'s compare-*)"
        )
    if (folder / RESULTS).is_file():
        return folder
    if (folder / RESULTS.name).is_file() and (folder.parent / "arms").is_dir():
        return folder.parent
    raise LoditError(
        f"{folder}: no {RESULTS} here; pass a folder that `lodit compare` finished (it writes the report last)"
    )


def open_compare(path: str | os.PathLike) -> CompareListing:
    """List a comparison folder (see the module docstring)."""
    folder = experiment_folder(path)
    results = read_compare_json(folder / RESULTS)
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise LoditError(f"{folder / RESULTS}: not a lodit compare results file")
    arms = [arm["name"] for arm in results["arms"]]
    prompts: list[ComparePrompt] = []
    clips: dict[tuple[str, int, int, int], Path] = {}
    run_metrics: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for run in results["runs"]:
        arm, seed, step = run["arm"], int(run["seed"]), int(run["step"])
        samples_dir = folder / run["samples"]
        index = read_compare_json(samples_dir / "samples.json")["samples"]
        if not prompts:
            references = read_compare_json(samples_dir / "references.json")
            for i, (entry, reference) in enumerate(zip(index, references)):
                caption, transcript = entry.get("prompt", ""), entry.get("transcript", "")
                prompts.append(ComparePrompt(i, caption or transcript, caption, transcript, entry.get("task", ""),
                                             dict(reference)))
        for i, entry in enumerate(index):
            clips[(arm, seed, step, i)] = samples_dir / entry["file"]
        run_metrics[(arm, seed, step)] = run["metrics"]
    if not prompts:
        raise LoditError(f"{folder / RESULTS}: lists no evaluation runs; run `lodit compare` to the end")
    return CompareListing(
        folder=folder, experiment=str(results.get("experiment", folder.name)), arms=arms,
        seeds=sorted({key[1] for key in run_metrics}), steps=sorted({key[2] for key in run_metrics}),
        prompts=prompts, clips=clips, run_metrics=run_metrics,
        reconstruction={arm["name"]: arm["reconstruction"] for arm in results["arms"]},
        descriptions={arm["name"]: arm.get("description", "") for arm in results["arms"]},
    )


def metrics_line(metrics: list[dict[str, Any]], names: tuple[str, ...] = SHOWN_METRICS) -> str:
    """``FAD ↓ 12.3 · WER (%) ↓ 40 · ...`` for the metrics computed (unavailable ones are left out:
    the report says why)."""
    by_name = {m["name"]: m for m in metrics if m.get("value") is not None}
    return " · ".join(f"{label(name)} {format_value(by_name[name])}" for name in names if name in by_name)


def prompt_rows(listing: CompareListing, index: int, seed: int | None = None) -> list[dict[str, Any]]:
    """One prompt at every evaluation step: ``{"step", "arms": [{"arm", "audio", "metrics"}]}`` per step.

    ``metrics`` is the run's (that arm, seed and step: the numbers these clips were scored in),
    followed by the arm's reconstruction metrics."""
    _prompt(listing, index)
    seed = listing.seeds[0] if seed is None else int(seed)
    if seed not in listing.seeds:
        raise LoditError(f"seed {seed} is not in this comparison; choose one of: {', '.join(map(str, listing.seeds))}")
    rows = []
    for step in listing.steps:
        arms = []
        for arm in listing.arms:
            path = listing.clips.get((arm, seed, step, index))
            if path is None:
                continue
            generation = metrics_line(listing.run_metrics.get((arm, seed, step), []))
            recon = metrics_line(listing.reconstruction.get(arm, []), RECONSTRUCTION_METRICS)
            arms.append({"arm": arm, "audio": path, "metrics": generation, "reconstruction": recon})
        rows.append({"step": step, "arms": arms})
    return rows


def _prompt(listing: CompareListing, index: int) -> ComparePrompt:
    if not 0 <= int(index) < len(listing.prompts):
        raise LoditError(f"prompt {index} is not in this comparison; it has {len(listing.prompts)} prompts")
    return listing.prompts[int(index)]


def reference_audio(listing: CompareListing, index: int) -> tuple[int, np.ndarray]:
    """The reference clip of prompt ``index`` as ``(rate, samples)`` (cut to its offset and duration).

    A manifest path is tried as written, then from the experiment folder and from its parent (the
    folder ``lodit compare`` was usually run from)."""
    reference = _prompt(listing, index).reference
    written = Path(reference["audio"])
    candidates = (
        [written] if written.is_absolute() else [written, listing.folder / written, listing.folder.parent / written]
    )
    for candidate in candidates:
        if candidate.is_file():
            return clip_array(candidate, offset=reference.get("offset") or 0.0, duration=reference.get("duration"))
    raise LoditError(f"reference audio {written} not found (looked in {', '.join(str(c) for c in candidates)}); "
                     f"open the comparison from the machine and folder it was made in")


def clip_array(
    path: str | os.PathLike, *, offset: float = 0.0, duration: float | None = None
) -> tuple[int, np.ndarray]:
    """A wav as ``(rate, mono float32 samples)``, the form the page's players take without file access."""
    from lodit.data.audio import audio_info

    rate = audio_info(path)[0]
    wav = load_audio(path, offset=offset, duration=duration, channels="mix")  # (1, S)
    return rate, wav[0].numpy()


# ------------------------------------------------------------------------------ blind A/B


@dataclass
class Trial:
    """One blind comparison: what A and B are stays on the server."""

    prompt: int
    seed: int
    step: int
    arm_a: str
    arm_b: str


def new_trial(listing: CompareListing, rng: random.Random, *, step: int | None = None,
              prompt: int | None = None) -> Trial:
    """A random prompt (or ``prompt``) and two different arms in random order at ``step`` (default: the last)."""
    if len(listing.arms) < 2:
        raise LoditError("a blind A/B test needs at least two arms; this comparison has one")
    step = listing.steps[-1] if step is None else int(step)
    if step not in listing.steps:
        raise LoditError(
            f"step {step} is not an evaluation step here; choose one of: {', '.join(map(str, listing.steps))}"
        )
    seed = listing.seeds[0]
    index = rng.randrange(len(listing.prompts)) if prompt is None else _prompt(listing, prompt).index
    available = [arm for arm in listing.arms if (arm, seed, step, index) in listing.clips]
    if len(available) < 2:
        raise LoditError(f"prompt {index + 1} has clips from fewer than two arms at step {step}")
    arm_a, arm_b = rng.sample(available, 2)
    return Trial(prompt=index, seed=seed, step=step, arm_a=arm_a, arm_b=arm_b)


def trial_audio(listing: CompareListing, trial: Trial) -> tuple[tuple[int, np.ndarray], tuple[int, np.ndarray]]:
    """The A and B clips of a trial as ``(rate, samples)``: the page gets no file name that could name an arm."""
    return (clip_array(listing.clips[(trial.arm_a, trial.seed, trial.step, trial.prompt)]),
            clip_array(listing.clips[(trial.arm_b, trial.seed, trial.step, trial.prompt)]))


def record_preference(listing: CompareListing, trial: Trial, choice: str, *, listener: str = "") -> dict[str, Any]:
    """Append the verdict on ``trial`` to ``listening/preferences.json``; returns the tally per arm."""
    if choice not in CHOICES:
        raise LoditError(f"choose one of {', '.join(CHOICES)}, got {choice!r}")
    path = listing.folder / PREFERENCES
    records = read_preferences(path)
    winner = {"A": trial.arm_a, "B": trial.arm_b, "same": None}[choice]
    records.append({**asdict(trial), "prompt_text": listing.prompts[trial.prompt].text, "choice": choice,
                    "preferred_arm": winner, "listener": listener, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    try:
        write_json(path, records)
    except OSError as exc:  # a read-only comparison folder (e.g. a shared copy)
        raise LoditError(f"{path}: cannot write the verdict ({exc.strerror or exc}); copy the comparison folder "
                         f"somewhere writable and open that") from None
    return tally(records)


def read_preferences(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = read_compare_json(path)
    if not isinstance(records, list):
        raise LoditError(f"{path}: expected a list of preference records; move the file away to start a new one")
    return records


def tally(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: trials it was in, wins, losses and ties; plus the number of verdicts."""
    arms: dict[str, dict[str, int]] = {}
    for record in records:
        for arm in (record["arm_a"], record["arm_b"]):
            entry = arms.setdefault(arm, {"trials": 0, "wins": 0, "losses": 0, "ties": 0})
            entry["trials"] += 1
            if record["preferred_arm"] is None:
                entry["ties"] += 1
            elif record["preferred_arm"] == arm:
                entry["wins"] += 1
            else:
                entry["losses"] += 1
    return {"verdicts": len(records), "arms": arms}
