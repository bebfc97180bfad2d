"""Property tests: whatever a user feeds the manifest reader, the override parser or the audio
loader, the answer is a result or a :class:`~lodit.errors.LoditError`, never another exception."""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lodit.config import apply_overrides, from_dict
from lodit.data.audio import load_audio
from lodit.data.manifest import ManifestRow, iter_manifest
from lodit.errors import LoditError
from lodit.training.config import TrainingConfig

# allow_subnormal=False everywhere: the lodit command flushes denormals process-wide (lodit/cli.py), and with
# flush-to-zero on hypothesis refuses to draw subnormal floats; they say nothing about these parsers.
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_subnormal=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
row_like = st.dictionaries(
    st.sampled_from(["audio", "caption", "transcript", "domain", "speaker", "duration", "offset", "labels", "id",
                     "other"]),
    json_values | st.sampled_from(["speech", "music", "audio", "a.wav", ""]) | st.floats(allow_subnormal=False),
    max_size=6,
)
lines = st.one_of(
    row_like.map(lambda row: json.dumps(row).encode()),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@SETTINGS
@given(st.lists(lines, max_size=6), st.sampled_from(["fail", "skip"]), st.booleans())
def test_manifest_reader_gives_rows_or_a_lodit_error(raw_lines, on_error, bom):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        body = b"\n".join(line.replace(b"\n", b" ") for line in raw_lines)
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
        try:
            rows = list(iter_manifest(path, on_error=on_error))
        except LoditError:
            assert on_error == "fail"
            return
        for number, row in rows:
            assert isinstance(row, ManifestRow) and number >= 1
            assert ManifestRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row  # rows round-trip
            assert row.duration is None or (math.isfinite(row.duration) and row.duration > 0)


override_keys = st.sampled_from(["max_steps", "lr", "betas", "mixed_precision", "compile", "module_lr",
                                 "module_lr.model", "max_steps.x", "", ".", "nope", "ema_decay", "batch_size"])
override_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["no", "yes", "off", "1e-4", "[0.9, 0.99]", "{a: 1}", "-1", "nan", "inf", "[", "{", "~", "1e999"]),
)


@SETTINGS
@given(st.lists(st.one_of(st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                          st.text(max_size=15)), max_size=4))
def test_override_parser_gives_a_config_or_a_lodit_error(overrides):
    try:
        config = from_dict(TrainingConfig, apply_overrides({}, overrides), source="<test>")
    except LoditError:
        return
    assert isinstance(config, TrainingConfig) and config.batch_size >= 1 and config.max_steps >= 1


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(st.floats(width=32, allow_subnormal=False), min_size=0, max_size=64).map(
            lambda samples: ("float", samples)
        ),
        st.lists(st.integers(-32768, 32767), min_size=0, max_size=64).map(lambda samples: ("pcm", samples)),
    ),
    st.sampled_from([None, 8000, 16000]),
    st.floats(0, 2, allow_subnormal=False),
    st.one_of(st.none(), st.floats(0.001, 2)),
)
def test_audio_loader_gives_finite_audio_or_a_lodit_error(content, rate, offset, duration):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.wav"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            kind, samples = content
            buffer = io.BytesIO()
            data = np.asarray(samples, np.float32 if kind == "float" else np.int16)
            sf.write(buffer, data, 8000, format="WAV", subtype="FLOAT" if kind == "float" else "PCM_16")
            path.write_bytes(buffer.getvalue())
        try:
            wav = load_audio(path, rate, offset=offset, duration=duration)
        except LoditError:
            return
        assert wav.ndim == 2 and wav.shape[0] == 1 and bool(np.isfinite(wav.numpy()).all())
