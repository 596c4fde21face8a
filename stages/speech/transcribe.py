"""Speech recognition with word times (faster-whisper), voice activity, language checks.

Input audio everywhere is mono float32 at ``features.SAMPLE_RATE`` (16 kHz), what Whisper and its
Silero VAD expect.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import ctranslate2
import langcodes
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.transcribe import TranscriptionInfo
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

from dubline.stages.speech.features import SAMPLE_RATE
from dubline.stages.speech.whisper_models import resolve_model


@dataclass(frozen=True)
class Word:
    word: str  # as Whisper gives it, with its leading space (none between CJK characters)
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True)
class Segment:
    text: str
    start_s: float
    end_s: float
    words: tuple[Word, ...]


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    words: tuple[Word, ...]  # all segments' words in order
    language: str  # Whisper's code, e.g. "en", "pt", "zh"
    language_probability: float


def _primary_language(tag: str) -> str:
    """Primary language subtag, macrolanguages folded in: "pt-BR" -> "pt", "cmn" -> "zh"."""
    return langcodes.Language.get(langcodes.standardize_tag(tag, macro=True)).language


def language_matches(expected_bcp47: str, detected: str) -> bool:
    """Whether two language tags name the same language, ignoring script and region."""
    return _primary_language(expected_bcp47) == _primary_language(detected)


_LANGUAGE_WINDOWS = 2  # 30 s windows of speech that language detection reads at most


class _WhisperModel(WhisperModel):
    """faster-whisper's model that encodes a 30 s window once in a row: for up to a minute of
    speech ``Transcriber`` hands language detection the log-mel that transcription's first window
    will have, so that window's encode (~0.35 s of a short dub's ~2 s of audio analysis on 2 CPU
    cores) is not done twice."""

    _last: tuple[bytes, ctranslate2.StorageView] | None = None

    def encode(self, features: np.ndarray) -> ctranslate2.StorageView:
        key = hashlib.blake2b(np.ascontiguousarray(features).tobytes(), digest_size=16).digest()
        if self._last is None or self._last[0] != key:
            self._last = (key, super().encode(features))
        return self._last[1]


class Transcriber:
    """One loaded Whisper model (``resolve_model`` names); device "auto" picks CUDA when present."""

    def __init__(self, model: str, device: str = "auto", compute_type: str = "default"):
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
        if device == "cpu" and compute_type == "default":
            compute_type = "int8"  # a quarter of float32's weight memory, and faster on CPU
        self.model = _WhisperModel(resolve_model(model), device=device, compute_type=compute_type)

    @property
    def english_only(self) -> bool:
        return not self.model.model.is_multilingual

    def detect_language(self, samples: np.ndarray) -> tuple[str, float]:
        """(Whisper language code, probability) of the speech in mono 16 kHz audio (silence skipped).

        An English-only model answers ("en", 1.0): it cannot tell.
        """
        if self.english_only:
            return "en", 1.0
        # The speech as ``transcribe`` (vad_filter) sees it, less the log-mel's last frame, which
        # its windows never include: so the first window is byte-identical to transcription's.
        # Longer speech is cut to the windows detection reads (the log-mel of ten minutes would
        # take ~0.5 GB), and its first window differs from transcription's by the log-mel's range.
        samples = np.asarray(samples, dtype=np.float32)
        speech = np.concatenate(collect_chunks(samples, get_speech_timestamps(samples, VadOptions()))[0])
        features = self.model.feature_extractor(speech[: _LANGUAGE_WINDOWS * self.model.feature_extractor.n_samples])
        features = features[:, :-1] if features.shape[-1] > 1 else features  # no speech: one padded frame
        language, probability, _ = self.model.detect_language(features=features, language_detection_segments=_LANGUAGE_WINDOWS)
        return language, float(probability)

    def transcribe(self, samples: np.ndarray, language: str | None = None) -> Transcript:
        """Transcript with word times of mono 16 kHz float audio.

        ``language`` (a Whisper code or BCP-47 tag) skips detection. An English-only (".en") model
        cannot detect languages: it reports "en" with probability 1.0 whatever is spoken, and
        refuses any other ``language``. Multilingual models report Whisper's detection (made on
        the first piece: audio longer than ``_PIECE_S`` is heard in pieces cut in its pauses).
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {samples.shape}")
        if language is not None:
            supported = self.model.supported_languages
            language = language if language in supported else _primary_language(language)
            if language not in supported:
                raise ValueError(f"model cannot transcribe language {language!r}")
        segments: list[Segment] = []
        texts, info = [], None
        for start, stop in _pieces(samples):
            # Later pieces are heard in the language of the first (given or detected).
            piece, piece_info = self._transcribe_piece(samples[start:stop], language if info is None else info.language)
            info = info or piece_info
            offset = start / SAMPLE_RATE
            texts += [segment.text for segment in piece]
            segments += [Segment(segment.text.strip(), segment.start + offset, segment.end + offset,
                                 tuple(Word(w.word, w.start + offset, w.end + offset, w.probability) for w in segment.words or ()))
                         for segment in piece]
        return Transcript(
            text="".join(texts).strip(),  # keeps Whisper's spacing
            segments=tuple(segments),
            words=tuple(word for segment in segments for word in segment.words),
            language=info.language,
            language_probability=float(info.language_probability),
        )

    def _transcribe_piece(self, samples: np.ndarray, language: str | None) -> tuple[list, TranscriptionInfo]:
        """faster-whisper's segments (times from the piece's start) and info for one piece."""
        segments, info = self.model.transcribe(
            samples,
            language=language,
            beam_size=1,  # greedy: 1.2-1.5x faster than beam search with 5 (tiny.en, 2 CPU cores)
            # No fallback to sampling at higher temperatures: it made the transcript, and so the
            # mouth and the output bytes, differ from run to run (a resumed run must match).
            temperature=0.0,
            word_timestamps=True,
            vad_filter=True,  # skips silence, where Whisper hallucinates text
            condition_on_previous_text=False,  # stops one misheard segment from derailing the rest
        )
        return list(segments), info  # a generator: decoding happens here


