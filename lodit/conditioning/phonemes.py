"""Optional phonemizer: text -> IPA phoneme strings through the espeak-ng library.

espeak-ng comes with the ``espeakng-loader`` package (the shared library and its data); it is
called through ``ctypes`` with ``espeak_TextToPhonemes`` in IPA mode. When the package or the
library is missing, :func:`available` is False and :func:`phonemize` raises a
:class:`~lodit.errors.LoditError` saying how to fix it; the TTS front-end's default, characters,
needs none of this.

espeak's ``TextToPhonemes`` works clause by clause and drops the punctuation between clauses, so
:func:`phonemize` splits the text at clause punctuation itself and puts the marks back: the pauses
and intonation they imply stay visible to the model. espeak keeps one global state (voice, data
path) per process, so every call holds a lock and selects its voice again.
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
import unicodedata

from lodit.errors import LoditError

# espeak_Initialize output mode: synchronous (no audio device), the same mode lodit uses when it
# synthesises speech, so the two uses agree when they share the library in one process.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1  # espeakCHARS_UTF8
_PHONEMES_IPA = 0x02  # espeakPHONEMES_IPA: IPA symbols (UTF-8) rather than espeak's ASCII names

# Punctuation that ends a clause; kept in the phoneme string.
CLAUSE_PUNCTUATION = ",.;:!?"
_CLAUSE_SPLIT = re.compile(f"([{re.escape(CLAUSE_PUNCTUATION)}]+)")
# espeak marks a switch of language inside a word list with "(en)" ... "(fr)"; not phonemes.
_LANGUAGE_SWITCH = re.compile(r"\([a-z\-]+\)")

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_load_error: str | None = None

_UNAVAILABLE_FIX = "pip install espeakng-loader, or use the text front-end kind 'chars'"


def _load() -> ctypes.CDLL:
    """Load and initialise espeak-ng once per process; raise LoditError when it can't be."""
    global _library, _load_error
    if _library is not None:
        return _library
    if _load_error is not None:
        raise LoditError(f"phonemes need espeak-ng, which is unavailable ({_load_error}); {_UNAVAILABLE_FIX}")
    try:
        import espeakng_loader

        library = ctypes.CDLL(espeakng_loader.get_library_path())
        data_path = espeakng_loader.get_data_path()
        library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetVoiceByName.restype = ctypes.c_int
        library.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        library.espeak_TextToPhonemes.restype = ctypes.c_char_p
        sample_rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0)
        if sample_rate <= 0:
            raise OSError(f"espeak_Initialize failed with code {sample_rate}")
    except (ImportError, OSError, AttributeError) as exc:
        _load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoditError(
            f"phonemes need espeak-ng, which is unavailable ({_load_error}); {_UNAVAILABLE_FIX}"
        ) from None
    _library = library
    return library


def available() -> bool:
    """Whether espeak-ng can be loaded here (so the ``phonemes`` front-end works)."""
    with _lock:
        try:
            _load()
        except LoditError:
            return False
    return True


def _clause_phonemes(library: ctypes.CDLL, text: str) -> str:
    """IPA for a run of text without clause punctuation (espeak may still split it)."""
    buffer = ctypes.create_string_buffer(text.encode("utf-8"))
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))
    clauses = []
    # espeak advances the cursor past each clause it translates and sets it to NULL at the end.
    while cursor.value:
        result = library.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, _PHONEMES_IPA)
        if result:
            clauses.append(result.decode("utf-8"))
    return " ".join(clause.strip() for clause in clauses if clause.strip())


@functools.lru_cache(maxsize=65536)
def phonemize(text: str, language: str = "en-us") -> str:
    """IPA phonemes of ``text`` in espeak-ng voice ``language``, clause punctuation kept.

    Example: ``"Hello, world!"`` -> ``"həlˈoʊ, wˈɜːld!"``. Words are separated by spaces; stress
    (ˈ ˌ) and length (ː) marks are included. Results are memoised, since training phonemizes the
    same transcripts every epoch.
    """
    with _lock:
        library = _load()
        if library.espeak_SetVoiceByName(language.encode()) != 0:
            raise LoditError(
                f"espeak-ng has no voice {language!r}; pass an espeak-ng voice name such as 'en-us'"
            )
        pieces = []
        for piece in _CLAUSE_SPLIT.split(text):
            if not piece.strip():
                continue
            if _CLAUSE_SPLIT.fullmatch(piece):
                pieces.append(piece + " ")
            else:
                pieces.append(_LANGUAGE_SWITCH.sub("", _clause_phonemes(library, piece)))
    joined = re.sub(r"\s+", " ", "".join(pieces)).strip()
    return unicodedata.normalize("NFC", joined)
