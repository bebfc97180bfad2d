"""Text adherence: each estimator on clips with known parameters, accuracy and chance levels on hand
examples, the `lodit evaluate` section (labelled and unlabelled references) and the report table."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lodit.cli import main
from lodit.data.manifest import read_manifest, write_manifest
from lodit.data.synthetic import (
    make_demo_dataset,
    make_music_clip,
    midi_to_hz,
    sound_beeps,
    sound_clicks,
    sound_noise_bursts,
    sound_sweep,
    sound_wind,
)
from lodit.eval import adherence as A
from lodit.eval import evaluate as evaluate_module
from lodit.eval.embedders import Embedder

RATE = 16000


def tone(hz: float, seconds: float, harmonics=(1.0,)) -> np.ndarray:
    """A tone with the given harmonic amplitudes and 10 ms fades: (S,)."""
    t = np.arange(int(seconds * RATE)) / RATE
    wav = sum(a * np.sin(2 * np.pi * k * hz * t) for k, a in enumerate(harmonics, start=1))
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return wav * fade


def place(events: list[tuple[float, np.ndarray]], seconds: float) -> np.ndarray:
    """Events (onset seconds, samples) laid into a silent clip: (S,)."""
    wav = np.zeros(int(seconds * RATE))
    for onset, event in events:
        start = int(onset * RATE)
        wav[start : start + len(event)] += event[: len(wav) - start]
    return wav


def melody(midis: list[int], beats: list[float], tempo: float, harmonics=(1.0,)) -> np.ndarray:
    """Notes back to back, ``beats[i]`` beats long each at ``tempo`` BPM: (S,)."""
    beat = 60.0 / tempo
    onsets = np.concatenate([[0.0], np.cumsum(beats)[:-1]]) * beat
    return place([(on, tone(midi_to_hz(m), b * beat, harmonics)) for on, m, b in zip(onsets, midis, beats)],
                 float(sum(beats) * beat))


# ============================================================================ signal primitives


@pytest.mark.parametrize("hz", [110.0, 220.0, 523.25])
def test_yin_finds_the_fundamental_of_a_harmonic_tone(hz):
    f0, voiced = A.yin_f0(tone(hz, 0.5, (1.0, 0.5, 0.33)), RATE, 60.0, 1000.0)
    assert voiced[5:-5].all()
    assert np.median(f0[voiced]) == pytest.approx(hz, rel=0.005)


def test_yin_calls_silence_and_noise_unvoiced():
    wav = np.concatenate([np.zeros(RATE // 2), np.random.default_rng(0).standard_normal(RATE // 2)])
    _, voiced = A.yin_f0(wav, RATE, 60.0, 1000.0)
    assert voiced.mean() < 0.05


def test_event_segments_and_count_of_hand_placed_beeps():
    beep = tone(1000.0, 0.2)
    wav = place([(0.3, beep), (1.0, beep), (2.5, beep)], 4.0)
    segments = A.event_segments(wav, RATE)
    assert [s for s, _ in segments] == pytest.approx([0.3, 1.0, 2.5], abs=0.01)  # 5 ms hops of 10 ms frames
    assert all(0.19 <= e - s <= 0.22 for s, e in segments)
    assert A.estimate_count(wav, RATE) == 3


def test_spectral_slope_and_centroid_of_known_spectra():
    freqs = np.fft.rfftfreq(1024, 1 / RATE)
    pink = 1.0 / np.maximum(freqs, 1.0)  # power falling 3 dB per octave
    assert A.spectral_slope(pink[None], freqs) == pytest.approx(-10 * math.log10(2), abs=0.05)
    flat = np.zeros_like(freqs)
    flat[(freqs >= 1000) & (freqs <= 3000)] = 1.0
    assert A.spectral_centroid(flat[None], freqs) == pytest.approx(2000.0, abs=10)


# ============================================================================ sound-event estimators


@pytest.mark.parametrize("hz, band", [(300.0, "low"), (750.0, "mid"), (1800.0, "high")])
def test_pitch_band_of_beeps(hz, band):
    assert A.estimate_pitch(place([(0.5, tone(hz, 0.12)), (1.5, tone(hz, 0.12))], 3.0), RATE) == band


@pytest.mark.parametrize("seconds, word", [(0.12, "short"), (0.35, "long")])
def test_beep_length(seconds, word):
    assert A.estimate_length(place([(0.5, tone(800.0, seconds)), (2.0, tone(800.0, seconds))], 3.0), RATE) == word


def test_noise_colour_from_the_spectral_slope():
    from scipy import signal

    noise = np.random.default_rng(1).standard_normal(RATE)
    high = signal.sosfilt(signal.butter(4, 2000.0, "highpass", fs=RATE, output="sos"), noise)
    low = signal.sosfilt(signal.butter(4, 800.0, "lowpass", fs=RATE, output="sos"), noise)
    assert A.estimate_color(high, RATE) == "bright" and A.estimate_color(low, RATE) == "dull"


def test_click_rate_and_sweep_direction():
    click = np.random.default_rng(2).standard_normal(160) * np.exp(-np.arange(160) / 24.0)
    clicks = place([(0.25 + i / 3.0, click) for i in range(11)], 4.0)
    assert A.estimate_rate(clicks, RATE) == pytest.approx(3.0, rel=0.02)
    assert A.caption_value("rate_hz", 3.1) == 3 and A.caption_value("rate_hz", 7.0) == 8
    assert A.estimate_rate(place([(0.5, click)], 2.0), RATE) is None  # one click: no interval
    from scipy.signal import chirp

    t = np.arange(3 * RATE) / RATE
    assert A.estimate_direction(chirp(t, 400, t[-1], 1600, method="logarithmic"), RATE) == "rising"
    assert A.estimate_direction(chirp(t, 2000, t[-1], 500, method="logarithmic"), RATE) == "falling"


def demo_sounds(maker, count: int = 8):
    return [maker(np.random.default_rng([5, i]), 4.0, RATE) for i in range(count)]


@pytest.mark.parametrize("maker, names", [
    (sound_beeps, ("count", "pitch", "length")),
    (sound_noise_bursts, ("count", "color")),
    (sound_wind, ("strength",)),
    (sound_clicks, ("rate_hz",)),
    (sound_sweep, ("direction",)),
])
def test_sound_estimators_recover_the_generating_parameters(maker, names):
    clips = demo_sounds(maker)
    for clip in clips:
        wanted = A.prompt_attributes(clip.labels)
        assert set(wanted) == {"event", *names}
        got = A.estimate_attributes(clip.wav, RATE, list(wanted))
        assert all(A.matches(n, got[n], wanted[n]) for n in wanted), (clip.caption, got)
    if "strength" in names or "color" in names:  # both values were drawn, so both were recognised
        key = names[-1]
        assert len({clip.labels[key] for clip in clips}) == 2


# ============================================================================ music and speech


def test_key_and_mode_from_the_first_note_and_the_scale():
    a_minor = melody([57, 60, 64, 62, 59, 65, 57], [1, 1, 1, 1, 1, 1, 2], 100)
    assert A.estimate_key_mode(a_minor, RATE) == ("A", "minor")
    c_major = melody([60, 64, 67, 65, 62, 69, 71, 60], [1, 1, 1, 1, 1, 1, 1, 2], 100)  # same notes, C first
    assert A.estimate_key_mode(c_major, RATE) == ("C", "major")
    assert A.estimate_key_mode(np.zeros(RATE), RATE) == (None, None)


def test_tempo_from_whole_and_half_beat_notes():
    beats = [1, 0.5, 0.5, 1, 1, 0.5, 0.5, 1, 1, 1]
    for tempo in (70, 100, 130):
        assert A.estimate_tempo(melody([60, 62, 64, 65, 67, 65, 64, 62, 60, 62][: len(beats)], beats, tempo), RATE,
                                drums=False) == tempo


def test_drums_and_tempo_from_the_kick():
    for index in range(8):  # make_music_clip: the drums and tempo labels say what was generated
        clip = make_music_clip(np.random.default_rng([9, index]), index, 4.0, RATE)
        assert A.estimate_drums(clip.wav, RATE) is clip.labels["drums"]
        assert A.estimate_tempo(clip.wav, RATE) == clip.labels["tempo_bpm"]


@pytest.mark.parametrize("harmonics, instrument", [
    ((1.0,), "sine"),
    ((1.0, 0.0, 1 / 3, 0.0, 1 / 5), "square"),
    ((1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6), "saw"),
])
def test_instrument_from_harmonic_levels(harmonics, instrument):
    wav = melody([60, 62, 64, 65], [1, 1, 1, 1], 90, harmonics)
    assert A.estimate_instrument(wav, RATE) == instrument


def test_plucked_and_every_instrument_of_the_demo_melodies():
    for index in range(8):  # index % 4 picks sine, square, saw, plucked
        clip = make_music_clip(np.random.default_rng([3, index]), index, 4.0, RATE)
        assert A.estimate_instrument(clip.wav, RATE) == clip.labels["instrument"]


def test_gender_from_the_median_f0():
    def voice(f0: float) -> np.ndarray:
        wav = tone(f0, 1.5, tuple(1.0 / k for k in range(1, 12)))
        return wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * np.arange(len(wav)) / RATE))  # syllable-like swell

    assert A.estimate_gender(voice(105.0), RATE) == "male"
    assert A.estimate_gender(voice(195.0), RATE) == "female"
    assert A.estimate_gender(np.random.default_rng(0).standard_normal(RATE), RATE) is None


def test_silence_gives_no_estimates():
    assert A.estimate_attributes(np.zeros(RATE), RATE, ["event", "key", "tempo_bpm"]) == {
        "event": None, "key": None, "tempo_bpm": None}


# ============================================================================ prompts, accuracy, chance


def test_prompt_attributes_state_only_what_the_caption_says():
    beep = {"event": "beep", "count": 3, "pitch_hz": 700.0, "pitch": "mid", "length": "short", "beep_seconds": 0.12}
    assert A.prompt_attributes(beep) == {"event": "beep", "count": 3, "pitch": "mid", "length": "short"}
    older = {k: v for k, v in beep.items() if k != "pitch"}  # rows written before the pitch word was a label
    assert A.prompt_attributes(older)["pitch"] == "mid"
    assert A.prompt_attributes({"event": "clicks", "rate_hz": 4, "count": 15}) == {"event": "clicks", "rate_hz": 4}
    assert A.prompt_attributes({"event": "rain", "intensity": "light"}) == {"event": "rain"}
    music = {"key": "F#", "mode": "minor", "tempo_bpm": 80, "instrument": "saw", "drums": True, "notes": [66]}
    assert A.prompt_attributes(music) == {k: music[k] for k in ("key", "mode", "tempo_bpm", "instrument", "drums")}
    assert A.prompt_attributes({"gender": "male", "accent": "Scottish"}) == {"gender": "male"}
    assert A.prompt_attributes({"category": "dog", "target": 0, "fold": 1}) == {}  # ESC-50 labels
    assert A.prompt_attributes({**music, "key": "H", "drums": "yes"}) == {"mode": "minor", "tempo_bpm": 80,
                                                                           "instrument": "saw"}
    assert A.prompt_attributes(None) == {} and A.prompt_attributes(["a", "b"]) == {}


def test_accuracy_chance_and_tolerance_on_hand_examples():
    expected = [{"count": 1, "mode": "major"}, {"count": 2, "mode": "major"}, {"count": 4, "mode": "minor"},
                {"count": 4}]
    estimated = [{"count": 1, "mode": "minor"}, {"count": 3, "mode": "major"}, {"count": None, "mode": "minor"},
                 {"count": 5}]
    rows = {row["name"]: row for row in A.attribute_scores(expected, estimated)}
    assert list(rows) == ["count", "mode"]  # ATTRIBUTES order
    count = rows["count"]
    assert count["n"] == 4 and count["accuracy"] == 0.25 and count["accuracy_tolerant"] == 0.75
    assert count["no_estimate"] == 1 and count["tolerance"] == 1 and count["kind"] == "ordinal"
    # labels 1, 2, 4, 4: exact pairs 1 + 1 + 4 of 16; within ±1 also (1, 2) and (2, 1)
    assert count["chance"] == pytest.approx(6 / 16) and count["chance_tolerant"] == pytest.approx(8 / 16)
    assert count["majority"] == 0.5
    mode = rows["mode"]
    assert mode["n"] == 3 and mode["accuracy"] == pytest.approx(2 / 3) and "accuracy_tolerant" not in mode
    assert mode["chance"] == pytest.approx((4 + 1) / 9) and mode["majority"] == pytest.approx(2 / 3)
    assert A.matches("tempo_bpm", 110, 120, tolerant=True) and not A.matches("tempo_bpm", 110, 120)
    assert not A.matches("tempo_bpm", 60, 120, tolerant=True)
    assert A.chance_level("gender", ["male", "female"]) == 0.5 and math.isnan(A.chance_level("gender", []))
    # guessing with a population's frequencies: C is drawn half the time, A a quarter
    assert A.chance_level("key", ["A", "C"], ["A", "C", "C", "D"]) == pytest.approx((0.25 + 0.5) / 2)
    assert A.majority_level(["A", "C", "D"], ["A", "C", "C"]) == pytest.approx(1 / 3)
    rows = A.attribute_scores([{"mode": "minor"}], [{"mode": "minor"}], [{"mode": "major"}] * 3 + [{"mode": "minor"}])
    assert rows[0]["chance"] == 0.25 and rows[0]["majority"] == 0.0
    with pytest.raises(ValueError):
        A.attribute_scores(expected, estimated[:2])


# ============================================================================ lodit evaluate


class LevelEmbedder(Embedder):
    """Two numbers per 10 ms frame (log energy, zero-crossing rate): enough for FAD to run."""

    name = "levels"
    description = "frame levels (test)"
    sample_rate = RATE
    dim = 2

    def embed_frames(self, wav):
        frames = torch.as_tensor(wav).float().reshape(-1)[: len(wav) // 160 * 160].reshape(-1, 160)  # (T, 160)
        energy = torch.log(frames.pow(2).mean(1) + 1e-8)
        crossings = (frames[:, 1:] * frames[:, :-1] < 0).float().mean(1)
        return torch.stack([energy, crossings], 1)

    def identity(self):
        return "levels"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A small demo set and a samples folder made of its own clips, two music clips swapped."""
    root = tmp_path_factory.mktemp("adherence")
    manifest = make_demo_dataset(root / "ref", n_audio=6, n_music=4, n_speech=0, seconds=4.0, seed=3)
    rows = read_manifest(manifest)
    order = list(range(len(rows)))
    order[6], order[7] = 7, 6  # music_000 is generated from music_001's prompt and the other way round
    samples = root / "samples"
    samples.mkdir()
    entries = []
    for i, source in enumerate(order):
        shutil.copy(rows.audio_path(rows[source]), samples / f"{i:04d}.wav")
        entries.append({"file": f"{i:04d}.wav", "prompt": rows[i].caption, "transcript": "", "reference_audio": "",
                        "task": "ttm" if rows[i].domain == "music" else "tta", "seconds": 4.0, "nfe": 4,
                        "model_calls": 8})
    (samples / "samples.json").write_text(
        json.dumps({"settings": {"sampler": "euler"}, "rtf": 0.5, "samples": entries})
    )
    return {"manifest": manifest, "rows": rows, "order": order, "samples": samples}


