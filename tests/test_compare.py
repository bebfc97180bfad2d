"""lodit evaluate / lodit compare: metrics files, the experiment runner's stages and resume, the report."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lodit.cli import main
from lodit.config import ConfigError
from lodit.data.audio import load_audio, save_audio
from lodit.data.espeak import espeak_available
from lodit.data.manifest import ManifestRow, read_manifest, write_manifest
from lodit.data.synthetic import make_demo_dataset
from lodit.errors import LoditError
from lodit.eval import experiment as experiment_module
from lodit.eval.evaluate import EvaluationConfig
from lodit.eval.experiment import split_rows
from lodit.eval.experiment_config import load_experiment
from lodit.eval.layout import ExperimentLayout
from lodit.eval.stages import StageBook, read_stage_log
from lodit.eval.summary import aggregate, t_interval
from lodit.eval.tables import format_summary

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "experiments" / "tiny.yaml"
REPORT_FILES = ("results.json", "report.md", "report.html", "convergence_fad.png", "convergence_clap_score.png",
                "convergence_wer.png", "latent_spectrum.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Sounds, music and (with espeak-ng) two utterances. The utterances are labelled with one
    speaker, so the held-out one has a reference voice (the other, in the training set)."""
    manifest = make_demo_dataset(tmp_path_factory.mktemp("data"), n_audio=5, n_music=3, n_speech=2, seconds=1.0)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for row in rows:
        if row.get("domain") == "speech":
            row["speaker"] = "speaker-a"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


@pytest.fixture(scope="module")
def cheap_embedder(tmp_path_factory) -> Path:
    """A randomly initialised tiny tokenizer as FAD embedder: 16-dim features in milliseconds (the
    Whisper embedder's FAD is covered by the metric tests; here the pipeline is under test)."""
    import torch

    from lodit.config import load_config
    from lodit.latent_tokenizer.tokenizer import Tokenizer
    from lodit.latent_tokenizer.train import TokenizerTrainConfig

    torch.manual_seed(0)
    config = load_config(TokenizerTrainConfig, REPO / "configs" / "tokenizer" / "tiny.yaml").tokenizer
    return Tokenizer(config).save_pretrained(tmp_path_factory.mktemp("embedder") / "tokenizer")


def compare_args(out: Path, manifest: Path, embedder: Path, *extra: str) -> list[str]:
    return ["compare", "--config", str(TINY), "--out", str(out), f"data.train_manifest={manifest}",
            "evaluation.embedder.name=tokenizer", f"evaluation.embedder.model={embedder}", *extra]


def last_run(out: Path) -> list[dict]:
    log = read_stage_log(out)
    return [entry for entry in log if entry["run"] == log[-1]["run"]]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, dataset, cheap_embedder):
    """The tiny comparison run three times: interrupted at its third scoring, resumed, then re-run."""
    out = tmp_path_factory.mktemp("compare") / "tiny"
    args = compare_args(out, dataset, cheap_embedder)
    original = experiment_module.Evaluator.evaluate
    calls = []

    def interrupting(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment_module.Evaluator, "evaluate", interrupting)
        assert main(args) == 130  # the CLI's exit status for an interruption
    first = last_run(out)
    assert main(args) == 0
    second = last_run(out)
    report = out / "report"
    mtimes = {name: (report / name).stat().st_mtime_ns for name in REPORT_FILES}
    assert main(args) == 0
    third = last_run(out)
    return {"out": out, "runs": (first, second, third), "mtimes": mtimes}


