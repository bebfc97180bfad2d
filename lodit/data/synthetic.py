"""The built-in demo dataset, generated at run time (no downloads) and deterministic for a seed.

Three kinds of captioned clips, each caption built from the parameters that generated the clip
(kept in the row's ``labels``), so text adherence can be measured by estimating those parameters
back from audio:

- ``audio``: sound events and textures: beeps (count, pitch, length), noise bursts, rain, wind,
  clicks at a rate, tone sweeps;
- ``music``: a melody in a key and mode at a tempo with an instrument timbre (sine, square,
  sawtooth, Karplus-Strong plucked string), optionally over a drum beat;
- ``speech``: sentences from built-in templates spoken by espeak-ng (:mod:`lodit.data.espeak`)
  in several voices, with exact transcripts; skipped with a warning when espeak-ng is missing;
- ``beeps``: extra ``audio`` clips that are all counted beeps. The cycle of sound kinds makes only
  one clip in six a beep, and the beeps carry the most caption attributes (count, pitch, length):
  a set meant to teach or to judge them needs more of them than the cycle gives.

Every clip draws from its own random generator seeded by ``(seed, group, index)``, so a clip
does not change when the other counts do. Also the ``lodit make-dataset`` command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from lodit.data.audio import resample_np, save_audio
from lodit.data.manifest import ManifestRow, write_manifest
from lodit.errors import LoditError
from lodit.files import write_json

log = logging.getLogger(__name__)

# The groups of generated clips: each has its own random streams and file names; ``beeps`` are
# ``audio`` clips in the manifest.
GROUP_CODES = {"audio": 0, "music": 1, "speech": 2, "beeps": 3}
FILE_PREFIX = {"audio": "sound", "music": "music", "speech": "speech", "beeps": "beep"}
MANIFEST_DOMAIN = {"audio": "audio", "music": "music", "speech": "speech", "beeps": "audio"}
DEFAULT_COUNTS = {"audio": 12, "music": 12, "speech": 8, "beeps": 0}
PEAK_LEVEL = 0.7

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
# Caption words of the sound events and the parameter ranges behind them (lodit.eval.adherence reads these back).
BEEP_PITCHES = (("low", (250, 450)), ("mid", (600, 900)), ("high", (1400, 2200)))  # word, (low Hz, high Hz)
BEEP_LENGTHS = (("short", 0.12), ("long", 0.35))  # word, seconds
CLICK_RATES_HZ = (1, 2, 3, 4, 6, 8)


@dataclass
class Clip:
    """One generated clip: mono float32 samples and what the manifest says about them."""

    wav: np.ndarray  # (S,)
    caption: str
    labels: dict[str, Any]
    transcript: str | None = None
    speaker: str | None = None


# =========================================================================== sound events


def _fade(n: int, sample_rate: int, fade_seconds: float = 0.005) -> np.ndarray:
    """A raised-cosine on/off envelope of ``n`` samples (no clicks at the edges)."""
    env = np.ones(n, np.float64)
    k = min(int(fade_seconds * sample_rate), n // 2)
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        env[:k], env[n - k :] = ramp, ramp[::-1]
    return env


def _even_onsets(rng: np.random.Generator, count: int, seconds: float, event_seconds: float) -> np.ndarray:
    """``count`` onset times spread evenly over the clip with a little jitter."""
    margin = 0.2
    spacing = (seconds - 2 * margin) / count
    jitter = rng.uniform(-0.15, 0.15, count) * max(spacing - event_seconds - 0.1, 0.0)
    return margin + spacing * np.arange(count) + (spacing - event_seconds) / 2 + jitter


def _max_count(seconds: float, event_seconds: float, min_gap: float = 0.15, limit: int = 6) -> int:
    return int(max(1, min(limit, (seconds - 0.4) // (event_seconds + min_gap))))


def _counted(count: int, singular: str, plural: str) -> str:
    return f"a single {singular}" if count == 1 else f"{NUMBER_WORDS[count]} {plural}"


def sound_beeps(rng: np.random.Generator, seconds: float, sample_rate: int) -> Clip:
    pitch_name, (low, high) = BEEP_PITCHES[rng.integers(3)]
    length_name, beep_seconds = BEEP_LENGTHS[rng.integers(2)]
    count = int(rng.integers(1, _max_count(seconds, beep_seconds) + 1))
    pitch_hz = float(np.round(rng.uniform(low, high), 1))
    wav = np.zeros(int(seconds * sample_rate))
    n = int(beep_seconds * sample_rate)
    tone = np.sin(2 * np.pi * pitch_hz * np.arange(n) / sample_rate) * _fade(n, sample_rate)
    for onset in _even_onsets(rng, count, seconds, beep_seconds):
        start = int(onset * sample_rate)
        wav[start : start + n] += tone[: len(wav) - start]
    caption = _counted(count, f"{length_name} {pitch_name} beep", f"{length_name} {pitch_name} beeps")
    labels = {
        "event": "beep",
        "count": count,
        "pitch_hz": pitch_hz,
        "pitch": pitch_name,
        "length": length_name,
        "beep_seconds": beep_seconds,
    }
    return Clip(wav, caption, labels)


def sound_noise_bursts(rng: np.random.Generator, seconds: float, sample_rate: int) -> Clip:
    color = ["bright", "dull"][rng.integers(2)]
    burst_seconds = 0.2
    count = int(rng.integers(1, _max_count(seconds, burst_seconds, min_gap=0.25) + 1))
    btype, cutoff = ("highpass", 2000.0) if color == "bright" else ("lowpass", 800.0)
    sos = signal.butter(4, cutoff, btype=btype, fs=sample_rate, output="sos")
    wav = np.zeros(int(seconds * sample_rate))
    n = int(burst_seconds * sample_rate)
    decay = np.exp(-np.arange(n) / (0.06 * sample_rate)) * _fade(n, sample_rate, 0.002)
    for onset in _even_onsets(rng, count, seconds, burst_seconds):
        start = int(onset * sample_rate)
        burst = signal.sosfilt(sos, rng.standard_normal(n)) * decay
        wav[start : start + n] += burst[: len(wav) - start]
    caption = _counted(count, f"{color} burst of noise", f"{color} bursts of noise")
    return Clip(wav, caption, {"event": "noise_burst", "count": count, "color": color})


def sound_rain(rng: np.random.Generator, seconds: float, sample_rate: int) -> Clip:
    intensity = ["light", "heavy"][rng.integers(2)]
    drops_per_second = int(rng.integers(10, 25) if intensity == "light" else rng.integers(60, 120))
    n = int(seconds * sample_rate)
    hiss = signal.sosfilt(signal.butter(2, 1000.0, "highpass", fs=sample_rate, output="sos"), rng.standard_normal(n))
    hiss *= 0.15 if intensity == "light" else 0.5
    drops = np.zeros(n)
    positions = rng.integers(0, n, int(drops_per_second * seconds))
    drops[positions] = rng.uniform(0.3, 1.0, len(positions))
    drop_shape = np.exp(-np.arange(int(0.004 * sample_rate)) / (0.001 * sample_rate))
    drops = np.convolve(drops, drop_shape)[:n]
    drops = signal.sosfilt(signal.butter(2, 2500.0, "highpass", fs=sample_rate, output="sos"), drops)
    caption = {"light": "light rain pattering", "heavy": "heavy rain pouring down"}[intensity]
    labels = {"event": "rain", "intensity": intensity, "drops_per_second": drops_per_second}
    return Clip((hiss + drops) * _fade(n, sample_rate, 0.05), caption, labels)


def sound_wind(rng: np.random.Generator, seconds: float, sample_rate: int) -> Clip:
    strength = ["gentle", "strong"][rng.integers(2)]
    gust_hz = float(np.round(rng.uniform(0.2, 0.8), 2))
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    cutoff = 400.0 if strength == "gentle" else 900.0
    rumble = signal.sosfilt(signal.butter(2, cutoff, "lowpass", fs=sample_rate, output="sos"), rng.standard_normal(n))
    depth = 0.3 if strength == "gentle" else 0.8
    gusts = 1.0 + depth * np.sin(2 * np.pi * gust_hz * t + rng.uniform(0, 2 * np.pi))
    caption = {"gentle": "a gentle breeze blowing", "strong": "strong gusty wind howling"}[strength]
    labels = {"event": "wind", "strength": strength, "gust_hz": gust_hz}
    return Clip(rumble * gusts * _fade(n, sample_rate, 0.1), caption, labels)


def sound_clicks(rng: np.random.Generator, seconds: float, sample_rate: int) -> Clip:
    rate_hz = int(rng.choice(CLICK_RATES_HZ))
    n = int(seconds * sample_rate)
    click_n = int(0.01 * sample_rate)
    click = rng.standard_normal(click_n) * np.exp(-np.arange(click_n) / (0.0015 * sample_rate))
    onsets = np.arange(0.25, seconds - 0.05, 1.0 / rate_hz)
    wav = np.zeros(n)
    for onset in onsets:
        start = int(onset * sample_rate)
        wav[start : start + click_n] += click[: n - start]
    word = "slow" if rate_hz <= 2 else "steady" if rate_hz <= 4 else "fast"
    caption = f"{word} ticking at {rate_hz} click{'s' if rate_hz > 1 else ''} per second"
    return Clip(wav, caption, {"event": "clicks", "rate_hz": rate_hz, "count": len(onsets)})


def sound_sweep(rng: np.random.Generator, seconds: float, sample_rate: int) -> Clip:
    direction = ["rising", "falling"][rng.integers(2)]
    low, high = float(np.round(rng.uniform(300, 600))), float(np.round(rng.uniform(1200, 2400)))
    start_hz, end_hz = (low, high) if direction == "rising" else (high, low)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    wav = signal.chirp(t, f0=start_hz, t1=t[-1], f1=end_hz, method="logarithmic") * _fade(n, sample_rate, 0.05)
    labels = {"event": "sweep", "direction": direction, "start_hz": start_hz, "end_hz": end_hz}
    return Clip(wav, f"a {direction} tone sweep like a siren", labels)


SOUND_KINDS: tuple[Callable[[np.random.Generator, float, int], Clip], ...] = (
    sound_beeps,
    sound_noise_bursts,
    sound_rain,
    sound_wind,
    sound_clicks,
    sound_sweep,
)


def make_sound_clip(rng: np.random.Generator, index: int, seconds: float, sample_rate: int) -> Clip:
    """Clip ``index`` cycles through the kinds so every kind appears in a small set."""
    return SOUND_KINDS[index % len(SOUND_KINDS)](rng, seconds, sample_rate)


def make_beep_clip(rng: np.random.Generator, index: int, seconds: float, sample_rate: int) -> Clip:
    """Counted beeps whatever ``index``: the ``beeps`` group."""
    return sound_beeps(rng, seconds, sample_rate)


# =========================================================================== music

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALE_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
INSTRUMENT_WORDS = {"sine": "sine-wave", "square": "square-wave", "saw": "sawtooth", "plucked": "plucked"}
TEMPOS_BPM = (60, 70, 80, 90, 100, 110, 120, 130, 140)


def scale_pitch_classes(key: str, mode: str) -> set[int]:
    """Pitch classes (0 = C) of ``key`` ``mode``, e.g. ``("A", "minor")``."""
    tonic = NOTE_NAMES.index(key)
    return {(tonic + step) % 12 for step in SCALE_STEPS[mode]}


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def tempo_word(tempo_bpm: int) -> str:
    return "slow" if tempo_bpm < 90 else "moderate" if tempo_bpm < 120 else "fast"


def _additive(freq: float, n: int, sample_rate: int, harmonic_gain: Callable[[int], float]) -> np.ndarray:
    """Band-limited tone: harmonics up to Nyquist, so square and saw waves don't alias."""
    t = np.arange(n) / sample_rate
    out = np.zeros(n)
    for k in range(1, int(sample_rate / 2 / freq) + 1):
        gain = harmonic_gain(k)
        if gain:
            out += gain * np.sin(2 * np.pi * k * freq * t)
    return out


