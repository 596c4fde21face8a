"""Training examples for the audio->mouth network: speech paired with its viseme timeline.

Two sources: espeak-ng speech in many languages, voices, rates and pitches, with its own phoneme
timings, optionally degraded like real recordings (speed, pitch, EQ, reverb, noise, level); and
real English speech with reference phone alignments (LibriVox clips in pocketsphinx's source
package). Every example starts and ends with silence so that the mouth learns to rest. The
network's inputs (Whisper encoder states) are computed from ``Example.audio`` by ``encode``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import wave
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
from scipy import fft
from scipy.signal import fftconvolve

from dubline.stages.coeffs.training.sentences import SENTENCES
from dubline.stages.coeffs.visemes import VISEME_CLASSES, arpabet_viseme, espeak_viseme, target_curve
from dubline.stages.speech.espeak import synthesize
from dubline.stages.speech.features import SAMPLE_RATE

Segment = tuple[str, float, float]  # viseme class, start_s, end_s

# Each training voice pairs an accent with an espeak variant (f/m/belinda: another speaker's
# timbre and pitch; klatt: another synthesiser), so voices differ in more than the accent. espeak
# ignores an unknown variant without a word: tests check that every voice sounds different.
# Variants with "breath" (f2, f3, f5, whisper, ...) are left out: their breath noise changes with
# the state of the process (e.g. after numba has compiled something), so they are not reproducible.
_ACCENTS: dict[str, tuple[str, ...]] = {
    "en": ("en-US", "en-GB-x-rp", "en-029"), "fr": ("fr", "fr-BE"), "de": ("de",),
    "es": ("es",), "it": ("it",), "pt": ("pt-BR", "pt"), "ru": ("ru",), "hi": ("hi",),
    "ja": ("ja",), "cmn": ("cmn",),
}
_TRAIN_VARIANTS = ("", "+f4", "+m3", "+belinda", "+klatt")
DEFAULT_VOICES: dict[str, tuple[str, ...]] = {
    language: tuple(accents[i % len(accents)] + v for i, v in enumerate(_TRAIN_VARIANTS))
    for language, accents in _ACCENTS.items()
}
#: One voice per language kept out of DEFAULT_VOICES for validation: a variant no training voice
#: uses, on an accent no training voice uses where espeak has one to spare.
HELD_OUT_VOICES: dict[str, str] = {
    "en": "en-GB-scotland+m1", "fr": "fr-CH+f1", "de": "de+m1", "es": "es-419+f1", "it": "it+m1",
    "pt": "pt+f1", "ru": "ru-LV+m1", "hi": "hi+f1", "ja": "ja+m1", "cmn": "cmn+f1",
}

_RATE_WPM = (120, 230)
_PITCH = (25, 75)
_PAD_S = (0.2, 0.8)
_SPEED = (0.85, 1.2)
_SEMITONES = (-3.0, 3.0)
_SNR_DB = (10.0, 40.0)
_POCKETSPHINX = "pocketsphinx==5.1.1"
_POCKETSPHINX_TARBALL = "pocketsphinx-5.1.1.tar.gz"


@dataclass
class Example:
    """One utterance: its audio and what the mouth does when, as viseme segments."""

    audio: np.ndarray  # mono float32 at SAMPLE_RATE
    segments: list[Segment]  # (viseme, start_s, end_s), in time order; may be empty (real clips)
    source: str  # e.g. "espeak:fr:fr-BE:3", "librivox:0870", "clip:address_man_20s"
    language: str  # BCP-47 primary tag, e.g. "fr"
    text: str = ""  # what is said, when known

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def steps(self, rate: float) -> int:
        """Whole steps of 1/rate s that the audio covers."""
        return int(len(self.audio) / SAMPLE_RATE * rate)

    def targets(self, rate: float) -> np.ndarray:
        """steps×4 float32 mouth targets (``visemes.target_curve``, MOUTH_COEFFS order)."""
        return target_curve(self.segments, self.steps(rate), rate)

    def labels(self, rate: float) -> np.ndarray:
        """steps int64 viseme class (``VISEME_CLASSES`` index) at the centre of each step; rest elsewhere."""
        labels = np.full(self.steps(rate), VISEME_CLASSES.index("rest"), dtype=np.int64)
        for viseme, start, end in self.segments:
            labels[int(round(start * rate)) : int(round(end * rate))] = VISEME_CLASSES.index(viseme)
        return labels

    def bilabial_steps(self, rate: float) -> np.ndarray:
        """int step indices of the centres of p/b/m segments."""
        centres = {int((start + end) / 2 * rate) for viseme, start, end in self.segments if viseme == "bilabial"}
        return np.array(sorted(c for c in centres if c < self.steps(rate)), dtype=np.int64)

    def silent(self, rate: float) -> np.ndarray:
        """bool steps: steps entirely inside pauses or silence."""
        edges = np.arange(self.steps(rate) + 1) / rate
        silent = np.ones(self.steps(rate), dtype=bool)
        for viseme, start, end in self.segments:
            if viseme != "rest":
                silent &= (edges[1:] <= start) | (edges[:-1] >= end)
        return silent


def espeak_examples(
    languages: Sequence[str],
    voices: dict[str, list[str]] | None,
    per_voice: int,
    seed: int,
    augment: bool,
) -> list[Example]:
    """``per_voice`` examples for each voice of each language (``voices`` None: DEFAULT_VOICES).

    Each example draws its randomness from (seed, source name) alone, so an example is the same
    whatever other languages or voices are asked for; sentences go round a per-voice shuffle.
    """
    examples = []
    for language in languages:
        if language not in SENTENCES:
            raise ValueError(f"no sentences for language {language!r}; have {sorted(SENTENCES)}")
        if voices is not None and language not in voices:
            raise ValueError(f"voices names none for language {language!r}")
        sentences = SENTENCES[language]
        for voice in DEFAULT_VOICES[language] if voices is None else voices[language]:
            order = np.random.default_rng([seed, _key(f"{language}:{voice}")]).permutation(len(sentences))
            for k in range(per_voice):
                source = f"espeak:{language}:{voice}:{k}"
                rng = np.random.default_rng([seed, _key(source)])
                text = sentences[order[k % len(sentences)]]
                examples.append(_espeak_example(text, voice, language, source, rng, augment))
    return examples


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


def _espeak_example(
    text: str, voice: str, language: str, source: str, rng: np.random.Generator, augment: bool,
) -> Example:
    # Everything but the augmentation is drawn first, so augment=False gives the clean version.
    rate = int(rng.integers(_RATE_WPM[0], _RATE_WPM[1] + 1))
    pitch = int(rng.integers(_PITCH[0], _PITCH[1] + 1))
    lead, tail = (int(rng.uniform(*_PAD_S) * SAMPLE_RATE) for _ in range(2))
    speech = synthesize(text, voice, rate, pitch)
    audio = librosa.resample(speech.samples, orig_sr=speech.sample_rate, target_sr=SAMPLE_RATE)
    audio = np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(tail, np.float32)])
    # A phoneme lasts until the next event, the last one until the end of the synthesised audio.
    starts = [p.start_s for p in speech.phonemes] + [speech.duration_s]
    offset = lead / SAMPLE_RATE
    segments = [
        (espeak_viseme(p.phoneme), offset + start, offset + end)
        for p, start, end in zip(speech.phonemes, starts, starts[1:])
        if end > start
    ]
    if augment:
        audio, scale = augment_audio(audio, SAMPLE_RATE, rng)
        segments = [(viseme, start * scale, end * scale) for viseme, start, end in segments]
    return Example(audio.astype(np.float32), segments, source, language, text)


def augment_audio(
    samples: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """A recording-like variant of clean speech and the factor its times were scaled by.

    Speed and pitch always change (a little or a lot); EQ, reverb and noise apply at random, like
    the rooms, microphones and channels of real footage; the level ends anywhere from quiet to
    near full scale. Times in the result are ``time_scale`` × times in ``samples``.
    """
    speed = rng.uniform(*_SPEED)
    audio = speed_and_pitch(samples, sample_rate, speed, rng.uniform(*_SEMITONES))
    if rng.random() < 0.7:
        audio = _equalise(audio, sample_rate, rng)
    if rng.random() < 0.5:
        audio = _reverberate(audio, sample_rate, rng)
    if rng.random() < 0.8:
        audio = _add_noise(audio, sample_rate, rng.uniform(*_SNR_DB), rng)
    peak_db = rng.uniform(-30.0, -1.0)
    audio = audio * (10 ** (peak_db / 20) / max(float(np.abs(audio).max()), 1e-9))
    return audio.astype(np.float32), 1.0 / speed


def speed_and_pitch(samples: np.ndarray, sample_rate: int, speed: float, semitones: float) -> np.ndarray:
    """Play ``speed`` times faster with the pitch moved by ``semitones``; times scale by 1/speed.

    A phase-vocoder stretch then a resample: the stretch keeps times proportional, and its short
    window (32 ms) keeps plosive onsets sharp enough for frame-level lip timing.
    """
    factor = 2 ** (semitones / 12)
    stretched = librosa.effects.time_stretch(
        samples.astype(np.float32), rate=speed / factor, n_fft=512, hop_length=128
    )
    return librosa.resample(stretched, orig_sr=sample_rate * factor, target_sr=sample_rate)


def _equalise(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Random tilt plus low and high shelves (zero phase, so nothing moves in time)."""
    n = fft.next_fast_len(len(audio), real=True)  # odd lengths with large prime factors are slow
    octaves = np.log2(np.maximum(fft.rfftfreq(n, 1 / sample_rate), 20.0) / 1000.0)
    low_corner, high_corner = np.log2(rng.uniform(100, 500) / 1000), np.log2(rng.uniform(2000, 6000) / 1000)
    gain_db = (
        rng.uniform(-3, 3) * octaves
        + rng.uniform(-12, 12) / (1 + np.exp(4 * (octaves - low_corner)))
        + rng.uniform(-12, 12) / (1 + np.exp(-4 * (octaves - high_corner)))
    )
    return fft.irfft(fft.rfft(audio, n) * 10 ** (gain_db / 20), n)[: len(audio)]