def test_compare_writes_every_report_file(experiment):
    report = experiment["out"] / "report"
    for name in REPORT_FILES:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    wavs = sorted(p.name for p in (report / "audio").glob("*.wav"))
    assert wavs == [
        "dim_16-0.wav",
        "dim_16-1.wav",
        "dim_64-0.wav",
        "dim_64-1.wav",
        "reference-0.wav",
        "reference-1.wav",
    ]
    assert (report / "convergence_fad.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_hold_every_number_with_model_and_n(experiment):
    results = json.loads((experiment["out"] / "report" / "results.json").read_text())
    assert [arm["name"] for arm in results["arms"]] == ["dim_16", "dim_64"]
    assert {(run["arm"], run["step"]) for run in results["runs"]} == {
        (a, s) for a in ("dim_16", "dim_64") for s in (2, 4)
    }
    for run in results["runs"]:
        names = {m["name"] for m in run["metrics"]}
        assert {"fad", "clap_score", "wer", "speaker_similarity", "rtf", "nfe"} <= names
        assert {"fad_tta", "fad_ttm"} <= names  # each prompt was generated with its reference clip's task
        for metric in run["metrics"]:
            assert isinstance(metric["n"], int) and "model" in metric
            assert metric["value"] is not None or metric["details"]["unavailable"]
        fad = next(m for m in run["metrics"] if m["name"] == "fad")
        held_out = 4 if espeak_available() else 3  # 2 sounds, 1 music clip (and 1 utterance) held out
        assert fad["value"] > 0 and fad["n"] == 3 and fad["details"]["n_ref"] == held_out
        assert "lodit tokenizer" in fad["model"]
        clap = next(m for m in run["metrics"] if m["name"] == "clap_score")
        assert "no CLAP model" in clap["details"]["unavailable"]
    for arm, dim in zip(results["arms"], (16, 64)):
        assert arm["tokenizer"]["latent_dim"] == dim
        rank = next(m for m in arm["latent_statistics"]["metrics"] if m["name"] == "effective_rank")
        assert 1.0 <= rank["value"] <= dim
        assert rank["n"] == arm["latent_statistics"]["n_frames"]
        assert rank["n"] > 0
        mel = next(m for m in arm["reconstruction"] if m["name"] == "mel_distance")
        assert mel["value"] > 0 and mel["n"] == 3
    samples_dir = ExperimentLayout(experiment["out"]).step_dir("dim_16", 0, 2) / "samples"
    samples = json.loads((samples_dir / "samples.json").read_text())
    references = json.loads((samples_dir / "references.json").read_text())
    tasks = {"audio": "tta", "music": "ttm", "speech": "tts"}
    assert [s["task"] for s in samples["samples"]] == [tasks[r["domain"]] for r in references]
    assert {s["task"] for s in samples["samples"]} == ({"tta", "ttm", "tts"} if espeak_available() else {"tta", "ttm"})
    summary = {(r["arm"], r["step"], r["metric"]): r for r in results["summary"]}
    row = summary[("dim_64", 4, "fad")]
    assert row["n_seeds"] == 1 and row["ci_low"] is None and row["mean"] == pytest.approx(row["values"][0])


def test_tts_is_scored_with_and_without_a_reference_voice(experiment, dataset):
    if not espeak_available():
        pytest.skip("the speech clips need espeak-ng (pip install espeakng-loader)")
    out = experiment["out"]
    results = json.loads((out / "report" / "results.json").read_text())
    variants = results["tts_variants"]
    assert (variants["without_reference"]["wer"], variants["with_reference"]["wer"]) == ("wer", "wer_with_reference")
    assert "no reference voice" in variants["without_reference"]["description"]
    for run in results["runs"]:
        metrics = {m["name"]: m for m in run["metrics"]}
        for variant, spec in variants.items():
            wer, similarity = metrics[spec["wer"]], metrics[spec["speaker_similarity"]]
            assert wer["details"]["tts_prompt"] == similarity["details"]["tts_prompt"] == variant
            assert wer["n"] == 1  # the one held-out utterance
            # the tiny models' speech may be silence, which has no speaker embedding: then the reason is given
            assert similarity["n"] == 1 or "silent" in similarity["details"]["unavailable"]
        assert metrics["wer_with_reference"]["value"] >= 0 and "tiny.en" in metrics["wer_with_reference"]["model"]
        assert metrics["wer_with_reference"]["details"]["skipped"] == 0

    # The held-out utterance again, with the other clip of its speaker (in the training set) as the voice.
    rows = read_manifest(dataset)
    train_speech = next(r for r in read_manifest(out / "data" / "train.jsonl").rows if r.domain == "speech")
    held_out = next(r for r in read_manifest(out / "data" / "eval.jsonl").rows if r.domain == "speech")
    voiced = ExperimentLayout(out).step_dir("dim_16", 0, 4) / "samples_with_reference"
    (entry,) = json.loads((voiced / "samples.json").read_text())["samples"]
    assert (entry["task"], entry["transcript"]) == ("tts", held_out.transcript)
    assert entry["reference_transcript"] == train_speech.transcript != held_out.transcript
    voice = json.loads((voiced / "voices.json").read_text())["references"][0]["voice"]
    assert voice["set"] == "training" and voice["transcript"] == train_speech.transcript
    source = next(r for r in rows.rows if r.transcript == train_speech.transcript)
    torch.testing.assert_close(
        load_audio(entry["reference_audio"]), load_audio(rows.audio_path(source)), atol=1e-4, rtol=0
    )
    plain = json.loads((voiced.parent / "samples" / "samples.json").read_text())["samples"]
    assert [s["reference_audio"] for s in plain if s["task"] == "tts"] == [""]  # the text-only variant

    markdown = (out / "report" / "report.md").read_text()
    assert "## TTS with and without a reference voice (DiT step 4)" in markdown
    assert "WER (%, with reference)" in markdown and "WER (%, text only)" in markdown
    assert "With reference: transcript plus a reference voice" in markdown


def test_report_is_self_contained_and_names_models(experiment):
    report = experiment["out"] / "report"
    page = (report / "report.html").read_text()
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page)
    assert page.count("data:image/png;base64,") == 4 and page.count("data:audio/wav;base64,") == 6
    for title in ("Final metrics", "How each number was measured", "Reconstruction per tokenizer",
                  "Latent statistics", "Sampling speed", "Audio examples"):
        assert title in page
    markdown = (report / "report.md").read_text()
    assert "convergence_fad.png" in markdown and "audio/dim_64-0.wav" in markdown
    assert "lodit tokenizer" in markdown and "no CLAP model given" in markdown
    assert "One seed (n=1)" in markdown