@pytest.fixture()
def level_embedder(monkeypatch):
    monkeypatch.setattr(evaluate_module, "build_embedder", lambda config: LevelEmbedder())


def test_evaluate_reports_adherence_of_labelled_references(labelled, level_embedder, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--samples", str(labelled["samples"]), "--reference", str(labelled["manifest"]),
                 "--out", str(out), "--embedding-cache", str(tmp_path / "cache")]) == 0
    result = json.loads(out.read_text())
    section = result["adherence"]
    rows, order = labelled["rows"], labelled["order"]
    assert section["samples"] == section["matched"] == len(rows)
    scores = {row["name"]: row for row in section["attributes"]}
    assert set(scores) == {"event", "count", "pitch", "length", "color", "strength", "rate_hz", "direction",
                           "key", "mode", "tempo_bpm", "instrument", "drums"}
    for name, row in scores.items():
        # the estimators are exact on these clips, so accuracy is the agreement between each
        # prompt's labels and the labels of the clip that stands in for its sample
        pairs = [(A.prompt_attributes(rows[i].labels), A.prompt_attributes(rows[order[i]].labels))
                 for i in range(len(rows))]
        agree = [A.matches(name, got.get(name), want[name]) for want, got in pairs if name in want]
        assert row["n"] == len(agree) and row["accuracy"] == pytest.approx(np.mean(agree)), name
        assert row["reference_accuracy"] == 1.0 and not row["flagged"], name
        labels = [want[name] for want, _ in pairs if name in want]
        assert row["chance"] == pytest.approx(A.chance_level(name, labels)), name
    assert scores["event"]["n"] == 6 and scores["event"]["chance"] == pytest.approx(1 / 6)
    assert scores["instrument"]["accuracy"] == 0.5  # the swapped pair: sine and square
    assert scores["tempo_bpm"]["reference_n"] == 4
    assert [item["file"] for item in section["items"]] == [f"{i:04d}.wav" for i in range(len(rows))]
    printed = capsys.readouterr().out
    assert "adherence: 10 of 10 samples matched" in printed and "  instrument: 0.50 (n=4" in printed