def _plucked(freq: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong string: a noise burst through a delay loop with a two-point average.

    The loop delay ``sample_rate / freq`` is split into N whole samples, the averager's half
    sample and a first-order all-pass for the fraction, which keeps the pitch in tune. The loop
    ``y = x + g * A(z) * avg(z) * z^-N * y`` is one rational filter, so ``lfilter`` runs it.
    """
    period = sample_rate / freq
    whole = int(period - 0.5 - 0.1)  # leaves an all-pass delay in [0.1, 1.1): a well-behaved range
    frac = period - 0.5 - whole
    c = (1.0 - frac) / (1.0 + frac)  # all-pass coefficient for that delay at low frequencies
    loss = 0.996
    b = np.array([1.0, c])
    a = np.zeros(whole + 3)
    a[0], a[1] = 1.0, c
    a[whole] -= 0.5 * loss * c
    a[whole + 1] -= 0.5 * loss * (c + 1.0)
    a[whole + 2] -= 0.5 * loss
    excitation = np.zeros(n)
    burst = rng.uniform(-1.0, 1.0, min(whole + 1, n))
    excitation[: len(burst)] = burst - burst.mean()
    return signal.lfilter(b, a, excitation)


def _note(instrument: str, freq: float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    if instrument == "plucked":
        return _plucked(freq, n, sample_rate, rng) * _fade(n, sample_rate, 0.01)
    gains = {
        "sine": lambda k: 1.0 if k == 1 else 0.0,
        "square": lambda k: 1.0 / k if k % 2 else 0.0,
        "saw": lambda k: 1.0 / k,
    }[instrument]
    tone = _additive(freq, n, sample_rate, gains)
    # attack 10 ms to full level, 50 ms decay to a 0.8 sustain, 60 ms release (each cut to the note)
    env = np.full(n, 0.8)
    attack_end = min(int(0.01 * sample_rate), n)
    decay_end = min(attack_end + int(0.05 * sample_rate), n)
    release = min(int(0.06 * sample_rate), n)
    env[:attack_end] = np.linspace(0.0, 1.0, attack_end)
    env[attack_end:decay_end] = np.linspace(1.0, 0.8, decay_end - attack_end)
    env[n - release :] *= np.linspace(1.0, 0.0, release)
    return tone * env


def _drums(rng: np.random.Generator, n: int, sample_rate: int, beat_seconds: float) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, closed hi-hat on every half beat."""
    out = np.zeros(n)
    kick_n, snare_n, hat_n = int(0.2 * sample_rate), int(0.15 * sample_rate), int(0.04 * sample_rate)
    t = np.arange(kick_n) / sample_rate
    kick = np.sin(2 * np.pi * (50 * t + 70 * 0.04 * (1 - np.exp(-t / 0.04)))) * np.exp(-t / 0.07)
    hat_filter = signal.butter(2, min(5000.0, 0.4 * sample_rate), "highpass", fs=sample_rate, output="sos")
    snare_filter = signal.butter(2, [300.0, min(4000.0, 0.4 * sample_rate)], "bandpass", fs=sample_rate, output="sos")
    hat_env = np.exp(-np.arange(hat_n) / (0.01 * sample_rate))
    snare_env = np.exp(-np.arange(snare_n) / (0.04 * sample_rate))
    step = 0
    while (onset := step * beat_seconds / 2) < n / sample_rate:
        start = int(onset * sample_rate)
        parts = [0.25 * signal.sosfilt(hat_filter, rng.standard_normal(hat_n)) * hat_env]
        if step % 2 == 0:  # on the beat
            if (step // 2) % 2 == 0:
                parts.append(0.9 * kick)
            else:
                parts.append(0.5 * signal.sosfilt(snare_filter, rng.standard_normal(snare_n)) * snare_env)
        for part in parts:
            end = min(start + len(part), n)
            out[start:end] += part[: end - start]
        step += 1
    return out


def make_music_clip(rng: np.random.Generator, index: int, seconds: float, sample_rate: int) -> Clip:
    key = NOTE_NAMES[rng.integers(12)]
    mode = ["major", "minor"][rng.integers(2)]
    tempo_bpm = int(rng.choice(TEMPOS_BPM))
    instrument = list(INSTRUMENT_WORDS)[index % len(INSTRUMENT_WORDS)]
    drums = bool(rng.random() < 0.5)
    tonic_midi = 57 + (NOTE_NAMES.index(key) - 9) % 12  # A3..G#4
    steps = SCALE_STEPS[mode]
    beat_seconds = 60.0 / tempo_bpm
    n = int(seconds * sample_rate)
    melody = np.zeros(n)
    notes: list[int] = []
    degree, time = 0, 0.0
    while time < seconds - 0.05:
        length = beat_seconds * (1.0 if rng.random() < 0.6 else 0.5)
        midi = tonic_midi + 12 * (degree // 7) + steps[degree % 7]
        start, stop = int(time * sample_rate), min(int((time + length) * sample_rate), n)
        melody[start:stop] += _note(instrument, midi_to_hz(midi), stop - start, sample_rate, rng)
        notes.append(int(midi))
        time += length
        degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), -2, 9))
    wav = melody / max(np.abs(melody).max(), 1e-9)
    if drums:
        wav = wav + 0.6 * _drums(rng, n, sample_rate, beat_seconds)
    caption = f"a {tempo_word(tempo_bpm)} {INSTRUMENT_WORDS[instrument]} melody in {key} {mode} at {tempo_bpm} BPM"
    caption += " with a drum beat" if drums else ""
    labels = {
        "key": key,
        "mode": mode,
        "tempo_bpm": tempo_bpm,
        "instrument": instrument,
        "drums": drums,
        "notes": notes,
    }
    return Clip(wav, caption, labels)