def test_resume_continues_and_then_reuses_everything(experiment):
    first, second, third = experiment["runs"]
    ran_first = {e["stage"] for e in first if e["action"] == "ran"}
    assert "tokenizer/dim_16" in ran_first and "score/dim_16/seed-0/step-2" in ran_first
    # the third scoring (dim_64 at step 2) was interrupted: its samples were made, its scores were not
    assert "sample/dim_64/seed-0/step-2" in ran_first and "score/dim_64/seed-0/step-2" not in ran_first
    second_actions = {e["stage"]: e["action"] for e in second}
    for stage in ran_first:
        assert second_actions[stage] == "reused", stage
    for stage in ("score/dim_64/seed-0/step-2", "sample/dim_64/seed-0/step-4", "dit/dim_64/seed-0", "report"):
        assert second_actions[stage] == "ran", stage
    assert third and all(e["action"] == "reused" for e in third)
    report = experiment["out"] / "report"
    assert {n: (report / n).stat().st_mtime_ns for n in REPORT_FILES} == experiment["mtimes"]


def test_evaluate_command_writes_metrics_with_model_and_n(tmp_path, cheap_embedder):
    pytest.importorskip("faster_whisper", reason="WER needs faster-whisper")
    pytest.importorskip("resemblyzer", reason="speaker similarity needs resemblyzer")
    from lodit.data.espeak import espeak_available

    if not espeak_available():
        pytest.skip("the speech clips need espeak-ng (pip install espeakng-loader)")
    manifest = make_demo_dataset(tmp_path / "ref", n_audio=2, n_music=0, n_speech=2, seconds=3.0)
    rows = read_manifest(manifest)
    samples = tmp_path / "samples"
    samples.mkdir()
    entries = []
    for i, row in enumerate(rows):  # the reference clips themselves stand in for generated ones
        shutil.copy(rows.audio_path(row), samples / f"{i:04d}.wav")
        speech = row.domain == "speech"
        entries.append({"file": f"{i:04d}.wav", "prompt": row.caption, "transcript": row.transcript if speech else "",
                        "reference_audio": "", "task": "tts" if speech else "tta", "seconds": row.duration,
                        "nfe": 8, "model_calls": 16})
    (samples / "samples.json").write_text(json.dumps({
        "settings": {"sampler": "euler", "steps": 8, "cfg": 3.0, "device": "cpu", "batch_size": 4},
        "wall_seconds": 2.0, "rtf": 0.25, "samples": entries}))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--samples", str(samples), "--reference", str(manifest), "--out", str(out),
                 "--embedder", "tokenizer", "--embedder-model", str(cheap_embedder)]) == 0
    metrics = {m["name"]: m for m in json.loads(out.read_text())["metrics"]}
    assert set(metrics) == {"fad", "fad_tta", "fad_tts", "clap_score", "wer", "speaker_similarity", "rtf", "nfe"}
    for metric in metrics.values():
        assert isinstance(metric["n"], int) and isinstance(metric["model"], str)
    assert metrics["fad"]["value"] == pytest.approx(0.0, abs=1e-3) and metrics["fad"]["n"] == 4  # same clips
    assert metrics["wer"]["n"] == 2 and metrics["wer"]["value"] < 0.5 and "tiny.en" in metrics["wer"]["model"]
    assert metrics["speaker_similarity"]["n"] == 2 and metrics["speaker_similarity"]["value"] > 0.99
    assert "resemblyzer" in metrics["speaker_similarity"]["model"]
    assert metrics["rtf"]["value"] == 0.25 and metrics["nfe"]["value"] == 8 and "euler" in metrics["rtf"]["model"]
    assert metrics["clap_score"]["value"] is None and metrics["clap_score"]["n"] == 4


