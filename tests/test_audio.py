"""Audio I/O: format round trips, resampling fidelity, channel policies, partial reads, errors, loudness."""

import numpy as np
import pytest
import soundfile as sf
import torch

from lodit.data.audio import audio_info, load_audio, normalize_loudness, normalize_peak, resample, save_audio
from lodit.errors import LoditError


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wav, rate):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.argmax(spectrum) * rate / len(wav)


def rms(wav):
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))


@pytest.mark.parametrize("suffix, tolerance", [(".wav", 1e-4), (".flac", 1e-4), (".ogg", None), (".mp3", None)])
def test_round_trip(tmp_path, suffix, tolerance):
    if suffix == ".mp3" and "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write mp3")
    rate = 16000
    wav = sine(440.0, 1.0, rate)
    path = save_audio(tmp_path / f"tone{suffix}", torch.from_numpy(wav), rate)
    assert path.is_file() and not list(tmp_path.glob(".*"))  # the temporary file is gone
    assert audio_info(path)[0] == rate
    back = load_audio(path)
    assert back.dtype == torch.float32 and back.shape[0] == 1
    if tolerance is not None:  # lossless
        assert back.shape == (1, len(wav))
        assert torch.allclose(back[0], torch.from_numpy(wav), atol=tolerance)
    else:  # lossy: same length (within a frame), same tone, same level
        assert abs(back.shape[1] - len(wav)) <= 1152
        assert peak_hz(back[0].numpy(), rate) == pytest.approx(440.0, abs=2.0)
        assert rms(back[0].numpy()) == pytest.approx(rms(wav), rel=0.05)


def test_resample_keeps_frequency_and_level(tmp_path):
    wav = sine(440.0, 2.0, 48000)
    save_audio(tmp_path / "a.wav", wav, 48000)
    loaded = load_audio(tmp_path / "a.wav", sample_rate=16000)[0].numpy()
    assert len(loaded) == 32000
    core = loaded[1600:-1600]  # away from the filter's edge transients
    assert peak_hz(core, 16000) == pytest.approx(440.0, rel=0.01)
    assert rms(core) == pytest.approx(rms(wav), rel=0.01)
    # the tensor form keeps leading dimensions
    batch = resample(torch.from_numpy(np.stack([wav, wav]))[:, None], 48000, 16000)  # (2, 1, S)
    assert batch.shape == (2, 1, 32000)
    assert torch.allclose(batch[0, 0], torch.from_numpy(loaded), atol=1e-4)


def test_channel_policies(tmp_path):
    left, right = sine(300.0, 0.5, 16000), sine(700.0, 0.5, 16000, amplitude=0.25)
    save_audio(tmp_path / "stereo.wav", np.stack([left, right]), 16000)
    mixed = load_audio(tmp_path / "stereo.wav")
    assert mixed.shape == (1, 8000)
    assert np.allclose(mixed[0].numpy(), (left + right) / 2, atol=1e-4)
    assert np.allclose(load_audio(tmp_path / "stereo.wav", channels="first")[0].numpy(), left, atol=1e-4)
    assert load_audio(tmp_path / "stereo.wav", channels="keep").shape == (2, 8000)
    with pytest.raises(LoditError, match="channel policy"):
        load_audio(tmp_path / "stereo.wav", channels="left")


def test_offset_and_duration_read_the_right_samples(tmp_path):
    rate = 8000
    ramp = (np.arange(rate * 2) / (rate * 2)).astype(np.float32) * 0.9  # value encodes the position
    save_audio(tmp_path / "ramp.flac", ramp, rate)
    part = load_audio(tmp_path / "ramp.flac", offset=0.5, duration=0.25)[0].numpy()
    assert len(part) == 2000
    assert np.allclose(part, ramp[4000:6000], atol=1e-4)
    tail = load_audio(tmp_path / "ramp.flac", offset=1.5)[0].numpy()
    assert len(tail) == 4000 and tail[0] == pytest.approx(ramp[12000], abs=1e-4)
    assert load_audio(tmp_path / "ramp.flac", offset=5.0).shape == (1, 0)  # past the end: nothing


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"this is not audio at all" * 10)
    for call in (load_audio, audio_info):
        with pytest.raises(LoditError, match="broken.wav"):
            call(broken)
        with pytest.raises(LoditError, match="missing.wav.*not found"):
            call(tmp_path / "missing.wav")


def test_normalisation():
    pyloudnorm = pytest.importorskip("pyloudnorm", reason="loudness normalisation needs pyloudnorm (lodit[eval])")
    rate = 16000
    rng = np.random.default_rng(0)
    wav = torch.from_numpy(sine(500.0, 3.0, rate, 0.05) + 0.01 * rng.standard_normal(3 * rate).astype(np.float32))
    out = normalize_loudness(wav[None], rate, target_lufs=-20.0)
    measured = pyloudnorm.Meter(rate).integrated_loudness(out[0].numpy())
    assert measured == pytest.approx(-20.0, abs=0.5)
    short = torch.zeros(1, 100)
    assert normalize_loudness(short, rate) is short  # too short to measure: unchanged
    assert normalize_peak(wav, 0.5).abs().max().item() == pytest.approx(0.5)


def test_unwritable_format_is_a_user_error(tmp_path):
    with pytest.raises(LoditError, match=r"clip\.m4a: cannot write audio"):
        save_audio(tmp_path / "clip.m4a", np.zeros(160, np.float32), 16000)
    assert not list(tmp_path.iterdir())  # no temporary file left behind
