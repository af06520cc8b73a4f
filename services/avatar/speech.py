# ruff: noqa: RUF001  (the viseme table is IPA: its symbols look like Latin letters on purpose)
"""Text to speech with espeak-ng (Debian: `apt-get install espeak-ng`), through its C library.

libespeak-ng synthesises synchronously into a callback that receives the samples and, with
espeakINITIALIZE_PHONEME_EVENTS, an event per phoneme carrying its start in milliseconds of the
output. The phonemes (IPA) map to Preston Blair mouth shapes (visemes) for lip-sync. The library
keeps global state (voice, rate, pitch, the callback), so one synthesis runs at a time, behind a
process-wide lock, in a worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import threading
import unicodedata
import wave
from dataclasses import dataclass
from functools import cache

from services.avatar.narration import Personality

LIBRARY = "libespeak-ng.so.1"
MISSING = "espeak-ng not installed: apt-get install espeak-ng"
MAX_TEXT = 400  # characters one Speak call may say

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000  # report missing data as an error instead of exiting the process
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    name: str  # an espeak-ng voice, with a variant after "+"
    rate: int  # words per minute
    pitch: int  # 0..100


VOICES: dict[Personality, Voice] = {
    Personality.ANALYST: Voice("en-us", 170, 45),
    Personality.MENTOR: Voice("en+f3", 150, 55),  # "en" is British English here ("en-gb" names no voice)
    Personality.RED_TEAMER: Voice("en-us+m3", 190, 35),
}

# Preston Blair mouth shapes by IPA symbol (stress and length marks removed first). Consonants without
# a shape of their own (t, d, k, g, n, s, z, r, j, h, th...) are "etc"; a pause is "rest".
_VISEME_OF: dict[str, str] = {
    **dict.fromkeys(["p", "b", "m"], "MBP"),
    **dict.fromkeys(["f", "v"], "FV"),
    **dict.fromkeys(["l", "ɫ", "ɬ"], "L"),
    **dict.fromkeys(["w", "ʍ"], "WQ"),
    **dict.fromkeys(["a", "ɑ", "æ", "ɐ", "ʌ", "ə", "ɜ", "ɚ", "ɝ", "ᵻ"], "AI"),
    **dict.fromkeys(["e", "ɛ", "ɪ", "i", "y"], "E"),
    **dict.fromkeys(["o", "ɔ", "ɒ", "ɵ"], "O"),
    **dict.fromkeys(["u", "ʊ", "ɯ"], "U"),
}
PAUSE = "_"


def viseme_of(phoneme: str) -> str:
    """The mouth shape for an espeak-ng IPA phoneme (diphthongs by their first vowel)."""
    symbol = phoneme.strip("ˈˌːˑ")
    if not symbol or symbol == PAUSE:
        return "rest"
    return _VISEME_OF.get(symbol, _VISEME_OF.get(symbol[0], "etc"))


@dataclass(frozen=True)
class Viseme:
    viseme: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Phoneme:
    phoneme: str
    start_ms: int


@dataclass(frozen=True)
class Speech:
    wav: bytes
    sample_rate: int
    duration_ms: int
    visemes: list[Viseme]
    phonemes: list[Phoneme]


class SpeechUnavailable(Exception):
    """espeak-ng cannot speak here; str() is the one-line cause."""


def visemes_for(phonemes: list[Phoneme], duration_ms: int) -> list[Viseme]:
    """Contiguous mouth shapes from 0 to `duration_ms`: each phoneme's shape from its start to the next
    one's, repeated shapes merged, empty spans dropped, rest before the first and after the last."""
    starts = [(0, "rest")] + [(min(p.start_ms, duration_ms), viseme_of(p.phoneme)) for p in phonemes]
    out: list[Viseme] = []
    for index, (start, shape) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else duration_ms
        if end <= start:
            continue
        if out and out[-1].viseme == shape:
            out[-1] = Viseme(shape, out[-1].start_ms, end)
        else:
            out.append(Viseme(shape, start, end))
    return out


class _Espeak:
    """The loaded library; espeak-ng holds one voice and one callback per process."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBRARY)
        except OSError:
            raise SpeechUnavailable(MISSING) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS
                                     | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise SpeechUnavailable("espeak-ng could not load its voice data (package espeak-ng-data)")
        self.lib = lib
        self.sample_rate = int(rate)
        self._chunks: list[bytes] = []
        self._phonemes: list[Phoneme] = []
        self._callback = _Callback(self._collect)  # kept referenced: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short] | None, count: int,
                 events: ctypes._Pointer[_Event]) -> int:
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * ctypes.sizeof(ctypes.c_short)))
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                name = event.id.string.decode("utf-8", "replace") or PAUSE
                self._phonemes.append(Phoneme(name, max(0, event.audio_position)))
            index += 1
        return 0  # go on

    def synthesize(self, text: str, voice: Voice) -> Speech:
        self._chunks, self._phonemes = [], []
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise SpeechUnavailable(f"espeak-ng has no voice {voice.name!r} (package espeak-ng-data)")
        self.lib.espeak_SetParameter(_RATE, voice.rate, 0)
        self.lib.espeak_SetParameter(_PITCH, voice.pitch, 0)
        encoded = text.encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise SpeechUnavailable(f"espeak-ng failed to synthesise (error {status})")
        pcm = b"".join(self._chunks)
        duration_ms = round(len(pcm) / 2 * 1000 / self.sample_rate)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(pcm)
        phonemes = sorted(self._phonemes, key=lambda p: p.start_ms)
        return Speech(buffer.getvalue(), self.sample_rate, duration_ms, visemes_for(phonemes, duration_ms), phonemes)


_lock = threading.Lock()


@cache
def _engine() -> _Espeak:
    return _Espeak()


def _load() -> _Espeak:
    with _lock:
        return _engine()


def problem() -> str:
    """Why speech cannot work here, or "" when it can (loads the library once)."""
    try:
        _load()
    except SpeechUnavailable as exc:
        return str(exc)
    return ""


def speakable(text: str) -> str:
    """`text` as it is spoken: control characters as spaces, trimmed."""
    return " ".join("".join(" " if unicodedata.category(c).startswith("C") else c for c in text).split())


def _speak(text: str, voice: Voice) -> Speech:
    with _lock:
        return _engine().synthesize(text, voice)


async def speak(text: str, personality: Personality) -> Speech:
    """Say `text` (already checked: 1..MAX_TEXT characters) in the personality's voice; raises
    SpeechUnavailable (a one-line cause) when espeak-ng cannot."""
    return await asyncio.to_thread(_speak, speakable(text), VOICES[personality])
