"""The built-in demo dataset: deterministic bytes, captions that the audio bears out, espeak speech."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

from lodit.cli import main
from lodit.data.espeak import espeak_available
from lodit.data.manifest import read_manifest
from lodit.data.synthetic import (
    NOTE_NAMES,
    SPEECH_VOICES,
    make_demo_dataset,
    parse_counts,
    scale_pitch_classes,
    sound_beeps,
    sound_clicks,
    sound_noise_bursts,
)
from lodit.errors import LoditError

RATE = 16000
HAS_ESPEAK = espeak_available()


def count_events(wav, rate, frame_seconds=0.005, merge_seconds=0.06):
    """Number of separate loud stretches in the RMS envelope (gaps shorter than merge_seconds join)."""
    hop = int(frame_seconds * rate)
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    envelope = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(envelope > 0.2 * envelope.max())
    gaps = np.diff(loud) * frame_seconds
    return 1 + int(np.sum(gaps > merge_seconds)) if loud.size else 0


def peak_hz(wav, rate, low=0.0, high=None):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    freqs = np.fft.rfftfreq(len(wav), 1 / rate)
    band = (freqs >= low) & (freqs <= (high or rate / 2))
    return freqs[band][np.argmax(spectrum[band])]


def pitch_class(hz):
    return int(round(12 * np.log2(hz / 440.0) + 69)) % 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    manifest = make_demo_dataset(out, n_audio=6, n_music=8, n_speech=3 if HAS_ESPEAK else 0, seconds=4.0, seed=7)
    return read_manifest(manifest)


def test_same_seed_same_bytes_and_clips_independent_of_counts(tmp_path, demo):
    again = make_demo_dataset(tmp_path / "a", n_audio=6, n_music=8, n_speech=3 if HAS_ESPEAK else 0, seed=7)
    assert again.read_bytes() == demo.path.read_bytes()
    for row in demo:
        assert (again.parent / row.audio).read_bytes() == (demo.root / row.audio).read_bytes(), row.audio
    fewer = make_demo_dataset(tmp_path / "b", n_audio=2, n_music=1, n_speech=0, seed=7)
    assert (fewer.parent / "audio/music_000.wav").read_bytes() == (demo.root / "audio/music_000.wav").read_bytes()
    other = make_demo_dataset(tmp_path / "c", n_audio=2, n_music=1, n_speech=0, seed=8)
    assert (other.parent / "audio/sound_000.wav").read_bytes() != (demo.root / "audio/sound_000.wav").read_bytes()


def test_rows_are_complete(demo):
    domains = [row.domain for row in demo]
    assert domains == ["audio"] * 6 + ["music"] * 8 + ["speech"] * (3 if HAS_ESPEAK else 0)
    for row in demo:
        wav, rate = sf.read(str(demo.root / row.audio), dtype="float32")
        assert rate == RATE and row.duration == pytest.approx(len(wav) / RATE)
        assert row.caption and row.labels and row.id
        assert 0.5 < np.abs(wav).max() <= 0.71  # peak-normalised, never clipped
    assert {row.labels["event"] for row in demo if row.domain == "audio"} == {
        "beep",
        "noise_burst",
        "rain",
        "wind",
        "clicks",
        "sweep",
    }


@pytest.mark.parametrize("maker", [sound_beeps, sound_noise_bursts, sound_clicks])
def test_event_count_in_caption_is_heard(maker):
    words = {"a single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    for index in range(12):
        clip = maker(np.random.default_rng([3, index]), 4.0, RATE)
        assert count_events(clip.wav, RATE) == clip.labels["count"], clip.caption
        if maker is not sound_clicks:
            assert words[re.match(r"a single|\w+", clip.caption).group()] == clip.labels["count"]
        else:
            assert f"at {clip.labels['rate_hz']} click" in clip.caption
        if maker is sound_beeps:
            assert peak_hz(clip.wav, RATE) == pytest.approx(clip.labels["pitch_hz"], abs=4.0)
            assert clip.labels["length"] in clip.caption


def test_melody_is_in_the_stated_key_and_tempo(demo):
    music = [row for row in demo if row.domain == "music"]
    assert {row.labels["instrument"] for row in music} == {"sine", "square", "saw", "plucked"}
    for row in music:
        labels = row.labels
        caption = re.fullmatch(
            r"a (\w+) ([\w-]+) melody in ([A-G]#?) (major|minor) at (\d+) BPM( with a drum beat)?", row.caption
        )
        assert caption, row.caption
        assert caption.group(3, 4) == (labels["key"], labels["mode"])
        assert int(caption.group(5)) == labels["tempo_bpm"] and bool(caption.group(6)) == labels["drums"]
        scale = scale_pitch_classes(labels["key"], labels["mode"])
        assert {note % 12 for note in labels["notes"]} <= scale
        wav, _ = sf.read(str(demo.root / row.audio), dtype="float64")
        dominant = pitch_class(peak_hz(wav, RATE, low=200.0, high=1100.0))  # above the kick drum
        assert dominant in scale, (row.caption, NOTE_NAMES[dominant])
        # note count follows the tempo: between one per beat and two per beat over the clip
        beats = 4.0 * labels["tempo_bpm"] / 60
        assert beats - 1 <= len(labels["notes"]) <= 2 * beats + 1


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng (espeakng-loader) is not installed")
def test_speech_is_real_and_plausibly_long(demo):
    speech = [row for row in demo if row.domain == "speech"]
    voices = [voice for voice, _, _ in SPEECH_VOICES]
    assert [row.speaker for row in speech] == voices[:3]
    for row in speech:
        wav, _ = sf.read(str(demo.root / row.audio), dtype="float64")
        words = len(row.transcript.split())
        assert words >= 2 and row.transcript[0].isupper() and row.transcript.endswith(".")
        seconds_per_word = row.duration / words
        assert 0.15 < seconds_per_word < 0.8 and row.duration <= 4.0
        assert np.sqrt(np.mean(wav**2)) > 0.03  # not silence
        assert np.mean(np.abs(wav) > 0.01) > 0.3  # voiced most of the time, not a click
    from lodit.data.espeak import EspeakSynthesizer

    wav, rate = EspeakSynthesizer("en-us").synthesize("Hello world.")
    assert rate == 22050 and wav.dtype == np.float32 and 0.05 < np.abs(wav).max() <= 1.0
    with pytest.raises(LoditError, match="no voice 'xx-nowhere'"):
        EspeakSynthesizer("xx-nowhere").synthesize("Hello.")


def test_missing_espeak_skips_or_errors(tmp_path, monkeypatch, caplog):
    import lodit.data.espeak

    monkeypatch.setattr(lodit.data.espeak, "espeak_available", lambda: False)
    with caplog.at_level("WARNING", logger="lodit"):
        manifest = make_demo_dataset(tmp_path / "a", n_audio=1, n_music=0, n_speech=2, seconds=1.0)
    assert "no speech clips" in caplog.text
    assert [row.domain for row in read_manifest(manifest)] == ["audio"]
    with pytest.raises(LoditError, match="speech clips were requested"):
        make_demo_dataset(tmp_path / "b", n_audio=1, n_music=0, n_speech=2, require_speech=True)
    code = main(["make-dataset", "--out", str(tmp_path / "c"), "--counts", "audio=1,speech=1", "--seconds", "1"])
    assert code == 2


def test_cli(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["make-dataset", "--out", str(out), "--counts", "audio=2,music=1", "--seconds", "1.5", "--seed", "3"]) == 0
    )
    assert "with 3 clips" in capsys.readouterr().out
    rows = read_manifest(out / "manifest.jsonl").rows
    assert [row.domain for row in rows] == ["audio", "audio", "music"] and rows[0].duration == 1.5
    assert main(["make-dataset", "--out", str(out), "--counts", "noise=3"]) == 2
    assert "--counts 'noise=3'" in capsys.readouterr().err
    assert parse_counts("music=4, speech=0") == {"audio": 0, "music": 4, "speech": 0, "beeps": 0}


def test_beeps_group_adds_counted_beeps_to_the_audio_domain(tmp_path, demo):
    """``beeps=N``: N more audio clips, every one counted beeps with their labels; the other
    groups' clips are the bytes they are without it."""
    assert main(["make-dataset", "--out", str(tmp_path / "b"), "--counts", "audio=2,beeps=5", "--seconds", "2",
                 "--seed", "7"]) == 0
    rows = read_manifest(tmp_path / "b" / "manifest.jsonl").rows
    assert [row.domain for row in rows] == ["audio"] * 7
    beeps = rows[2:]
    assert [row.audio for row in beeps] == [f"audio/beep_{i:03d}.wav" for i in range(5)]
    assert all(row.labels["event"] == "beep" and "beep" in row.caption for row in beeps)
    assert len({(row.labels["count"], row.labels["pitch"]) for row in beeps}) > 1  # drawn, not one fixed clip
    plain = make_demo_dataset(tmp_path / "p", n_audio=2, n_music=0, n_speech=0, seconds=2.0, seed=7)
    for name in ("sound_000.wav", "sound_001.wav"):
        assert (tmp_path / "b" / "audio" / name).read_bytes() == (plain.parent / "audio" / name).read_bytes()
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["counts"]["beeps"] == 5