#: Longest piece of audio transcribed at once: faster-whisper takes the log-mel of all it is
#: given (~0.5 GB for ten minutes), so a long title is heard in pieces cut in its pauses. Each
#: 30 s window is decoded on its own anyway (``condition_on_previous_text`` off).
_PIECE_S = 120.0


def _pieces(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) sample ranges covering ``samples``, each at most ``_PIECE_S`` long, cut in the
    middle of the pause (Silero VAD) that ends latest before the limit (at the limit if none)."""
    longest = round(_PIECE_S * SAMPLE_RATE)
    if len(samples) <= longest:
        return [(0, len(samples))]
    spans = [(round(a * SAMPLE_RATE), round(b * SAMPLE_RATE)) for a, b in speech_segments(samples)]
    pauses = [(end + next_start) // 2 for (_, end), (next_start, _) in zip(spans, spans[1:])]
    pieces, start = [], 0
    while len(samples) - start > longest:
        inside = [cut for cut in pauses if start < cut <= start + longest]
        stop = inside[-1] if inside else start + longest
        pieces.append((start, stop))
        start = stop
    return pieces + [(start, len(samples))]


def whisper_language(tag: str, transcriber: Transcriber) -> str | None:
    """Whisper's code for a BCP-47 tag ("pt-BR" -> "pt", "cmn" -> "zh"), or None if the model
    cannot transcribe that language."""
    supported = transcriber.model.supported_languages
    if tag in supported:
        return tag
    primary = _primary_language(tag)
    return primary if primary in supported else None


def speech_segments(
    samples: np.ndarray, min_silence_s: float = 0.1, pad_s: float = 0.03
) -> list[tuple[float, float]]:
    """Voice activity as (start_s, end_s) spans, from the Silero VAD bundled with faster-whisper.

    The defaults are Silero's own (pauses of 0.1 s split speech), not faster-whisper's 2 s, which
    suit cutting audio for Whisper but would hide the pauses where a mouth closes.
    """
    options = VadOptions(
        min_speech_duration_ms=250,  # drops clicks
        min_silence_duration_ms=round(min_silence_s * 1000),
        speech_pad_ms=round(pad_s * 1000),
    )
    spans = get_speech_timestamps(np.asarray(samples, dtype=np.float32), options, SAMPLE_RATE)
    return [(span["start"] / SAMPLE_RATE, span["end"] / SAMPLE_RATE) for span in spans]
