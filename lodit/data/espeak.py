"""Speech synthesis with espeak-ng (through the ``espeakng-loader`` package and ctypes).

Owns lodit's speech synthesis binding: :class:`EspeakSynthesizer` turns text into a float32
waveform for the built-in demo dataset.

Determinism: espeak-ng keeps synthesis state in C globals (pitch flutter position, wave phase,
...) that survive from one utterance to the next and even through ``espeak_Terminate``, so the
same text gives slightly different samples depending on what was spoken before, and the breath
noise of some voice variants comes from a generator that is not seeded unless asked. To make
every utterance depend only on its own text, voice, rate and pitch, each synthesis loads a fresh
instance of the library (a few milliseconds), seeds that generator, and unloads it afterwards. The instance is a private
copy of the shared library, so it never shares state with another user of espeak-ng in the same
process (such as the phonemizer in :mod:`lodit.conditioning.phonemes`). espeak-ng is GPL-3; it is
loaded at run time, never vendored.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import functools
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lodit.errors import LoditError

# Constants of espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_NOISE_SEED = 1  # seeds espeak-ng's own generator (breath noise of variants like +f2, +f3)

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()  # one synthesis at a time: simple, and the library is not thread-safe


@functools.lru_cache(maxsize=1)
def _library_files() -> tuple[str, str]:
    """``(private copy of the shared library, data folder)``; the copy lives until the process exits."""
    try:
        import espeakng_loader
    except ImportError:
        raise LoditError("speech synthesis needs espeak-ng: pip install espeakng-loader") from None
    try:
        original = Path(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
    except RuntimeError as exc:
        raise LoditError(f"espeakng-loader is broken ({exc}); reinstall espeakng-loader") from None
    if not original.is_file():
        raise LoditError(f"espeakng-loader has no library at {original}; reinstall espeakng-loader")
    folder = tempfile.mkdtemp(prefix="lodit-espeak-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    private = Path(folder) / original.name
    shutil.copyfile(original, private)
    return str(private), data_path


class _FreshEngine:
    """A context manager holding one freshly loaded, initialised instance of espeak-ng."""

    def __enter__(self) -> _FreshEngine:
        library_path, data_path = _library_files()
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as exc:
            raise LoditError(f"cannot load espeak-ng ({exc}); reinstall espeakng-loader") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib = lib
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            _unload(lib)
            raise LoditError(f"espeak-ng failed to initialise with its data at {data_path}; reinstall espeakng-loader")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept referenced: C holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.lib.espeak_Terminate()
        _unload(self.lib)

    def _collect(self, samples: Any, count: int, events: Any) -> int:
        if samples and count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = keep going

    def synthesize(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 samples at :attr:`sample_rate`."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise LoditError(
                f"espeak-ng has no voice {voice!r}; try en-us, en, en-gb-x-rp or add a variant like en-us+f3"
            )
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        if hasattr(self.lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.52; older ones leave breath noise unseeded
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(_NOISE_SEED))
        encoded = text.encode("utf-8")
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if status != _EE_OK:
            raise LoditError(f"espeak-ng could not synthesise {text[:40]!r} (error {status})")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _unload(lib: ctypes.CDLL) -> None:
    """Drop the library so the next load starts from its initial state."""
    if hasattr(_ctypes, "dlclose"):  # POSIX
        _ctypes.dlclose(lib._handle)
    else:  # Windows
        _ctypes.FreeLibrary(lib._handle)


@functools.lru_cache(maxsize=1)
def _native_sample_rate() -> int:
    with _LOCK, _FreshEngine() as engine:
        return engine.sample_rate


def espeak_available() -> bool:
    """Whether espeak-ng can be loaded here (the demo set skips speech when it can't)."""
    try:
        _native_sample_rate()
    except LoditError:
        return False
    return True


class EspeakSynthesizer:
    """One espeak-ng voice: ``voice`` (``en-us``, ``en-gb-x-rp``, ``en-us+f3`` for a variant),
    ``rate`` in words per minute (80-450) and ``pitch`` (0-100, 50 is the voice's default).

    The same text, voice, rate and pitch always give the same samples.
    """

    def __init__(self, voice: str = "en-us", rate: int = 175, pitch: int = 50):
        if not 80 <= rate <= 450:
            raise LoditError(f"espeak-ng rate must be 80-450 words per minute, got {rate}")
        if not 0 <= pitch <= 100:
            raise LoditError(f"espeak-ng pitch must be 0-100, got {pitch}")
        self.voice, self.rate, self.pitch = voice, int(rate), int(pitch)
        self.sample_rate = _native_sample_rate()  # also fails early, clearly, when espeak-ng is missing

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """``(waveform, sample_rate)``: mono float32 in [-1, 1] at espeak-ng's rate (22050 Hz)."""
        if not text.strip():
            raise LoditError("espeak-ng was given empty text")
        with _LOCK, _FreshEngine() as engine:
            samples = engine.synthesize(text, self.voice, self.rate, self.pitch)
        return samples.astype(np.float32) / 32768.0, self.sample_rate