def test_unlabelled_reference_gives_no_adherence_section(labelled, level_embedder, tmp_path):
    rows = read_manifest(labelled["manifest"])
    unlabelled = labelled["manifest"].parent / "unlabelled.jsonl"
    write_manifest(unlabelled, [{**row.to_dict(), "labels": None} for row in rows])
    result = evaluate_module.Evaluator(evaluate_module.EvaluationConfig()).evaluate(labelled["samples"], unlabelled)
    assert "adherence" not in result
    assert {m["name"] for m in result["metrics"]} >= {"fad", "rtf"}


def test_prompts_without_a_labelled_caption_are_reported_unmatched(labelled, tmp_path):
    samples = [(labelled["samples"] / "0000.wav", "a dog barking twice")]
    references = evaluate_module.read_reference(labelled["manifest"])
    section = A.adherence_section(samples, references)
    assert section["matched"] == 0 and section["attributes"] == [] and "no sample's prompt" in section["unavailable"]
    assert A.format_adherence(section) == [
        "adherence: 0 of 1 samples matched a labelled caption (no sample's prompt is the caption of a labelled "
        "reference clip)"]


# ============================================================================ the comparison report


def test_summary_over_seeds_and_report_table():
    def run(arm, seed, step, accuracy):
        return {"arm": arm, "seed": seed, "step": step, "adherence": {"attributes": [
            {"name": "count", "n": 4, "accuracy": accuracy, "chance": 0.25, "tolerance": 1,
             "accuracy_tolerant": accuracy + 0.25, "chance_tolerant": 0.5, "reference_accuracy": 1.0,
             "reference_accuracy_tolerant": 1.0, "reference_n": 6, "flagged": False},
            {"name": "mode", "n": 2, "accuracy": 0.5, "chance": 0.5, "reference_accuracy": 0.9, "reference_n": 6,
             "flagged": True}]}}

    runs = [run("a", 0, 10, 0.5), run("a", 1, 10, 0.75), run("b", 0, 10, 0.25), run("b", 1, 10, 0.25),
            {"arm": "c", "seed": 0, "step": 10, "metrics": []}]  # a run scored before adherence existed
    summary = A.adherence_summary(runs)
    cells = {(r["arm"], r["metric"]): r for r in summary["summary"]}
    assert cells[("a", "count")]["mean"] == pytest.approx(0.625) and cells[("a", "count")]["n_seeds"] == 2
    assert cells[("a", "count ±1")]["values"] == [0.75, 1.0]
    assert cells[("b", "count")]["ci_low"] == pytest.approx(0.25)  # equal seeds: a zero-width interval
    assert summary["attributes"]["count"] == {"chance": 0.25, "reference_accuracy": 1.0, "reference_n": 6,
                                              "flagged": False}
    assert summary["attributes"]["mode"]["flagged"] and summary["attributes"]["count ±1"]["chance"] == 0.5
    assert A.adherence_summary([{"arm": "a", "seed": 0, "step": 1}]) is None
    table = A.adherence_table({"arms": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "adherence": summary})
    assert table.headers == ["arm", "DiT step", "count", "count ±1", "mode"]
    assert [row[0] for row in table.rows] == ["a", "b", "clips judged", "chance", "estimator on reference clips"]
    assert table.rows[0][2].startswith("0.625 ± ")
    assert table.rows[2][2:] == ["4", "4", "2"]
    assert table.rows[3][2:] == ["0.25", "0.5", "0.5"]
    assert table.rows[4][4] == "0.9 (n=6) ⚠" and "⚠" not in table.rows[4][2]
    assert "| chance |" in table.markdown() and "<td>estimator on reference clips</td>" in table.html()
    assert A.adherence_table({"arms": []}) is None
    # the same numbers kept as the adherence manifest's section get their own table
    probes = A.adherence_summary([{**r, "adherence_probes": r.get("adherence")} for r in runs], "adherence_probes")
    assert probes == summary
    probe_table = A.adherence_table({"arms": [{"name": "a"}], "adherence_probes": probes}, "adherence_probes")
    assert probe_table.title == A.ADHERENCE_SECTIONS["adherence_probes"] != table.title
    assert A.adherence_table({"arms": [{"name": "a"}], "adherence": summary}, "adherence_probes") is None


