"""Whisper transcription of espeak speech, voice activity, language tags, SRT/WebVTT subtitles."""

import re

import huggingface_hub.constants
import librosa
import numpy as np
import pytest

from dubline.stages.audio.subtitles import LINE_CHARS, MAX_CUE_CHARS, MAX_CUE_S, parse_srt, to_srt, to_vtt
from dubline.stages.speech.espeak import synthesize
from dubline.stages.speech.features import SAMPLE_RATE
from dubline.stages.speech import transcribe as transcribe_module
from dubline.stages.speech.transcribe import (
    Segment,
    Transcriber,
    Transcript,
    Word,
    language_matches,
    speech_segments,
)
from dubline.stages.speech.whisper_models import TINY_EN_PACKAGED as PACKAGED_MODEL
from dubline.stages.speech.whisper_models import resolve_model

# tiny.en hears espeak's robotic voice badly on some words ("brown fox" -> "roundfark"); this
# sentence came out word-perfect with every English voice and rate tried.
SENTENCE = "Good morning everyone. Today we are going to talk about the weather."
CONTENT_WORDS = {"good", "morning", "everyone", "today", "going", "talk", "weather"}
PAD_S = 1.0


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The sentence at 16 kHz with 1 s of silence either side."""
    spoken = synthesize(SENTENCE, voice="en")
    samples = librosa.resample(spoken.samples, orig_sr=spoken.sample_rate, target_sr=SAMPLE_RATE)
    silence = np.zeros(round(PAD_S * SAMPLE_RATE), np.float32)
    return np.concatenate([silence, samples, silence]).astype(np.float32)


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber(PACKAGED_MODEL)


@pytest.fixture(scope="module")
def transcript(transcriber: Transcriber, speech: np.ndarray) -> Transcript:
    return transcriber.transcribe(speech)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_transcript_has_the_spoken_words(transcript: Transcript) -> None:
    assert len(CONTENT_WORDS & _words(transcript.text)) >= 5, transcript.text
    assert _words("".join(word.word for word in transcript.words)) == _words(transcript.text)
    assert transcript.language == "en" and transcript.language_probability == 1.0


def test_word_times_increase_inside_the_audio(transcript: Transcript, speech: np.ndarray) -> None:
    duration = len(speech) / SAMPLE_RATE
    starts = [word.start_s for word in transcript.words]
    assert starts == sorted(starts)
    assert all(0 <= word.start_s <= word.end_s <= duration for word in transcript.words)
    # Whisper stretches the first word back into the silence a little, never to the file start.
    assert starts[0] > PAD_S / 2 and transcript.words[-1].end_s < duration - PAD_S / 2
    assert all(0 <= word.probability <= 1 for word in transcript.words)


def test_long_audio_is_heard_in_pieces_cut_in_its_pauses(transcriber: Transcriber, speech: np.ndarray,
                                                         transcript: Transcript, monkeypatch) -> None:
    """faster-whisper takes the log-mel of all it is given (~0.5 GB for ten minutes), so long audio
    is transcribed in pieces of at most ``_PIECE_S`` cut in pauses: the same words at the same
    times, here with pieces of 4 s over the sentence said twice with a 1.5 s pause between."""
    monkeypatch.setattr(transcribe_module, "_PIECE_S", 4.0)
    pause = np.zeros(round(1.5 * SAMPLE_RATE), np.float32)
    twice = np.concatenate([speech, pause, speech])
    pieces = transcribe_module._pieces(twice)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(twice) and len(pieces) >= 2
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(pieces, pieces[1:]))
    assert all(stop - start <= 4.0 * SAMPLE_RATE for start, stop in pieces)
    assert any(abs(stop - len(speech) - len(pause) / 2) < SAMPLE_RATE for _, stop in pieces[:-1])  # in the long pause
    heard = transcriber.transcribe(twice)
    second = (len(speech) + len(pause)) / SAMPLE_RATE
    later = [w for w in heard.words if w.start_s >= second]
    assert _words("".join(w.word for w in later)) & CONTENT_WORDS
    starts = [w.start_s for w in heard.words]
    assert starts == sorted(starts) and heard.words[-1].end_s <= len(twice) / SAMPLE_RATE
    # The first saying's words keep their times.
    first = transcript.words[0]
    assert abs(heard.words[0].start_s - first.start_s) < 0.2


def test_silence_gives_an_empty_transcript(transcriber: Transcriber) -> None:
    empty = transcriber.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32))
    assert (empty.text, empty.segments, empty.words) == ("", (), ())
    assert to_srt(empty.segments) == "" and parse_srt("") == []
    assert to_vtt(empty.segments) == "WEBVTT\n"


def test_english_only_model_takes_only_english(transcriber: Transcriber, speech: np.ndarray) -> None:
    assert transcriber.english_only
    assert _words(transcriber.transcribe(speech, language="en-GB").text) & CONTENT_WORDS
    with pytest.raises(ValueError, match="'fr'"):
        transcriber.transcribe(speech, language="fr")
    with pytest.raises(ValueError, match="mono"):
        transcriber.transcribe(np.zeros((2, 100), np.float32))


def test_subtitles_of_the_transcript_parse_back(transcript: Transcript) -> None:
    cues = parse_srt(to_srt(transcript.segments))
    assert [cue.index for cue in cues] == list(range(1, len(cues) + 1)) and cues
    assert all(cue.start_s < cue.end_s for cue in cues)
    assert all(a.end_s <= b.start_s for a, b in zip(cues, cues[1:]))
    assert _words(" ".join(cue.text for cue in cues)) == _words(transcript.text)
    vtt = to_vtt(transcript.segments)
    assert vtt.startswith("WEBVTT\n\n")
    vtt_times = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})$", vtt, re.M)
    srt_times = re.findall(r"^(\S+) --> (\S+)$", to_srt(transcript.segments), re.M)
    assert vtt_times == [(a.replace(",", "."), b.replace(",", ".")) for a, b in srt_times]


def _long_segment(with_words: bool) -> Segment:
    """60 words over 30 s, starting just before the one-hour mark."""
    words = tuple(Word(f" word{i}", 3599.0 + i / 2, 3599.0 + i / 2 + 0.4, 0.9) for i in range(60))
    text = "".join(word.word for word in words).strip()
    return Segment(text, 3599.0, 3629.0, words if with_words else ())


@pytest.mark.parametrize("with_words", [True, False])
def test_long_segments_are_split_into_short_cues(with_words: bool) -> None:
    segment = _long_segment(with_words)
    cues = parse_srt(to_srt([segment]))
    assert len(cues) > 1
    assert all(cue.end_s - cue.start_s <= MAX_CUE_S for cue in cues)
    assert all(len(cue.text) <= MAX_CUE_CHARS for cue in cues)
    assert all(len(line) <= LINE_CHARS for cue in cues for line in cue.text.split("\n"))
    assert " ".join(cue.text.replace("\n", " ") for cue in cues) == segment.text
    assert cues[0].start_s == pytest.approx(3599.0) and cues[-1].end_s <= 3629.0
    assert "00:59:59,000 --> " in to_srt([segment]) and "01:00:" in to_srt([segment])


def test_vtt_escapes_markup_and_srt_rejects_garbage() -> None:
    vtt = to_vtt([Segment("Tom & <Jerry>", 0.0, 1.25, ())])
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nTom &amp; &lt;Jerry&gt;\n"
    with pytest.raises(ValueError, match="block 2"):
        parse_srt("1\n00:00:00,000 --> 00:00:01,000\nfine\n\n2\n00:00:01 --> 00:00:02\nbad\n")


def test_voice_activity_finds_speech_not_silence_or_noise(speech: np.ndarray) -> None:
    duration = len(speech) / SAMPLE_RATE
    spans = speech_segments(speech)
    assert spans, "no speech found"
    assert spans[0][0] > PAD_S * 0.8 and spans[-1][1] < duration - PAD_S * 0.8
    assert sum(end - start for start, end in spans) > 0.7 * (duration - 2 * PAD_S)
    assert speech_segments(np.zeros(3 * SAMPLE_RATE, np.float32)) == []
    noise = np.random.default_rng(0).normal(0, 0.003, 3 * SAMPLE_RATE).astype(np.float32)
    assert speech_segments(noise) == []


@pytest.mark.parametrize(
    ("expected", "detected", "same"),
    [
        ("pt-BR", "pt", True),
        ("zh-Hans", "zh", True),
        ("cmn", "zh", True),
        ("en-US", "en", True),
        ("he", "iw", True),  # Whisper's older code for Hebrew
        ("jv", "jw", True),  # Whisper's code for Javanese
        ("de", "en", False),
        ("pt", "es", False),
    ],
)
def test_language_matches(expected: str, detected: str, same: bool) -> None:
    assert language_matches(expected, detected) is same


def test_model_names_and_paths(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = resolve_model(PACKAGED_MODEL)
    assert resolve_model(packaged) == packaged  # a local directory is used as is
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        Transcriber(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no model.bin"):
        resolve_model(str(tmp_path))
    # As on an air-gapped machine, whatever this one's network: an empty cache, downloads off.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="'small.en'.*local CTranslate2 Whisper model directory"):
        resolve_model("small.en")
