"""Dataset builders on small fabricated layouts (one bad record each) and `lodit prepare` end to end."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from lodit.cli import main
from lodit.data.builders import LAYOUTS, build_rows
from lodit.data.manifest import read_manifest, resolve_audio
from lodit.data.prepare import prepare_manifest
from lodit.errors import LoditError

RATE = 8000


def write_wav(path, seconds=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * RATE), np.float32), RATE)
    return path


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def split(results):
    results = list(results)
    rows = {where: item for where, item in results if not isinstance(item, str)}
    errors = {where: item for where, item in results if isinstance(item, str)}
    return rows, errors


def test_registry_lists_every_layout():
    assert LAYOUTS.names() == ["audiocaps", "esc50", "folder", "libritts", "musiccaps", "wavcaps"]
    with pytest.raises(LoditError, match="unknown dataset layout 'kaggle'; choose one of: audiocaps"):
        build_rows("kaggle", ".")


def test_folder(tmp_path):
    write_wav(tmp_path / "a.wav", 0.5)
    (tmp_path / "a.txt").write_text("  a dog\nbarks \n")
    write_wav(tmp_path / "sub" / "b.flac", 0.25)
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"domain": "music", "labels": {"bpm": 90}, "caption": "x"}))
    (tmp_path / "sub" / "b.txt").write_text("overridden by the json")
    write_wav(tmp_path / "c.wav")
    (tmp_path / "c.json").write_text('{"loudness": 3}')  # the bad one: unknown field
    (tmp_path / "broken.ogg").write_bytes(b"not audio")  # unreadable: also reported
    (tmp_path / "notes.txt").write_text("not a sidecar")
    rows, errors = split(build_rows("folder", tmp_path, domain="audio"))
    assert sorted(rows) == ["a.wav", "sub/b.flac"]
    a, b = rows["a.wav"], rows["sub/b.flac"]
    assert (a.caption, a.domain, a.id, a.duration) == ("a dog barks", "audio", "a", 0.5)
    assert (b.caption, b.domain, b.labels, b.duration, b.id) == ("x", "music", {"bpm": 90}, 0.25, "sub/b")
    assert "unknown field 'loudness'" in errors["c.wav"]
    assert "broken.ogg" in errors["broken.ogg"] and "cannot read audio" in errors["broken.ogg"]
    rows, _ = split(build_rows("folder", tmp_path, text_field="transcript"))
    assert rows["a.wav"].transcript == "a dog barks" and rows["a.wav"].caption is None


def test_libritts(tmp_path):
    chapter = tmp_path / "train-clean-100" / "84" / "121123"
    for utt, text in [("84_121123_000007_000001", "Hello there."), ("84_121123_000008_000000", None)]:
        write_wav(chapter / f"{utt}.wav")
        if text:
            (chapter / f"{utt}.normalized.txt").write_text(text)
            (chapter / f"{utt}.original.txt").write_text("HELLO THERE")
    write_wav(chapter / "stray.wav")  # not named like a LibriTTS utterance
    other = tmp_path / "train-clean-100" / "19" / "198"
    write_wav(other / "19_198_000000_000000.wav")
    (other / "19_198_000000_000000.original.txt").write_text("Only the original.")
    rows, errors = split(build_rows("libritts", tmp_path))
    row = rows["train-clean-100/84/121123/84_121123_000007_000001.wav"]
    assert (row.transcript, row.speaker, row.domain, row.labels) == (
        "Hello there.",
        "84",
        "speech",
        {"chapter": "121123"},
    )
    assert rows["train-clean-100/19/198/19_198_000000_000000.wav"].transcript == "Only the original."
    assert "no transcript" in errors["train-clean-100/84/121123/84_121123_000008_000000.wav"]
    assert "not in the LibriTTS layout" in errors["train-clean-100/84/121123/stray.wav"]


def test_audiocaps(tmp_path):
    audio = tmp_path / "audio"
    write_wav(audio / "yt1.wav", 1.0)
    write_wav(audio / "200.wav", 1.0)  # found by the second default pattern
    csv_path = write_csv(
        tmp_path / "train.csv",
        ["audiocap_id", "youtube_id", "start_time", "caption"],
        [["100", "yt1", "30", "A dog barks"], ["200", "yt2", "0", "Rain falls"], ["300", "gone", "10", "Wind"]],
    )
    rows, errors = split(build_rows("audiocaps", csv_path, audio_dir=audio))
    assert rows["train.csv line 2"].caption == "A dog barks" and rows["train.csv line 2"].id == "100"
    assert rows["train.csv line 3"].audio.endswith("200.wav")
    assert errors == {"train.csv line 4": f"audio file not found: gone.wav or 300.wav in {audio}"}
    with pytest.raises(LoditError, match=r"pattern '\{ytid\}.wav' uses \{ytid\}, which is not a column"):
        list(build_rows("audiocaps", csv_path, audio_dir=audio, patterns=["{ytid}.wav"]))
    write_csv(tmp_path / "bad.csv", ["id", "caption"], [])
    with pytest.raises(LoditError, match="missing column.*audiocap_id, youtube_id, start_time"):
        list(build_rows("audiocaps", tmp_path / "bad.csv", audio_dir=audio))


def test_wavcaps(tmp_path):
    write_wav(tmp_path / "flac" / "Y7fm.wav.flac")
    write_wav(tmp_path / "flac" / "180913.flac")
    data = {
        "num_captions_per_audio": 1,
        "data": [
            {"id": "Y7fm.wav", "caption": "A man speaks.", "audio": "wav_path", "duration": 0.5},
            {"id": 180913, "caption": "Birds chirp.", "file_name": "birds.wav", "duration": 0.5},
            {"id": "555", "caption": "Nothing here.", "audio": "wav_path"},
            {"id": "180913", "caption": "  "},
        ],
    }
    json_path = tmp_path / "as_final.json"
    json_path.write_text(json.dumps(data))
    rows, errors = split(build_rows("wavcaps", json_path, audio_dir=tmp_path / "flac", patterns=["{id}.flac"]))
    assert rows["as_final.json entry 1"].caption == "A man speaks."
    assert rows["as_final.json entry 2"].id == "180913" and rows["as_final.json entry 2"].domain == "audio"
    assert errors["as_final.json entry 3"].startswith("audio file not found: 555.flac")
    assert errors["as_final.json entry 4"] == "empty caption"
    rows, errors = split(build_rows("wavcaps", json_path, audio_dir=tmp_path / "flac"))
    assert "wav_path" in errors["as_final.json entry 3"]  # default patterns try the 'audio' field first


def test_musiccaps(tmp_path):
    header = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id"]
    csv_path = write_csv(
        tmp_path / "musiccaps-public.csv",
        header,
        [
            ["-0Gj8", "1", "3", "/m/0140xf", "['low quality', 'guitar']", "A mellow guitar tune.", "4"],
            ["-0SdA", "30", "40", "/m/0140xf", "['pop']", "An upbeat pop song.", "0"],
            ["-0vPF", "0", "10", "", "['x']", "Missing audio.", "1"],
        ],
    )
    write_wav(tmp_path / "-0Gj8.wav", 5.0)
    write_wav(tmp_path / "-0SdA.wav", 10.0)
    rows, errors = split(build_rows("musiccaps", csv_path, full_track=True))
    row = rows["musiccaps-public.csv line 2"]
    assert (row.offset, row.duration, row.domain) == (1.0, 2.0, "music")
    assert row.labels == {"ytid": "-0Gj8", "start_s": 1.0, "end_s": 3.0, "aspect_list": ["low quality", "guitar"]}
    assert "starts after the end of -0SdA.wav" in errors["musiccaps-public.csv line 3"]
    assert "audio file not found: -0vPF.wav" in errors["musiccaps-public.csv line 4"]
    rows, errors = split(build_rows("musiccaps", csv_path))  # files are the clips themselves
    assert rows["musiccaps-public.csv line 3"].offset == 0.0 and rows["musiccaps-public.csv line 3"].duration == 10.0


def test_esc50(tmp_path):
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        header,
        [
            ["1-100032-A-0.wav", "1", "0", "dog", "True", "100032", "A"],
            ["1-100038-A-14.wav", "1", "14", "chirping_birds", "False", "100038", "A"],
            ["2-999-A-1.wav", "two", "1", "rooster", "False", "999", "A"],
        ],
    )
    for name in ("1-100032-A-0.wav", "1-100038-A-14.wav", "2-999-A-1.wav"):
        write_wav(tmp_path / "audio" / name)
    rows, errors = split(build_rows("esc50", tmp_path))
    birds = rows["esc50.csv line 3"]
    assert birds.caption == "chirping birds" and birds.domain == "audio" and birds.id == "1-100038-A-14"
    assert birds.labels == {"category": "chirping_birds", "target": 14, "fold": 1}
    assert errors == {"esc50.csv line 4": "fold must be a number, got 'two'"}
    with pytest.raises(LoditError, match="no meta/esc50.csv"):
        list(build_rows("esc50", tmp_path / "audio"))


def make_folder_dataset(root):
    write_wav(root / "clips" / "a.wav")
    (root / "clips" / "a.txt").write_text("a beep")
    write_wav(root / "clips" / "b.wav")
    (root / "clips" / "b.json").write_text('{"domain": "space"}')  # bad row


def test_prepare_relative_paths_and_options(tmp_path):
    make_folder_dataset(tmp_path)
    report = prepare_manifest("folder", tmp_path / "clips", tmp_path / "manifest.jsonl", on_error="skip")
    assert report.kept == 1 and report.dropped[0].where == "b.wav"
    manifest = read_manifest(tmp_path / "manifest.jsonl")
    assert manifest.rows[0].audio == "clips/a.wav"  # inside the manifest's folder: relative
    assert resolve_audio(manifest.rows[0], manifest.root).is_file()
    prepare_manifest("folder", tmp_path / "clips", tmp_path / "elsewhere" / "m.jsonl", on_error="skip")
    assert read_manifest(tmp_path / "elsewhere" / "m.jsonl").rows[0].audio == str(tmp_path / "clips" / "a.wav")
    with pytest.raises(LoditError, match="--full-track does not apply to the folder layout"):
        prepare_manifest("folder", tmp_path / "clips", tmp_path / "x.jsonl", full_track=True)


def test_cli_end_to_end(tmp_path, capsys):
    make_folder_dataset(tmp_path)
    out = tmp_path / "manifest.jsonl"
    code = main(
        ["prepare", "folder", str(tmp_path / "clips"), "--out", str(out), "--on-error", "skip", "--domain", "audio"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "kept 1 row, dropped 1 (b.wav: unknown domain 'space'" in printed
    assert read_manifest(out).rows[0].domain == "audio"

    # --on-error fail (the default): one line, non-zero exit, the earlier manifest untouched
    before = out.read_bytes()
    code = main(["prepare", "folder", str(tmp_path / "clips"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("lodit prepare: error: b.wav: unknown domain 'space'") and "--on-error skip" in err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["clips", "manifest.jsonl"]

    # nothing usable: an error, and no manifest is written
    empty_out = tmp_path / "none.jsonl"
    code = main(["prepare", "libritts", str(tmp_path / "clips"), "--out", str(empty_out), "--on-error", "skip"])
    assert code == 2 and "no usable libritts rows" in capsys.readouterr().err
    assert not empty_out.exists()

    code = main(["prepare", "esc50", str(tmp_path / "clips"), "--out", str(empty_out), "--text-field", "caption"])
    assert code == 2 and "--text-field does not apply to the esc50 layout" in capsys.readouterr().err