def _reverberate(audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Room reverb: direct path plus exponentially decaying noise (random RT60 and wet level)."""
    rt60 = rng.uniform(0.15, 0.8)
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(len(t)) * np.exp(-np.log(1000) * t / rt60)  # -60 dB at rt60
    direct_to_reverb_db = rng.uniform(0, 15)
    response = tail * (10 ** (-direct_to_reverb_db / 20) / np.sqrt(np.sum(tail**2)))
    response[0] = 1.0
    return fftconvolve(audio, response)[: len(audio)]  # the tail past the end is cut, times stay


def _add_noise(audio: np.ndarray, sample_rate: int, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise (white to brown) at ``snr_db`` below the speech, not below the whole clip."""
    n = fft.next_fast_len(len(audio), real=True)
    spectrum = fft.rfft(rng.standard_normal(n))
    freqs = fft.rfftfreq(n, 1 / sample_rate)
    spectrum[1:] /= freqs[1:] ** (rng.uniform(0, 2) / 2)  # power ∝ 1/f^alpha
    spectrum[0] = 0.0
    noise = fft.irfft(spectrum, n)[: len(audio)]
    gain = np.sqrt(_speech_power(audio, sample_rate) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return audio + gain * noise


def _speech_power(audio: np.ndarray, sample_rate: int) -> float:
    """Mean power of the 20 ms frames within 20 dB of the loudest: speech without the pauses."""
    hop = sample_rate // 50
    powers = np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1)
    return float(np.mean(powers[powers >= powers.max() / 100]))


def librivox_examples(cache_dir: Path) -> list[Example]:
    """The LibriVox clips of pocketsphinx's source package with their reference phone alignments.

    The source tarball is fetched into ``cache_dir`` with pip if it is not there yet, and read in
    place. Raises RuntimeError if it cannot be fetched.
    """
    tarball = _pocketsphinx_tarball(Path(cache_dir))
    clips: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tarball) as archive:
        for member in archive:
            parent, _, name = member.name.rpartition("/")
            if parent.endswith("test/data/librivox") and name.endswith((".wav", ".phone.json")):
                stem, _, kind = name.partition(".")
                clips.setdefault(stem, {})[kind] = archive.extractfile(member).read()
    examples = []
    for stem, files in sorted(clips.items()):
        if {"wav", "phone.json"} <= files.keys():
            words = json.loads(files["phone.json"])["w"]
            segments = [
                (arpabet_viseme(phone["t"]), phone["b"], phone["b"] + phone["d"])
                for word in words
                for phone in word.get("w", [])
            ]
            # Dictionary variants are marked "word(2)"; silences "<sil>".
            text = " ".join(w["t"].split("(")[0] for w in words if not w["t"].startswith("<"))
            source = f"librivox:{stem.rsplit('-', 1)[-1]}"
            examples.append(Example(_read_wav(files["wav"]), segments, source, "en", text))
    return examples


def _pocketsphinx_tarball(cache_dir: Path) -> Path:
    tarball = cache_dir / _POCKETSPHINX_TARBALL
    if not tarball.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   _POCKETSPHINX, "-d", str(cache_dir)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not tarball.exists():
            raise RuntimeError(f"could not fetch {_POCKETSPHINX} source: {done.stderr[-2000:]}")
    return tarball


def _read_wav(data: bytes) -> np.ndarray:
    """16-bit PCM WAV bytes -> mono float32 at SAMPLE_RATE."""
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, wav.getnchannels())
        rate = wav.getframerate()
    audio = pcm.mean(axis=1).astype(np.float32) / 32768.0
    return audio if rate == SAMPLE_RATE else librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE)
