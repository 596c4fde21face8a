"""The dub-language check on real speech (../shared/data/audio, skipped without it): Whisper's
default multilingual model flags French speech catalogued as English and passes real English
(the control), and an English-only model skips other languages; the stage's stats say which
happened. (German behaves as French: detected "de" at p = 0.99; left out to save time.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dubline.flows.demo import astronaut, write_portrait_clip
from dubline.stages.base import StageJob
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from tests.test_audio_stage import analyse

SAMPLE_DATA = Path(os.environ.get("DUBLINE_SAMPLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
AUDIO = SAMPLE_DATA / "audio"
#: Real speech and words heard in it (the clips' content; any transcript in the right language has them).
SPEECH = {"fr": ("fr_speech.wav", "habitude"), "en": ("en_radio.wav", "holidays")}
MISMATCH = "dub language differs from the catalogue"
ENGLISH_ONLY = "Whisper model is English-only (no subtitles for other languages)"
NOT_CHECKED = "dub language not checked (English-only Whisper model)"

pytestmark = pytest.mark.skipif(not all((AUDIO / f).exists() for f, _ in SPEECH.values()), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def titles_url(tmp_path_factory):
    """A silent 8 s picture: each sample clip's speech (6.7 and 8.0 s) is within the tolerance of its length."""
    folder = tmp_path_factory.mktemp("language")
    write_portrait_clip(folder / "clip.mp4", [astronaut()], 8.0, fps=25, size=64)
    url = str(folder / "titles.parquet")
    SequentialRunner().run(StageJob(ProbeStage, {}, url, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(folder / "clip.mp4")},)))
    return url


@pytest.mark.parametrize("spoken", ["fr", "en"])
def test_real_speech_catalogued_as_english_is_flagged_unless_it_is_english(titles_url, tmp_path, spoken):
    name, word = SPEECH[spoken]
    track, stats = analyse(titles_url, AUDIO / name, tmp_path, language="en", whisper_model="base-packaged")
    assert track["detected_language"] == spoken and track["language_probability"] >= 0.9
    assert track["language_matches"] == (spoken == "en")
    assert stats.dropped.get(MISMATCH, 0) == (spoken != "en")
    # Whisper is sure of what it hears, so the transcript (and subtitles) are in that language.
    assert track["transcript_language"] == spoken and word in track["transcript"].lower()
    assert word in (tmp_path / "t.en.srt").read_text().lower()


def test_an_english_only_model_skips_other_languages_and_says_so(titles_url, tmp_path):
    name, _ = SPEECH["fr"]
    track, stats = analyse(titles_url, AUDIO / name, tmp_path, language="fr", whisper_model="tiny.en-packaged")
    assert stats.dropped == {ENGLISH_ONLY: 1}
    assert track["transcript"] is None and track["words"] is None and track["language_matches"] is None
    assert not (tmp_path / "t.fr.srt").exists() and not (tmp_path / "t.fr.vtt").exists()
    # The control: the same model on the real English clip catalogued as English transcribes it.
    name, word = SPEECH["en"]
    english, stats = analyse(titles_url, AUDIO / name, tmp_path / "en", language="en", whisper_model="tiny.en-packaged")
    assert ENGLISH_ONLY not in stats.dropped and word in english["transcript"].lower()


def test_an_english_only_model_does_not_claim_to_have_checked_the_language(titles_url, tmp_path):
    """French speech catalogued as English: an English-only model transcribes it (as English, the
    only language it has) but cannot tell French from English, so the manifest says the language
    was not checked; before, it said detected "en", p = 1.00, matches the catalogue."""
    name, _ = SPEECH["fr"]
    track, stats = analyse(titles_url, AUDIO / name, tmp_path, language="en", whisper_model="tiny.en-packaged")
    assert stats.dropped == {NOT_CHECKED: 1} and track["transcript"]
    assert track["language_matches"] is None and track["detected_language"] is None and track["language_probability"] is None


def test_the_language_check_and_the_transcript_share_the_first_windows_encode(monkeypatch):
    """Detection hands Whisper the log-mel that transcription's first 30 s window has, so a short
    dub is encoded once, not twice (one encode is ~0.35 s of its ~2 s of audio analysis on CPU)."""
    import faster_whisper

    from dubline.stages.media import read_audio
    from dubline.stages.speech.transcribe import Transcriber
    from dubline.stages.speech.whisper_models import BASE_PACKAGED

    encodes = []
    plain_encode = faster_whisper.WhisperModel.encode
    monkeypatch.setattr(faster_whisper.WhisperModel, "encode", lambda model, features: encodes.append(1) or plain_encode(model, features))
    transcriber = Transcriber(BASE_PACKAGED)
    speech = read_audio(str(AUDIO / SPEECH["fr"][0]), 16_000)
    assert transcriber.detect_language(speech)[0] == "fr"
    assert SPEECH["fr"][1] in transcriber.transcribe(speech, language="fr").text.lower()
    assert len(encodes) == 1