def test_evaluate_needs_a_samples_index(tmp_path, dataset):
    with pytest.raises(LoditError, match="samples.json"):
        experiment_module.Evaluator(EvaluationConfig()).evaluate(tmp_path, dataset)


# ----------------------------------------------------------------------------- aggregation


def test_t_interval_on_hand_numbers():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    # s = 1, t(0.975, 2) = 4.302653, half-width = 4.302653 / sqrt(3)
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert low == pytest.approx(2 * mean - high)
    assert t_interval([5.0]) == (5.0, None, None)


def test_aggregate_over_seeds():
    def run(seed, step, fad, clap=None):
        clap_metric = (
            {"name": "clap_score", "value": clap, "n": 4, "model": "clap x", "details": {}}
            if clap is not None
            else {"name": "clap_score", "value": None, "n": 4, "model": "", "details": {"unavailable": "no model"}}
        )
        return {"arm": "a", "seed": seed, "step": step,
                "metrics": [{"name": "fad", "value": fad, "n": 8, "model": "whisper", "details": {}}, clap_metric]}

    rows = {
        (r["step"], r["metric"]): r for r in aggregate([run(0, 10, 4.0, 0.2), run(1, 10, 6.0), run(2, 10, 8.0, 0.4)])
    }
    fad = rows[(10, "fad")]
    assert fad["mean"] == 6.0 and fad["n_seeds"] == 3 and fad["n"] == 8 and fad["model"] == "whisper"
    assert fad["ci_high"] - 6.0 == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    clap = rows[(10, "clap_score")]
    assert clap["values"] == [0.2, 0.4] and clap["seeds"] == [0, 2] and clap["mean"] == pytest.approx(0.3)
    only_missing = aggregate([run(0, 10, 1.0), run(1, 10, 2.0)])
    clap = next(r for r in only_missing if r["metric"] == "clap_score")
    assert clap["mean"] is None and clap["unavailable"] == "no model" and format_summary(clap) == "n/a"
    assert format_summary({"metric": "wer", "mean": 0.05, "ci_low": None, "ci_high": None}) == "5"  # WER in %


# ----------------------------------------------------------------------------- config and stages