def test_adherence_check_script_judges_clips_after_a_tokenizer_round_trip(tmp_path, capsys):
    """scripts/adherence_check.py: the estimators read the generated beeps right; through a randomly
    initialised tokenizer (which garbles them) they no longer do, and the table says so."""
    import importlib.util
    from pathlib import Path

    from lodit.config import load_config
    from lodit.latent_tokenizer.tokenizer import Tokenizer
    from lodit.latent_tokenizer.train import TokenizerTrainConfig

    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("adherence_check", repo / "scripts" / "adherence_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    config = load_config(TokenizerTrainConfig, repo / "configs" / "tokenizer" / "tiny.yaml").tokenizer
    folder = Tokenizer(config).save_pretrained(tmp_path / "tokenizer")
    args = ["--counts", "beeps=4", "--seeds", "0", "--seconds", "1"]
    assert script.main([*args, "--json", str(tmp_path / "plain.json")]) == 0
    plain = {row["name"]: row for row in json.loads((tmp_path / "plain.json").read_text())["attributes"]}
    assert set(plain) == {"event", "count", "pitch", "length"} and plain["event"]["n"] == 4
    assert all(row["accuracy"] == 1.0 for row in plain.values())
    assert script.main([*args, "--tokenizer", str(folder), "--json", str(tmp_path / "trip.json")]) == 0
    assert f"through the tokenizer {folder}" in capsys.readouterr().out
    trip = {row["name"]: row for row in json.loads((tmp_path / "trip.json").read_text())["attributes"]}
    assert trip["event"]["accuracy"] < 1.0
