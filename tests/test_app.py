"""lodit app: the app's functions called directly on tiny models, and the page in headless Chromium.

The tiny tokenizer, tiny T5 caption encoder and latent cache are the ones of the DiT tests
(tests/test_dit_train.py); a tiny DiT trains for two steps. The comparison folder is laid out as
`lodit compare` lays it out, with samples written by `lodit sample` from that DiT and
``report/results.json`` assembled by the report's own :func:`collect_results`, so the listing
reads the real formats; the metric values in it are set by hand so the page's numbers can be
checked exactly.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_dit_train import (  # noqa: F401  (fixtures reused by name)
    SAMPLE_RATE,
    _clip,
    encoder,
    mixed_cache,
    tiny_config,
    tiny_t5,
    tokenizer_dir,
)

from lodit import cli
from lodit.app import generate as gen
from lodit.app import listening
from lodit.app.media import read_audio_input
from lodit.app.roundtrip import round_trip_audio
from lodit.app.state import AppState
from lodit.data.audio import load_audio, save_audio
from lodit.dit.train import train_dit
from lodit.errors import LoditError
from lodit.eval import reconstruction
from lodit.eval.experiment import run_sampler
from lodit.eval.experiment_config import load_experiment
from lodit.eval.layout import ExperimentLayout
from lodit.eval.report import collect_results
from lodit.eval.results import MetricResult
from lodit.files import write_json
from lodit.latent_tokenizer.reconstruct import round_trip
from lodit.latent_tokenizer.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY_EXPERIMENT = ROOT / "configs" / "experiments" / "tiny.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
# Hand-set scores of the comparison fixture: FAD per (arm, step), mel distance per arm.
FAD = {("dim_16", 2): 30.0, ("dim_16", 4): 20.0, ("dim_64", 2): 25.0, ("dim_64", 4): 12.5}
MEL = {"dim_16": 1.75, "dim_64": 1.25}
EVAL_PROMPTS = [("audio", "a high beep", "", "tta"), ("music", "slow piano melody", "", "ttm"),
                ("speech", "a man speaks", "hello world", "tts")]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory, mixed_cache, tiny_t5, encoder):
    run = tmp_path_factory.mktemp("dit") / "run"
    train_dit(tiny_config(mixed_cache, tiny_t5, "training.max_steps=2"), run, text_encoder=encoder)
    return run


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, dit_run, tokenizer_dir):
    out = tmp_path_factory.mktemp("compare") / "study"
    references = []
    for i, (domain, caption, transcript, _task) in enumerate(EVAL_PROMPTS):
        path = save_audio(out / "data" / f"ref-{i}.wav", _clip(domain, 1.0, 40 + i)[None], SAMPLE_RATE)
        # The last reference is written relative to the experiment folder, as a moved folder would have it.
        audio = str(path) if i < 2 else f"data/{path.name}"
        references.append({"audio": audio, "offset": 0.25, "duration": 0.5, "caption": caption,
                           "transcript": transcript, "domain": domain})
    config = load_experiment(TINY_EXPERIMENT, [f"data.train_manifest={out / 'data' / 'train.jsonl'}"])
    layout = ExperimentLayout(out)
    for arm in config.arms:
        # The arm's tokenizer and DiT run where the runner puts them (both arms share the tiny ones here).
        shutil.copytree(tokenizer_dir, layout.arm_dir(arm.name) / "tokenizer" / "final")
        shutil.copytree(dit_run, layout.seed_dir(arm.name, 0) / "dit")
        write_json(layout.arm_dir(arm.name) / "reconstruction" / "metrics.json", {
            "tokenizer": {"name": "tiny", "latent_dim": 16}, "clips": 3,
            "metrics": [MetricResult("mel_distance", MEL[arm.name], 3, "tiny round trip").to_dict()]})
        write_json(layout.arm_dir(arm.name) / "latent_stats" / "stats.json", {"dim": 16, "n_frames": 10, "metrics": []})
        for seed in config.seeds:
            for step in config.eval_steps:
                samples = layout.step_dir(arm.name, seed, step) / "samples"
                samples.mkdir(parents=True)
                prompts = samples / "prompts.jsonl"
                prompts.write_text("".join(json.dumps({"prompt": c, "transcript": t, "task": k, "seconds": 0.6}) + "\n"
                                           for _, c, t, k in EVAL_PROMPTS))
                run_sampler(dit_run, prompts, samples, config.sampling, tokenizer_dir)
                write_json(samples / "references.json", references)
                write_json(samples.parent / "scores" / "metrics.json", {"settings": {}, "metrics": [
                    MetricResult("fad", FAD[(arm.name, step)], 3, "tiny").to_dict(),
                    MetricResult.unavailable("clap_score", "no CLAP model given").to_dict()]})
    write_json(out / "report" / "results.json", collect_results(out, config))
    return out


@pytest.fixture(scope="module")
def state(tmp_path_factory, dit_run, tokenizer_dir, compare_dir):
    return AppState.create(checkpoint=dit_run, tokenizer=tokenizer_dir, compare=compare_dir, device="cpu",
                           out_dir=tmp_path_factory.mktemp("app_out"))


@pytest.fixture(scope="module")
def generator(state):
    return state.generator(None)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------- state


def test_models_load_once_and_compare_arms_are_offered(state, dit_run, tokenizer_dir, tmp_path):
    labels = list(state.checkpoints)
    assert labels[0] == f"{dit_run} (--checkpoint)"
    assert labels[1:] == ["dim_16 seed-0 (compare)", "dim_64 seed-0 (compare)"]
    assert list(state.tokenizers) == [f"{tokenizer_dir} (--tokenizer)", "dim_16 (compare)", "dim_64 (compare)"]
    assert state.generator(labels[0]) is state.generator(None) is state.generator(labels[0])
    assert state.tokenizer(None) is state.tokenizer(list(state.tokenizers)[0])
    # the generator decodes with the given tokenizer object: one copy in memory, not two
    assert state.generator(None).tokenizer is state.tokenizer(None)
    with pytest.raises(LoditError, match="unknown DiT checkpoint 'nope'") as info:
        state.generator("nope")
    one_line(info)
    with pytest.raises(LoditError, match="DiT checkpoint folder not found"):
        AppState.create(checkpoint=tmp_path / "missing", device="cpu", out_dir=tmp_path / "out")
    with pytest.raises(LoditError, match="no DiT checkpoint loaded; start the app with --checkpoint"):
        AppState.create(tokenizer=tokenizer_dir, device="cpu", out_dir=tmp_path / "out2").generator(None)


# ----------------------------------------------------------------------------- Generate


def test_generate_writes_clips_mels_settings_and_a_zip(state, generator):
    seen = []
    request = gen.GenerateRequest(prompt="a high beep", seconds=0.6, steps=3, cfg=3.0, seed=5, batch=2)
    output = gen.generate(generator, request, state.request_dir("generate"), progress=lambda f, text: seen.append(f))
    assert [c.seed for c in output.clips] == [5, 6] and [c.task for c in output.clips] == ["tta", "tta"]
    for clip in output.clips:
        info = sf.info(clip.wav)
        assert info.samplerate == SAMPLE_RATE and info.frames == round(0.6 * SAMPLE_RATE)
        assert clip.mel.read_bytes()[:8] == PNG
    settings = output.settings
    assert settings["nfe"] == 3 and settings["steps"] == 3 and settings["seeds"] == [5, 6]
    assert settings["rtf"] > 0 and settings["cfg_interval"] == [0.0, 1.0]
    assert settings["request"]["prompt"] == "a high beep" and settings["request"]["batch"] == 2
    assert json.loads((output.folder / "settings.json").read_text())["nfe"] == 3
    with zipfile.ZipFile(output.archive) as archive:
        assert sorted(archive.namelist()) == ["mel-0.png", "mel-1.png", "sample-0.wav", "sample-1.wav", "settings.json"]
    # Progress: 1 - t at each of the 3 Euler evaluations (t = 1, 2/3, 1/3), then done.
    assert seen[-1] == 1.0 and [round(f, 3) for f in seen if 0 < f < 1] == [0.333, 0.667]
    # The same audio the library gives for the same request.
    direct = generator.generate(["a high beep"] * 2, seconds=0.6, seed=5, task="tta",
                                sampling=generator.config.sampling.with_changes(steps=3, cfg=3.0))
    for clip, wav in zip(output.clips, direct.waveforms):
        written, _ = sf.read(clip.wav, dtype="float32")
        np.testing.assert_allclose(written, wav[0].numpy(), atol=1e-4)


def test_cfg_interval_applies_to_the_request_only(state, generator, monkeypatch):
    """Guidance runs both branches in one doubled batch: the batch size at each evaluation shows where it ran."""
    calls = []
    network = generator.model.velocity_fn

    def spy(x, t, condition):
        calls.append((round(float(t.max()), 3), x.shape[0]))
        return network(x, t, condition)

    monkeypatch.setattr(generator.model, "velocity_fn", spy)
    folder = state.request_dir("generate")
    common = {"prompt": "slow piano melody", "task": "ttm", "seconds": 0.4, "steps": 4, "seed": 1}
    # Euler evaluates t = 1, 3/4, 1/2, 1/4; guidance only where from <= t <= to.
    gen.generate(generator, gen.GenerateRequest(cfg=3.0, cfg_interval=(0.4, 0.8), **common), folder / "a")
    assert calls == [(1.0, 1), (0.75, 2), (0.5, 2), (0.25, 1)]
    calls.clear()
    gen.generate(generator, gen.GenerateRequest(cfg=3.0, cfg_interval=(0.0, 1.0), **common), folder / "b")
    assert [size for _, size in calls] == [2, 2, 2, 2]
    calls.clear()
    gen.generate(generator, gen.GenerateRequest(cfg=1.0, cfg_interval=(0.0, 1.0), **common), folder / "c")
    assert [size for _, size in calls] == [1, 1, 1, 1]  # scale 1: the conditional branch alone
    assert tuple(generator.config.sampling.guidance.interval) == (0.0, 1.0)  # the shared generator is untouched


def test_generate_continues_a_reference_voice(state, generator, tmp_path):
    rate = 48000  # above the model's rate: resampled
    voice = (np.clip(_clip("speech", 0.4, 3).numpy(), -1, 1) * 32767).astype(np.int16)
    voice48 = np.repeat(voice, 3)  # (S,) int16 at 48 kHz, as the microphone hands it over
    request = gen.GenerateRequest(transcript="the quick fox", reference_audio=(rate, voice48),
                                  reference_transcript="hello world", seconds=0.8, steps=2)
    output = gen.generate(generator, request, state.request_dir("generate"))
    assert output.clips[0].task == "tts" and sf.info(output.clips[0].wav).frames == round(0.8 * SAMPLE_RATE)
    assert output.settings["request"]["reference_audio"] == "0.40 s"


def _wav(tmp_path: Path, name: str, seconds: float, rate: int) -> str:
    t = np.arange(round(seconds * rate)) / rate
    path = tmp_path / name
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return str(path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "  "}, "the prompt is empty"),
        ({"prompt": "a beep", "task": "tts"}, "needs a transcript"),
        ({"prompt": "a beep", "task": "asr"}, "unknown task 'asr'"),
        ({"prompt": "a beep", "sampler": "ddim"}, "unknown sampler 'ddim'; choose one of: adaptive, euler"),
        ({"prompt": "a beep", "batch": 9}, "batch must be between 1 and 8"),
        ({"prompt": "a beep", "steps": 0}, "steps must be between 1"),
        ({"prompt": "a beep", "seconds": -1}, "seconds must be between 0"),
        ({"prompt": "a beep", "cfg_interval": (0.8, 0.2)}, "CFG interval must satisfy 0 <= from <= to <= 1"),
        ({"transcript": "hi", "reference_audio": "REF"}, "needs its transcript"),
        ({"prompt": "a beep", "reference_audio": "REF", "reference_transcript": "x"}, "only used for speech"),
        (
            {"transcript": "hi", "reference_audio": "LOW", "reference_transcript": "x"},
            "recorded at 8000 Hz, below the model's 16000 Hz",
        ),
        (
            {"transcript": "hi", "reference_audio": "REF", "reference_transcript": "x", "seconds": 0.4},
            r"the reference \(1.00 s\) is longer than the speech to generate \(0.40 s\)",
        ),
        (
            {"transcript": "hi", "reference_audio": "REF", "reference_transcript": "hello there, this is long"},
            r"is longer than the speech to generate \(0.08 s\)",
        ),
        ({"transcript": "hi", "reference_audio": "MISSING", "reference_transcript": "x"}, "audio file not found"),
    ],
)
def test_bad_generate_input_is_one_clear_line(generator, tmp_path, fields, message):
    files = {"REF": _wav(tmp_path, "ref.wav", 1.0, SAMPLE_RATE), "LOW": _wav(tmp_path, "low.wav", 1.0, 8000),
             "MISSING": str(tmp_path / "nope.wav")}
    if "reference_audio" in fields:
        fields = {**fields, "reference_audio": files[fields["reference_audio"]]}
    with pytest.raises(LoditError, match=message) as info:
        gen.generate(generator, gen.GenerateRequest(**{"steps": 2, **fields}), tmp_path / "out")
    one_line(info)
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def test_read_audio_input_converts_and_refuses(tmp_path):
    stereo = np.stack([np.full(4800, 16384, np.int16), np.full(4800, -16384, np.int16)], axis=1)  # (S, 2) at 48 kHz
    mono = read_audio_input((48000, stereo[:, :1]), 16000)
    assert mono.shape == (1, 1600) and mono.dtype == torch.float32
    assert float(mono[0, 400:1200].mean()) == pytest.approx(0.5, abs=1e-3)  # int16 full scale -> 1.0
    assert float(read_audio_input((48000, stereo), 16000).abs().max()) < 1e-3  # channels mixed: +0.5 and -0.5
    from_file = read_audio_input(_wav(tmp_path, "a.wav", 0.5, 22050), 16000)
    assert from_file.shape == (1, 8000)
    for value, message in [(None, "none given"), ((16000, np.zeros(0, np.float32)), "holds no samples"),
                           ((16000, np.array([0.1, np.nan], np.float32)), "NaN or infinite"),
                           ((16000, np.zeros(16000 * 3, np.float32)), "longer than the 2 s the app accepts")]:
        with pytest.raises(LoditError, match=message):
            read_audio_input(value, 16000, max_seconds=2)


# ----------------------------------------------------------------------------- Tokenizer


def test_round_trip_reports_metrics_latents_and_files(state, tokenizer_dir, tmp_path):
    tokenizer = state.tokenizer(None)
    source = save_audio(tmp_path / "in.wav", _clip("music", 1.0, 7)[None], SAMPLE_RATE)
    output = round_trip_audio(tokenizer, str(source), state.request_dir("roundtrip"))
    wav = load_audio(source, SAMPLE_RATE)  # (1, S): the saved (16-bit) clip the app reads
    expected = round_trip(Tokenizer.from_pretrained(tokenizer_dir), wav)  # what `lodit reconstruct` measures
    assert output.metrics["mel_distance"] == pytest.approx(expected.mel_distance, abs=1e-3)
    assert output.metrics["si_sdr_db"] == pytest.approx(expected.si_sdr, abs=1e-2)
    assert output.metrics["level_ratio_db"] == pytest.approx(expected.level_db, abs=1e-2)
    stft = reconstruction.stft_distance([wav], [expected.recon]).value
    assert output.metrics["stft_distance"] == pytest.approx(stft, abs=1e-3)
    robust = reconstruction.multiscale_mel_distance([wav], [expected.recon], SAMPLE_RATE, dynamic_range_db=80.0).value
    assert output.metrics["mel_distance_80db"] == pytest.approx(robust, abs=1e-3)
    for name in ("pesq", "stoi"):  # a number where the package is installed, else the reason
        assert output.metrics[name] is not None or name in output.metrics["unavailable"]
    latents = output.latents
    assert latents["frames"] == 25 and latents["dim"] == 16 and latents["frame_rate"] == 25.0
    from lodit.eval.latent_stats import latent_statistics

    stats = latent_statistics(Tokenizer.from_pretrained(tokenizer_dir).encode(wav)[0], topk=(1, 8))
    assert latents["effective_rank"] == pytest.approx(float(stats["effective_rank"]), abs=1e-3)
    assert latents["topk_variance_fraction"]["8"] == pytest.approx(stats["topk_variance_fraction"][8], abs=1e-4)
    assert latents["topk_variance_fraction"]["16"] == pytest.approx(1.0)  # all 16 channels: all the variance
    assert sf.info(output.recon_wav).frames == SAMPLE_RATE and sf.info(output.input_wav).frames == SAMPLE_RATE
    assert output.input_mel.read_bytes()[:8] == PNG and output.recon_mel.read_bytes()[:8] == PNG
    with pytest.raises(LoditError, match="the input is silent"):
        round_trip_audio(tokenizer, (SAMPLE_RATE, np.zeros(1600, np.float32)), tmp_path / "silent")


# ----------------------------------------------------------------------------- Compare


def test_compare_listing_by_prompt_arm_and_step(compare_dir):
    listing = listening.open_compare(compare_dir / "report")  # the report folder works too
    assert listing.folder == compare_dir and listing.experiment == "tiny"
    assert listing.arms == ["dim_16", "dim_64"] and listing.steps == [2, 4] and listing.seeds == [0]
    assert [p.text for p in listing.prompts] == ["a high beep", "slow piano melody", "a man speaks"]
    assert [p.task for p in listing.prompts] == ["tta", "ttm", "tts"] and listing.prompts[2].transcript == "hello world"
    assert listing.choices()[1] == ("2. [ttm] slow piano melody", 1)
    rows = listening.prompt_rows(listing, 2)
    assert [row["step"] for row in rows] == [2, 4] and [a["arm"] for a in rows[1]["arms"]] == ["dim_16", "dim_64"]
    last = {a["arm"]: a for a in rows[1]["arms"]}
    assert last["dim_64"]["metrics"] == "FAD ↓ 12.5"  # the unavailable CLAP score is left out
    assert last["dim_16"]["reconstruction"] == "mel distance ↓ 1.75"
    assert last["dim_16"]["audio"] == compare_dir / "arms/dim_16/seed-0/step-00000004/samples/0002.wav"
    assert sf.info(last["dim_16"]["audio"]).frames == round(0.6 * SAMPLE_RATE)
    for index in (0, 2):  # an absolute reference path, and one relative to the experiment folder
        rate, samples = listening.reference_audio(listing, index)
        whole = load_audio(compare_dir / "data" / f"ref-{index}.wav")[0].numpy()
        assert rate == SAMPLE_RATE and np.array_equal(samples, whole[4000:12000])  # offset 0.25 s, 0.5 s long
    with pytest.raises(LoditError, match="prompt 3 is not in this comparison"):
        listening.prompt_rows(listing, 3)
    with pytest.raises(LoditError, match="seed 7 is not in this comparison"):
        listening.prompt_rows(listing, 0, seed=7)


def test_compare_folder_errors(tmp_path, compare_dir):
    with pytest.raises(LoditError, match="folder not found"):
        listening.open_compare(tmp_path / "nope")
    with pytest.raises(LoditError, match=r"no report/results.json here; pass a folder that `lodit compare` finished"):
        listening.open_compare(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(compare_dir / "report", broken / "report")
    (broken / "report" / "results.json").write_text("{")
    with pytest.raises(LoditError, match="not valid JSON"):
        listening.open_compare(broken)


def test_blind_ab_records_verdicts_and_tallies(compare_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(compare_dir, study)  # preferences are written into the folder: keep the fixture clean
    listing = listening.open_compare(study)
    rng = random.Random(3)
    trial = listening.new_trial(listing, rng)
    assert trial.step == 4 and {trial.arm_a, trial.arm_b} == {"dim_16", "dim_64"}
    (rate_a, a), (rate_b, b) = listening.trial_audio(listing, trial)
    expected_a, _ = sf.read(listing.clips[(trial.arm_a, 0, 4, trial.prompt)], dtype="float32")
    assert rate_a == rate_b == SAMPLE_RATE and np.allclose(a, expected_a, atol=1e-4)
    counts = listening.record_preference(listing, trial, "A")
    assert (
        counts["verdicts"] == 1
        and counts["arms"][trial.arm_a]["wins"] == 1
        and counts["arms"][trial.arm_b]["losses"] == 1
    )
    second = listening.new_trial(listing, rng, step=2, prompt=1)
    assert (second.step, second.prompt) == (2, 1)
    counts = listening.record_preference(listing, second, "same", listener="ears")
    assert counts["verdicts"] == 2 and counts["arms"]["dim_16"]["ties"] == 1 and counts["arms"]["dim_64"]["trials"] == 2
    records = json.loads((study / "listening" / "preferences.json").read_text())
    assert [r["choice"] for r in records] == ["A", "same"] and records[0]["preferred_arm"] == trial.arm_a
    assert records[1]["preferred_arm"] is None and records[1]["listener"] == "ears"
    assert records[0]["prompt_text"] == listing.prompts[trial.prompt].text
    with pytest.raises(LoditError, match="choose one of A, B, same"):
        listening.record_preference(listing, trial, "C")
    (study / "listening" / "preferences.json").unlink()
    (study / "listening").rmdir()
    (study / "listening").write_text("a file where the folder should be")
    with pytest.raises(LoditError, match="cannot write the verdict") as info:
        listening.record_preference(listing, trial, "B")
    one_line(info)
    with pytest.raises(LoditError, match="step 3 is not an evaluation step"):
        listening.new_trial(listing, rng, step=3)


# ----------------------------------------------------------------------------- command and web layer


def test_missing_gradio_is_one_line_with_the_install_command(monkeypatch, capsys, dit_run):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    from lodit.app.ui import require_gradio

    with pytest.raises(LoditError, match=r'pip install "lodit\[app\]"'):
        require_gradio()
    assert cli.main(["app", "--checkpoint", str(dit_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lodit app: error:") and 'pip install "lodit[app]"' in err and "\n" not in err


def test_app_command_refuses_bad_arguments(capsys, tmp_path):
    pytest.importorskip("gradio")
    assert cli.main(["app"]) == 2
    assert "nothing to serve; give --checkpoint DIR" in capsys.readouterr().err
    assert cli.main(["app", "--compare", str(tmp_path), "--port", "70000"]) == 2
    assert "--port 70000 is not a port" in capsys.readouterr().err
    assert cli.main(["app", "--compare", str(tmp_path)]) == 2
    assert "no report/results.json here" in capsys.readouterr().err


def test_handlers_show_lodit_errors_as_gradio_messages():
    gr = pytest.importorskip("gradio")
    from lodit.app.ui import _friendly

    def bad(x):
        raise LoditError("the prompt is empty: write a caption")

    with pytest.raises(gr.Error, match="the prompt is empty"):
        _friendly(gr, bad)(1)
    assert _friendly(gr, lambda x: x + 1)(1) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_page_generates_playable_audio_in_headless_chromium(state, generator):
    """Open the app in Debian's Chromium, press Generate without a prompt (a one-line message), write a
    prompt, press Generate: a player with a playable wav appears, the console shows no error and
    every request stays on this machine."""
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium and chromium-driver (Debian packages) are not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lodit.app.ui import build_app, launch

    port = _free_port()
    app = build_app(state)
    launch(app, host="127.0.0.1", port=port, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--window-size=1400,1200", "--disable-background-networking", "--disable-component-update"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_script_timeout(120)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 300)  # generous: a loaded 2-core machine starves the page and the server
        # The page mounts its widgets progressively (slowly on a loaded machine): wait for each one used.
        prompt = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lodit-prompt textarea"))[0]
        generate = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button#lodit-generate"))[0]
        generate.click()  # no prompt yet: a one-line message
        toast = wait.until(lambda d: d.find_elements(By.XPATH, "//*[contains(text(), 'the prompt is empty')]"))[0]
        assert "Traceback" not in toast.text and "\n" not in toast.text.strip()
        prompt.send_keys("a high beep")
        generate.click()
        link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lodit-sample-0 a[download]"))[0]
        assert driver.find_elements(By.CSS_SELECTOR, "#lodit-sample-0 audio")
        source = link.get_attribute("href")
        assert source.startswith(f"http://127.0.0.1:{port}/") and source.endswith(".wav")
        # Playable: the browser loads the served wav as an audio source and reads its duration.
        loaded = driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const a = new Audio(arguments[0]);"
            "a.onloadedmetadata = () => done([a.duration, a.readyState]);"
            "a.onerror = () => done(['error', a.error && a.error.code]);", source)
        assert loaded[0] != "error", loaded
        assert loaded[0] == pytest.approx(generator.config.default_seconds, abs=0.05) and loaded[1] >= 1
        console = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not console, console
        requested = set()
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                requested.add(message["params"]["request"]["url"])
        outside = [u for u in requested if not u.startswith((f"http://127.0.0.1:{port}/", "data:", "blob:"))]
        assert not outside, outside  # the page works offline: no font, analytics or CDN request leaves the machine
    finally:
        driver.quit()
        app.close()