def test_experiment_config_paths_and_errors(tmp_path):
    config = load_experiment(TINY, ["data.train_manifest=relative/train.jsonl"])
    assert config.arms[0].tokenizer == str(REPO / "configs" / "tokenizer" / "tiny.yaml")
    assert config.dit.config == str(REPO / "configs" / "dit" / "tiny.yaml")
    assert config.data.train_manifest == "relative/train.jsonl"  # command-line paths stay relative to the cwd
    assert config.eval_steps == [2, 4]
    with pytest.raises(ConfigError, match="eval_steps"):
        load_experiment(TINY, ["eval_steps=[2, 9]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [{name: a, tokenizer: x.yaml, checkpoint: y}]\n")
    with pytest.raises(ConfigError, match="exactly one of tokenizer"):
        load_experiment(bad)
    with pytest.raises(LoditError, match="data.train_manifest"):
        experiment_module.ExperimentRunner(load_experiment(TINY), tmp_path / "out")
    train = make_demo_dataset(tmp_path / "train", n_audio=1, n_music=0, n_speech=0, seconds=1.0)
    unlabelled = tmp_path / "unlabelled.jsonl"
    write_manifest(unlabelled, [ManifestRow(audio=str(train.parent / "audio" / "sound_000.wav"), caption="a beep")])
    for manifest, message in ((tmp_path / "none.jsonl", "not found"),
                              (unlabelled, "no captioned row with caption labels")):
        config = load_experiment(TINY, [f"data.train_manifest={train}", f"evaluation.adherence_manifest={manifest}"])
        with pytest.raises(LoditError, match=f"evaluation.adherence_manifest: .*{message}"):
            experiment_module.ExperimentRunner(config, tmp_path / "out")


def test_reference_voice_is_another_sentence_of_the_same_speaker(tmp_path):
    """Evaluation set first, then training set; never the same sentence; the voice's own segment."""
    rate = 16000
    tone = torch.sin(torch.arange(rate) / rate * 2 * math.pi * 220)[None]  # (1, S): 1 s
    for name in ("e0", "e1", "e2", "e3", "e4", "t0", "t1"):
        save_audio(tmp_path / f"{name}.wav", tone * (0.1 + 0.1 * len(name) * ord(name[1]) / 60), rate)
    speech = {"domain": "speech", "caption": "a voice"}
    write_manifest(tmp_path / "eval.jsonl", [
        ManifestRow(audio="e0.wav", speaker="A", transcript="Hello there.", **speech),
        ManifestRow(audio="e1.wav", speaker="A", transcript="hello there", **speech),  # the same sentence
        ManifestRow(audio="e2.wav", speaker="B", transcript="Good morning.", **speech),
        ManifestRow(audio="e3.wav", speaker="C", transcript="See you.", **speech),  # C has no other clip
        ManifestRow(audio="e4.wav", speaker="B", transcript="Another line.", offset=0.25, duration=0.5, **speech),
        ManifestRow(audio="e0.wav", caption="a beep", domain="audio"),
    ])
    write_manifest(tmp_path / "train.jsonl", [
        ManifestRow(audio="t0.wav", speaker="A", transcript="The quick fox.", **speech),
        ManifestRow(audio="t1.wav", speaker="B", transcript="Not chosen.", **speech),
    ])
    requests, references, skipped = experiment_module.reference_voice_prompts(
        tmp_path / "eval.jsonl", tmp_path / "train.jsonl", ["tta", "tts"], 10, tmp_path / "voices")
    assert [(r["transcript"], r["reference_transcript"]) for r in requests] == [
        ("Hello there.", "The quick fox."), ("hello there", "The quick fox."),
        ("Good morning.", "Another line."), ("Another line.", "Good morning.")]
    assert [r["voice"]["set"] for r in references] == ["training", "training", "evaluation", "evaluation"]
    assert all(r["task"] == "tts" and r["prompt"] == "a voice" for r in requests)
    assert skipped == [{"audio": str((tmp_path / "e3.wav").resolve()), "transcript": "See you.", "speaker": "C"}]
    voice = load_audio(requests[2]["reference_audio"])  # e4's segment only, 0.25 s to 0.75 s
    torch.testing.assert_close(voice, load_audio(tmp_path / "e4.wav", offset=0.25, duration=0.5), atol=1e-4, rtol=0)
    assert voice.shape == (1, rate // 2)


def test_split_keeps_every_domain_in_both_parts():
    rows = [ManifestRow(audio=f"{d}{i}.wav", domain=d) for d in ("audio", "music") for i in range(10)]
    rows.append(ManifestRow(audio="speech0.wav", domain="speech"))
    train, held = split_rows(rows, 0.2, seed=3)
    assert sorted(r.domain for r in held) == ["audio", "audio", "music", "music"]
    assert len(train) == 17 and {r.audio for r in train}.isdisjoint({r.audio for r in held})
    assert split_rows(rows, 0.2, seed=3) == (train, held)


def test_stage_with_other_settings_is_redone(tmp_path):
    book = StageBook(tmp_path)
    folder = tmp_path / "stage"
    book.start(folder, {"a": 1})
    (folder / "output.txt").write_text("x")
    assert not book.is_done(folder, {"a": 1})  # running: kept for continuing
    assert (folder / "output.txt").is_file()
    book.finish("stage", folder, {"a": 1}, 0.5)
    assert book.is_done(folder, {"a": 1})
    assert not book.is_done(folder, {"a": 2}) and not folder.exists()  # other settings: stale output removed
    assert [e["action"] for e in read_stage_log(tmp_path)] == ["ran"]
    assert ExperimentLayout(tmp_path).step_dir("x", 1, 20).name == "step-00000020"
    # two runs of one process in the same second keep apart in the log
    assert StageBook(tmp_path).run_id != StageBook(tmp_path).run_id


# ----------------------------------------------------------------------------- the HTML in a browser


def test_report_loads_in_headless_chromium(experiment, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not on PATH")
    page = experiment["out"] / "report" / "report.html"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("<table") >= 6 and "Final metrics" in result.stdout
    # The page has no scripts, so any console message (an error, a failed resource) is a fault.
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console


@pytest.mark.parametrize("name", ["demo/demo.yaml", "experiments/dim_1280_vs_128.yaml", "experiments/tiny.yaml"])
def test_shipped_experiment_configs_resolve_every_arm(name):
    """Each shipped experiment loads, and every arm's tokenizer config loads with its overrides."""
    from pathlib import Path

    from lodit.config import load_config
    from lodit.eval.experiment_config import load_experiment
    from lodit.latent_tokenizer.train import TokenizerTrainConfig

    config = load_experiment(Path(__file__).resolve().parents[1] / "configs" / name)
    assert len(config.arms) >= 2
    for arm in config.arms:
        if arm.tokenizer:
            tok = load_config(TokenizerTrainConfig, arm.tokenizer, arm.overrides)
            assert tok.tokenizer.latent_dim > 0


def test_sembo_stage_trains_once_and_feeds_the_losatok_arm(tmp_path, dataset):
    from conftest import save_tiny_whisper

    whisper = str(save_tiny_whisper(tmp_path / "whisper", 32))
    teacher = [f"teacher.model={whisper}"]
    sembo = [*teacher, "sembo.in_dim=32", "sembo.hidden_dim=16", "sembo.low_dim=8", "training.max_steps=2",
             "training.batch_size=2"]
    semantic = "tokenizer.encoder.semantic"
    tokenizer = [f"{semantic}.teacher.model={whisper}", f"{semantic}.teacher_dim=32", f"{semantic}.low_dim=8",
                 f"{semantic}.sembo_hidden_dim=16", "tokenizer.latent_dim=8", "training.max_steps=2",
                 "training.batch_size=2"]
    arm = {"name": "losatok", "tokenizer": str(REPO / "configs" / "tokenizer" / "losatok_tiny.yaml"),
           "overrides": tokenizer, "sembo": str(REPO / "configs" / "sembo" / "tiny.yaml"), "sembo_overrides": sembo}
    twin = {**arm, "name": "losatok_twin"}  # the same SemBo config: trained once, shared
    config = load_experiment(TINY, [f"data.train_manifest={dataset}", "tokenizer_steps=2"])
    from lodit.config import from_dict
    from lodit.eval.experiment_config import ArmConfig

    config.arms = [from_dict(ArmConfig, arm), from_dict(ArmConfig, twin)]
    runner = experiment_module.ExperimentRunner(config, tmp_path / "out")
    data_spec = runner.prepare_data()
    states = [runner.tokenizer(a, data_spec) for a in config.arms]
    sembo_runs = list((tmp_path / "out" / "sembo").iterdir())
    assert len(sembo_runs) == 1 and (sembo_runs[0] / "final").is_dir()
    resolved = runner.tokenizer_config(config.arms[0], sembo_runs[0] / "final")
    assert resolved.tokenizer.encoder.semantic.sembo == str((sembo_runs[0] / "final").resolve())
    assert resolved.data.teacher_cache == str((tmp_path / "out" / "teacher_cache").resolve())
    assert any((tmp_path / "out" / "teacher_cache").iterdir())  # SemBo and both tokenizers share the cache
    assert all((state.tokenizer_dir / "config.json").is_file() for state in states)
    actions = [(e["stage"].split("/")[0], e["action"]) for e in read_stage_log(tmp_path / "out")]
    assert actions.count(("sembo", "ran")) == 1 and actions.count(("sembo", "reused")) == 1
    with pytest.raises(ConfigError, match="sembo is trained for a tokenizer config"):
        from_dict(ArmConfig, {"name": "x", "checkpoint": "y", "sembo": "z.yaml"})


def test_reconstruction_clips_are_spread_over_domains():
    from lodit.eval.experiment import spread_over_domains

    rows = [ManifestRow(audio=f"{d}{i}.wav", domain=d) for d in ("audio", "music", "speech") for i in range(4)]
    chosen = spread_over_domains(rows, 5)
    assert [r.audio for r in chosen] == ["audio0.wav", "music0.wav", "speech0.wav", "audio1.wav", "music1.wav"]
    assert spread_over_domains(rows, 0) == rows and spread_over_domains(rows, 50) == rows


def test_understanding_section_joins_the_report_and_reuses_every_other_stage(experiment, dataset, cheap_embedder):
    """An understanding section added to the finished tiny comparison: only it and the report run."""
    out = experiment["out"]
    section = (f"understanding={{tasks: [{{name: domain, manifest: {dataset}, label: domain}}], folds: 2, "
               "codebook_size: 4}")
    assert main(compare_args(out, dataset, cheap_embedder, section)) == 0
    ran = {entry["stage"] for entry in last_run(out) if entry["action"] == "ran"}
    assert ran == {"understanding", "report"}
    metrics = json.loads((out / "understanding" / "metrics.json").read_text())
    assert [row["name"] for row in metrics["representations"]] == ["arm dim_16", "arm dim_64"]
    report = (out / "report" / "report.md").read_text()
    assert "## Understanding: probes and token-histogram clustering" in report and "| arm dim_64 | domain |" in report
    assert json.loads((out / "report" / "results.json").read_text())["understanding"]["tasks"][0]["name"] == "domain"


def test_fad_ceiling_script_scores_each_arms_round_trips(experiment, capsys):
    """scripts/tokenizer_fad_ceiling.py: one row per arm, its round-trip FAD, and the report's generated FAD."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fad_ceiling", REPO / "scripts" / "tokenizer_fad_ceiling.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(experiment["out"])]) == 0
    assert torch.is_grad_enabled()  # the script leaves the process's grad mode alone
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    results = json.loads((experiment["out"] / "report" / "results.json").read_text())
    arms = [arm["name"] for arm in results["arms"]]
    assert [cells[0].strip() for cells in rows] == arms
    for cells in rows:
        assert float(cells[1]) >= 0.0  # a Fréchet distance
        fads = [row for row in results["summary"] if row["arm"] == cells[0].strip() and row["metric"] == "fad"]
        last = max(fads, key=lambda row: row["step"])
        assert cells[2].strip().split(" ")[0] == f"{last['mean']:.1f}"


def test_adherence_manifest_is_sampled_and_judged_at_every_step(experiment, dataset, cheap_embedder, tmp_path):
    """evaluation.adherence_manifest added to a finished comparison (a copy of it): its captions are
    generated at every evaluation step and judged, in their own table; tokenizers, DiTs and the
    evaluation prompts' samples are reused."""
    out = tmp_path / "tiny"
    shutil.copytree(experiment["out"], out)
    probes = make_demo_dataset(tmp_path / "probes", n_audio=0, n_music=0, n_speech=0, n_beeps=4, seconds=1.0, seed=5)
    assert main(compare_args(out, dataset, cheap_embedder, f"evaluation.adherence_manifest={probes}")) == 0
    ran = {entry["stage"] for entry in last_run(out) if entry["action"] == "ran"}
    assert {stage.split("/")[0] for stage in ran} == {"sample_adherence", "score", "report"}
    assert len([stage for stage in ran if stage.startswith("sample_adherence/")]) == 4  # 2 arms x 2 steps
    layout = ExperimentLayout(out)
    scores = json.loads((layout.scores_dir("dim_16", 0, 4) / "metrics.json").read_text())
    section = scores["adherence_probes"]
    assert section["samples"] == section["matched"] == 4
    judged = {row["name"]: row for row in section["attributes"]}
    assert {"event", "count", "pitch", "length"} <= set(judged) and judged["pitch"]["n"] == 4
    assert judged["pitch"]["reference_accuracy"] == 1.0  # the estimators read the probe clips themselves right
    prompts = [json.loads(line)["prompt"] for line in
               (layout.adherence_samples_dir("dim_16", 0, 4) / "prompts.jsonl").read_text().splitlines()]
    assert prompts == [row.caption for row in read_manifest(probes).rows]
    results = json.loads((out / "report" / "results.json").read_text())
    assert {r["arm"] for r in results["adherence_probes"]["summary"]} == {"dim_16", "dim_64"}
    assert "## Text adherence on the adherence manifest's captions" in (out / "report" / "report.md").read_text()