# =========================================================================== speech

# (espeak-ng voice[+variant], gender, accent). The voice name is the manifest's speaker.
SPEECH_VOICES = (
    ("en-us", "male", "American"),
    ("en-us+f3", "female", "American"),
    ("en-gb-x-rp", "male", "British"),
    ("en-gb-x-rp+f2", "female", "British"),
    ("en-gb-scotland+m3", "male", "Scottish"),
    ("en-029+f4", "female", "Caribbean"),
)
SPEECH_RATES_WPM = (150, 165, 180)

_WORDS = {
    "adj": ("quiet", "bright", "small", "heavy", "green", "old", "gentle", "cold", "yellow", "busy"),
    "noun": ("dog", "river", "lamp", "garden", "train", "window", "teacher", "bird", "bottle", "market"),
    "verb": ("watched", "followed", "found", "painted", "carried", "cleaned", "passed", "visited"),
    "place": ("station", "bridge", "kitchen", "harbor", "library", "forest", "village", "school"),
    "time": ("noon", "midnight", "sunrise", "dinner", "the weekend", "tomorrow morning"),
    "name": ("Anna", "Peter", "Maria", "Tom", "Lucy", "David", "Grace", "Sam"),
    "count": ("two", "three", "four", "five", "seven", "ten"),
}
_TEMPLATES = (
    "The {adj} {noun} {verb} the {noun2} near the {place}.",
    "{name} {verb} a {adj} {noun} before {time}.",
    "We saw {count} {adj} {noun}s at the {place}.",
    "Please bring the {noun} to the {place} by {time}.",
    "{name} said the {noun} was {adj} today.",
)
_SHORT_TEMPLATES = ("Hello {name}.", "The {noun} is {adj}.")


