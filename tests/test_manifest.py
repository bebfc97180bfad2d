"""Manifests: round trip, streaming, every kind of bad row under skip (reported) and fail (one line)."""

import json

import pytest

from lodit.data.manifest import (
    ManifestRow,
    iter_manifest,
    portable_audio_path,
    read_manifest,
    resolve_audio,
    write_manifest,
)
from lodit.errors import LoditError


def full_row(**changes):
    row = ManifestRow(
        audio="clips/a.wav",
        caption="a dog barks",
        transcript="hello there",
        domain="speech",
        speaker="spk1",
        duration=2.5,
        offset=0.5,
        labels={"count": 3, "tags": ["x"]},
        id="a",
    )
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def test_round_trip_and_resolution(tmp_path):
    rows = [full_row(), ManifestRow(audio="/abs/b.flac"), full_row(id="ü", caption="naïve café", labels=[1, 2])]
    path = tmp_path / "sub" / "manifest.jsonl"
    assert write_manifest(path, rows) == 3
    manifest = read_manifest(path)
    assert manifest.rows == rows
    assert manifest.line_numbers == [1, 2, 3]
    assert manifest.report.kept == 3 and manifest.report.n_dropped == 0
    assert manifest.audio_path(rows[0]) == tmp_path / "sub" / "clips" / "a.wav"
    assert str(resolve_audio(rows[1], tmp_path)) == "/abs/b.flac"
    # unset fields are left out of the file; dict rows are accepted and validated
    assert json.loads(path.read_text().splitlines()[1]) == {"audio": "/abs/b.flac"}
    write_manifest(path, [{"audio": "x.wav", "domain": "music"}])
    assert read_manifest(path).rows == [ManifestRow(audio="x.wav", domain="music")]


def test_streaming_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav"}\n\n   \n{"audio": "b.wav", "duration": 1}\n')
    stream = iter_manifest(path)
    assert next(stream) == (1, ManifestRow(audio="a.wav"))  # a generator: rows come one at a time
    assert next(stream) == (4, ManifestRow(audio="b.wav", duration=1.0))


BAD_ROWS = [
    ('{"audio": "a.wav", ', "invalid JSON"),
    ('["a.wav"]', "must be a JSON object"),
    ('{"caption": "no audio"}', "missing 'audio'"),
    ('{"audio": 5}', "'audio' must be a non-empty string"),
    ('{"audio": "a.wav", "duration": "long"}', "'duration' must be a number"),
    ('{"audio": "a.wav", "caption": 3}', "'caption' must be a string"),
    ('{"audio": "a.wav", "labels": "dog"}', "'labels' must be an object or a list"),
    ('{"audio": "a.wav", "durration": 2}', "unknown field 'durration'"),
    ('{"audio": "a.wav", "domain": "noise"}', "unknown domain 'noise'"),
    ('{"audio": "a.wav", "duration": -1.5}', "'duration' must be positive"),
    ('{"audio": "a.wav", "offset": -1}', "'offset' must not be negative"),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS)
def test_bad_row_skip_is_counted_and_fail_names_the_line(tmp_path, bad, reason):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"audio": "a.wav"}\n{"audio": "b.wav"}\n' + bad + '\n{"audio": "c.wav"}\n')
    manifest = read_manifest(path, on_error="skip")
    assert [row.audio for row in manifest] == ["a.wav", "b.wav", "c.wav"]
    assert manifest.line_numbers == [1, 2, 4]
    assert manifest.report.kept == 3 and manifest.report.n_dropped == 1
    dropped = manifest.report.dropped[0]
    assert dropped.where == "line 3" and reason in dropped.reason
    assert manifest.report.summary().startswith("kept 3 rows, dropped 1 (line 3: ")
    with pytest.raises(LoditError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path} line 3: ") and reason in message and "--on-error skip" in message


def test_bad_utf8_is_one_bad_row(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "a.wav"}\n{"audio": "\xff.wav"}\n')
    manifest = read_manifest(path, on_error="skip")
    assert len(manifest) == 1 and "UTF-8" in manifest.report.dropped[0].reason


def test_check_audio_rejects_missing_files(tmp_path):
    (tmp_path / "here.wav").write_bytes(b"")
    path = tmp_path / "m.jsonl"
    write_manifest(path, [ManifestRow(audio="here.wav"), ManifestRow(audio="gone.wav")])
    assert len(read_manifest(path)) == 2  # not checked unless asked
    manifest = read_manifest(path, on_error="skip", check_audio=True)
    assert [r.audio for r in manifest] == ["here.wav"]
    assert manifest.report.dropped[0].where == "line 2"
    assert "audio file not found" in manifest.report.dropped[0].reason
    with pytest.raises(LoditError, match=r"line 2: audio file not found: .*gone\.wav"):
        read_manifest(path, check_audio=True)


def test_skip_without_a_report_warns_for_each_row(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav"}\nnot json\n')
    with caplog.at_level("WARNING", logger="lodit.data.manifest"):
        rows = list(iter_manifest(path, on_error="skip"))
    assert len(rows) == 1 and "line 2 dropped: invalid JSON" in caplog.text


def test_summary_lists_a_few_reasons_and_counts_the_rest(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join("oops\n" for _ in range(8)) + '{"audio": "a.wav"}\n')
    report = read_manifest(path, on_error="skip").report
    summary = report.summary(max_reasons=2)
    assert summary.startswith("kept 1 row, dropped 8 (line 1: invalid JSON")
    assert summary.endswith("; and 6 more)")


def test_write_is_atomic(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [ManifestRow(audio="old.wav")])

    def rows_then_crash():
        yield ManifestRow(audio="new.wav")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_manifest(path, rows_then_crash())
    assert read_manifest(path).rows == [ManifestRow(audio="old.wav")]  # untouched
    with pytest.raises(LoditError, match="row 2 is invalid: unknown domain"):
        write_manifest(path, [ManifestRow(audio="x.wav"), ManifestRow(audio="y.wav", domain="noise")])
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temporary files left


def test_missing_manifest_and_bad_mode(tmp_path):
    with pytest.raises(LoditError, match="nothing.jsonl: manifest not found"):
        read_manifest(tmp_path / "nothing.jsonl")
    with pytest.raises(LoditError, match="on_error"):
        list(iter_manifest(tmp_path / "nothing.jsonl", on_error="ignore"))


def test_portable_audio_path(tmp_path):
    assert portable_audio_path(tmp_path / "data" / "x" / "a.wav", tmp_path / "data") == "x/a.wav"
    outside = portable_audio_path(tmp_path / "elsewhere" / "a.wav", tmp_path / "data")
    assert outside == str(tmp_path / "elsewhere" / "a.wav")
