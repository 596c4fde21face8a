"""Speech synthesis with phoneme timings from the espeak-ng library in the espeakng-loader wheel.

The library is driven in-process through ctypes (no CLI: its ``--pho`` timing output needs MBROLA).
espeak-ng keeps hidden static state between utterances (pitch-flutter phase, gain control), so two
calls in one loaded instance give slightly different samples. Each call therefore loads a fresh
private copy of the library, synthesises, terminates and unloads it: ~3 ms of overhead buys
bit-identical output for identical arguments, whatever ran before in the process. The price is
espeak-ng 1.52's leaks at terminate: ~2 KB a call, and ~170 KB more when a non-English voice
switched to English for a foreign word (its second-language dictionary is never freed).
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import os
import shutil
import tempfile
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import POINTER, c_char, c_char_p, c_int, c_short, c_size_t, c_ubyte, c_uint, c_void_p
from dataclasses import dataclass

import espeakng_loader
import numpy as np

# Constants from speak_lib.h (espeak-ng 1.52).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # without it, a missing data folder makes the library call exit()
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_PITCH = 3
_RATE_RANGE = (80, 450)  # espeakRATE_MINIMUM .. espeakRATE_MAXIMUM, words per minute
_PITCH_RANGE = (0, 100)


class _EventId(ctypes.Union):
    _fields_ = [("number", c_int), ("name", c_char_p), ("string", c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", c_int),
        ("unique_identifier", c_uint),
        ("text_position", c_int),
        ("length", c_int),
        ("audio_position", c_int),  # ms from the start of the message
        ("sample", c_int),
        ("user_data", c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("languages", c_char_p),
        ("identifier", c_char_p),  # file path under espeak-ng-data/lang, e.g. b"gmw/en-US"
        ("gender", c_ubyte),
        ("age", c_ubyte),
        ("variant", c_ubyte),
        ("xx1", c_ubyte),
        ("score", c_int),
        ("spare", c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(c_int, POINTER(c_short), c_int, POINTER(_Event))
_SIGNATURES = {
    "espeak_Initialize": (c_int, [c_int, c_int, c_char_p, c_int]),
    "espeak_SetSynthCallback": (None, [_SynthCallback]),
    "espeak_SetVoiceByName": (c_int, [c_char_p]),
    "espeak_SetParameter": (c_int, [c_int, c_int, c_int]),
    "espeak_ListVoices": (POINTER(POINTER(_Voice)), [c_void_p]),
    "espeak_Terminate": (c_int, []),
    "espeak_Synth": (
        c_int, [c_char_p, c_size_t, c_uint, c_int, c_uint, c_uint, POINTER(c_uint), c_void_p]
    ),
}

# The library is global state and not thread-safe; all use goes through this lock.
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PhonemeEvent:
    phoneme: str  # espeak mnemonic with any stress mark, e.g. "p", "'A:", "_:" (pause)
    start_s: float
    text_position: int = 0  # 1-based character offset of the word this phoneme belongs to


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phonemes: tuple[PhonemeEvent, ...]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def _library_copy() -> str:
    """Path of dubline's own copy of the library, so that dlopen gives an instance which no other
    user of the wheel's library in this process shares. One copy per user and library build,
    shared by all processes (each maps it privately): Ray workers end without running exit
    handlers, so a copy per process would be left behind in the temporary folder by each."""
    source = espeakng_loader.get_library_path()
    stat = os.stat(source)
    build = hashlib.sha1(f"{os.path.realpath(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = os.path.join(tempfile.gettempdir(), f"dubline-espeak-{os.getuid()}-{build}")
    copy = os.path.join(folder, os.path.basename(source))
    if not os.path.exists(copy):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        partial = f"{copy}.{os.getpid()}.partial"
        shutil.copy(source, partial)
        os.replace(partial, copy)  # atomic: another process never loads a half-written copy
    return copy


@contextmanager
def _engine(callback: _SynthCallback | None = None) -> Iterator[tuple[ctypes.CDLL, int]]:
    """A freshly loaded, initialised library and its sample rate; unloaded on exit."""
    with _LOCK:
        lib = ctypes.CDLL(_library_copy())
        try:
            for name, (restype, argtypes) in _SIGNATURES.items():
                getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
            data_parent = os.path.dirname(espeakng_loader.get_data_path())  # holds espeak-ng-data
            options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
            sample_rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), options
            )
            if sample_rate <= 0:
                raise RuntimeError(f"espeak-ng failed to initialise with data in {data_parent}")
            if callback is not None:
                lib.espeak_SetSynthCallback(callback)
            yield lib, sample_rate
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)


def synthesize(text: str, voice: str = "en", rate_wpm: int = 160, pitch: int = 50) -> Speech:
    """Speak ``text`` with an espeak voice (see ``list_voices``); samples plus phoneme onsets."""
    if not text.strip():
        raise ValueError("text to synthesise is empty")
    if not _RATE_RANGE[0] <= rate_wpm <= _RATE_RANGE[1]:
        raise ValueError(f"rate_wpm {rate_wpm} outside espeak's range {_RATE_RANGE}")
    if not _PITCH_RANGE[0] <= pitch <= _PITCH_RANGE[1]:
        raise ValueError(f"pitch {pitch} outside espeak's range {_PITCH_RANGE}")
    chunks: list[np.ndarray] = []
    phonemes: list[PhonemeEvent] = []

    def on_synth(wav, n_samples, events) -> int:
        if wav and n_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                name = event.id.string.decode("utf-8", "replace")  # c_char array stops at NUL
                # "(en)"-style entries mark a switch of language for a foreign word, not a sound.
                if not name.startswith("("):
                    phonemes.append(PhonemeEvent(name, event.audio_position / 1000.0, event.text_position))
            i += 1
        return 0  # 0 = continue synthesis

    callback = _SynthCallback(on_synth)  # referenced here until the library is unloaded
    with _engine(callback) as (lib, sample_rate):
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng voice {voice!r} not found; see list_voices()")
        lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        encoded = text.encode()
        status = lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return Speech((pcm / 32768.0).astype(np.float32), sample_rate, tuple(phonemes))


def list_voices() -> list[str]:
    """Voice names ``synthesize`` accepts: the voice files' names, e.g. "en-US", "fr", "cmn".

    ``synthesize`` also takes display names ("French (France)") and variants ("en+klatt"). A few
    listed voices (fo, kaa, xex in espeakng-loader 0.2.4) lack their dictionary and speak silence.
    """
    with _engine() as (lib, _):
        voices = lib.espeak_ListVoices(None)
        identifiers = []
        while voices[len(identifiers)]:
            identifiers.append(voices[len(identifiers)].contents.identifier.decode())
    return sorted(identifier.rsplit("/", 1)[-1] for identifier in identifiers)


def write_wav(speech: Speech, path: str) -> None:
    """Write ``speech`` as 16-bit PCM mono WAV."""
    pcm = np.clip(np.round(speech.samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(speech.sample_rate)
        out.writeframes(pcm.tobytes())