def speech_sentence(rng: np.random.Generator, short: bool = False) -> str:
    """A sentence from the built-in templates; every draw uses ``rng`` in a fixed order."""
    templates = _SHORT_TEMPLATES if short else _TEMPLATES
    template = templates[rng.integers(len(templates))]
    fields = {name: words[rng.integers(len(words))] for name, words in sorted(_WORDS.items())}
    fields["noun2"] = _WORDS["noun"][rng.integers(len(_WORDS["noun"]))]
    return template.format(**fields)


def _trim_silence(wav: np.ndarray, sample_rate: int, threshold: float = 1e-3, pad_seconds: float = 0.15) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wav) > threshold)
    if loud.size == 0:
        return wav
    pad = int(pad_seconds * sample_rate)
    core = wav[loud[0] : loud[-1] + 1]
    return np.concatenate([np.zeros(pad, wav.dtype), core, np.zeros(pad, wav.dtype)])


def make_speech_clip(rng: np.random.Generator, index: int, seconds: float, sample_rate: int) -> Clip:
    """A sentence spoken by voice ``index % len(SPEECH_VOICES)``; at most ``seconds`` long when a
    sentence that short exists among a few draws (short templates are tried last)."""
    from lodit.data.espeak import EspeakSynthesizer

    voice, gender, accent = SPEECH_VOICES[index % len(SPEECH_VOICES)]
    rate = int(rng.choice(SPEECH_RATES_WPM))
    synthesizer = EspeakSynthesizer(voice, rate=rate)
    attempts = 6
    for attempt in range(attempts):
        text = speech_sentence(rng, short=attempt >= attempts - 2)
        raw, raw_rate = synthesizer.synthesize(text)
        wav = resample_np(_trim_silence(raw, raw_rate)[None], raw_rate, sample_rate)[0]
        if len(wav) <= seconds * sample_rate:
            break
    article = "an" if accent[0] in "AEIOU" else "a"
    caption = f"a {gender} voice with {article} {accent} accent speaking"
    labels = {"voice": voice, "gender": gender, "accent": accent, "rate_wpm": rate}
    return Clip(wav, caption, labels, transcript=text, speaker=voice)


# =========================================================================== the dataset

# A bound on what a typo can ask for (a count of 10**9 would fill the disk over days).
MAX_CLIPS = 100_000
CLIP_MAKERS = {"audio": make_sound_clip, "music": make_music_clip, "speech": make_speech_clip, "beeps": make_beep_clip}


def clip_rng(seed: int, group: str, index: int) -> np.random.Generator:
    """The generator of one clip: independent of the other clips and of the counts."""
    return np.random.default_rng([seed, GROUP_CODES[group], index])


def make_demo_dataset(
    out_dir: str | Path,
    *,
    n_audio: int = DEFAULT_COUNTS["audio"],
    n_music: int = DEFAULT_COUNTS["music"],
    n_speech: int = DEFAULT_COUNTS["speech"],
    n_beeps: int = DEFAULT_COUNTS["beeps"],
    seconds: float = 4.0,
    sample_rate: int = 16000,
    seed: int = 0,
    require_speech: bool = False,
) -> Path:
    """Write ``out_dir/audio/*.wav`` and ``out_dir/manifest.jsonl``; returns the manifest path.

    Speech needs espeak-ng: without it speech clips are skipped with a warning, or, when
    ``require_speech``, a :class:`LoditError` is raised. Same arguments, same bytes.
    """
    counts = {"audio": n_audio, "music": n_music, "speech": n_speech, "beeps": n_beeps}
    for group, count in counts.items():
        if count < 0:
            raise LoditError(f"the number of {group} clips must be >= 0, got {count}")
    if sum(counts.values()) > MAX_CLIPS:
        raise LoditError(f"{sum(counts.values())} clips asked for; the demo dataset makes at most {MAX_CLIPS} "
                         "(a teaching set: bring real data through `lodit prepare` for more)")
    if not 1.0 <= seconds <= 60.0:
        raise LoditError(f"clip length must be 1-60 seconds, got {seconds}")
    if sample_rate < 8000:
        raise LoditError(f"sample rate must be at least 8000 Hz, got {sample_rate}")
    if n_speech > 0:
        from lodit.data.espeak import espeak_available

        if not espeak_available():
            message = "espeak-ng could not be loaded (pip install espeakng-loader)"
            if require_speech:
                raise LoditError(f"{message}; speech clips were requested: install it or set speech=0")
            log.warning("%s: the demo dataset has no speech clips", message)
            counts["speech"] = 0
    if sum(counts.values()) == 0:
        raise LoditError("the demo dataset would be empty; ask for at least one clip")

    out_dir = Path(out_dir)
    rows = []
    for group, count in counts.items():
        for index in range(count):
            clip = CLIP_MAKERS[group](clip_rng(seed, group, index), index, seconds, sample_rate)
            wav = PEAK_LEVEL * clip.wav / max(float(np.abs(clip.wav).max()), 1e-9)
            name = f"{FILE_PREFIX[group]}_{index:03d}"
            save_audio(out_dir / "audio" / f"{name}.wav", wav.astype(np.float32), sample_rate)
            rows.append(
                ManifestRow(
                    audio=f"audio/{name}.wav",
                    caption=clip.caption,
                    transcript=clip.transcript,
                    domain=MANIFEST_DOMAIN[group],
                    speaker=clip.speaker,
                    duration=round(len(wav) / sample_rate, 6),
                    labels=clip.labels,
                    id=name,
                )
            )
    settings = {"seed": seed, "counts": counts, "seconds": seconds, "sample_rate": sample_rate}
    write_json(out_dir / "dataset.json", settings)
    manifest = out_dir / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest


# =========================================================================== command


def parse_counts(text: str) -> dict[str, int]:
    """``"audio=12,music=12,speech=8"`` -> counts; domains left out are 0."""
    counts = dict.fromkeys(DEFAULT_COUNTS, 0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in counts or not value.strip().isdigit():
            raise LoditError(f"--counts {text!r}: write domain=N pairs like audio=12,music=12,speech=8")
        counts[name] = int(value)
    return counts
