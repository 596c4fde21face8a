"""Text -> visemes (espeak-ng), forced alignment (Viterbi) and text stretches (transcript, script)."""

from __future__ import annotations

import numpy as np
import pytest

from dubline.stages.coeffs.alignment import align
from dubline.stages.coeffs.model import SpeechAnalysis
from dubline.stages.coeffs.mouth import DubText, drive_mouth
from dubline.stages.coeffs.phonetics import VisemeUnit, espeak_voice, viseme_units
from dubline.stages.coeffs.timeline import TextSpan, spans_from_script, spans_from_words
from dubline.stages.coeffs.visemes import VISEME_CLASSES
from dubline.stages.speech.script import ScriptCue


def _posteriors(runs: list[tuple[str, int]], sharpness: float = 0.9) -> np.ndarray:
    """Log-posteriors (50 per s) that say ``viseme`` for ``count`` states, run after run."""
    rows = []
    for viseme, count in runs:
        p = np.full(len(VISEME_CLASSES), (1 - sharpness) / (len(VISEME_CLASSES) - 1))
        p[VISEME_CLASSES.index(viseme)] = sharpness
        rows += [np.log(p)] * count
    return np.array(rows)


def _units(*visemes: str) -> list[VisemeUnit]:
    rest = VisemeUnit("rest", "", -1, True)
    out = [rest]
    for word, viseme in enumerate(visemes):
        out += [VisemeUnit(viseme, viseme, word, False), rest]
    return out


def test_alignment_finds_the_boundaries_and_skips_unused_rests():
    log_posteriors = _posteriors([("rest", 10), ("bilabial", 4), ("open", 12), ("alveolar", 5), ("rest", 9)])
    aligned = align(log_posteriors, _units("bilabial", "open", "alveolar"), start_s=1.0)
    assert [(u.viseme, round(u.start_s, 2), round(u.end_s, 2)) for u in aligned.units] == [
        ("rest", 1.0, 1.2), ("bilabial", 1.2, 1.28), ("open", 1.28, 1.52), ("alveolar", 1.52, 1.62), ("rest", 1.62, 1.8)]
    assert aligned.score == pytest.approx(1.0)  # the text explains every state as well as anything could


def test_a_text_that_was_not_said_scores_low():
    log_posteriors = _posteriors([("rest", 5), ("bilabial", 4), ("open", 12), ("bilabial", 4), ("open", 12), ("rest", 5)])
    said = align(log_posteriors, _units("bilabial", "open", "bilabial", "open"))
    other = align(log_posteriors, _units("velar", "close_spread", "sibilant", "rounded"))
    assert said.score > 0.95 and other.score < 0.2


def test_more_sounds_than_time_is_refused():
    with pytest.raises(ValueError, match="only 3 states"):
        align(_posteriors([("open", 3)]), _units("bilabial", "open", "alveolar", "velar"))


@pytest.mark.parametrize(("tag", "voice"), [("en", "en"), ("pt-BR", "pt-BR"), ("fr-CA", "fr"), ("zh", "cmn"),
                                            ("cmn", "cmn"), ("de-AT", "de"), ("xx", None), ("not a tag", None)])
def test_espeak_voice_for_language_tags(tag, voice):
    assert espeak_voice(tag) == voice


def test_viseme_units_of_a_text_mark_words_bilabials_and_optional_rests():
    units = viseme_units("Papa, mama.", "en")
    spoken = [u for u in units if not u.optional]
    assert [u.viseme for u in spoken][:2] == ["bilabial", "open"]
    assert sum(u.viseme == "bilabial" for u in spoken) == 4  # p, p, m, m
    assert {u.word for u in spoken} == {0, 1}
    assert units[0].optional and units[-1].optional and all(u.viseme == "rest" for u in units if u.optional)
    french = viseme_units("Bonjour à tous", espeak_voice("fr"))
    assert french[1].viseme == "bilabial" and max(u.word for u in french) == 2
    with pytest.raises(ValueError):
        viseme_units("   ", "en")


def _word(text: str, start: float, end: float) -> dict:
    return {"word": text, "start_s": start, "end_s": end}


def test_transcript_stretches_split_at_pauses():
    words = [_word(" Hello", 0.5, 0.8), _word(" there.", 0.85, 1.2), _word(" How", 2.0, 2.2), _word(" are", 2.25, 2.4)]
    assert spans_from_words(words) == [TextSpan(0.5, 1.2, "Hello there."), TextSpan(2.0, 2.4, "How are")]


def test_words_whisper_is_unsure_of_are_left_out_and_split_their_stretch():
    words = [_word(" Hello", 0.5, 0.8), _word(" there.", 0.85, 1.2), _word(" How", 1.25, 1.4), _word(" are", 1.45, 1.6)]
    sure = [{**w, "probability": p} for w, p in zip(words, (0.95, 0.9, 0.1, 0.8))]
    assert spans_from_words(sure, min_probability=0.3) == [TextSpan(0.5, 1.2, "Hello there."), TextSpan(1.45, 1.6, "are")]
    assert spans_from_words(sure) == [TextSpan(0.5, 1.6, "Hello there. How are")]  # no floor: every word
    assert spans_from_words(words, min_probability=0.3) == spans_from_words(words)  # no probability: taken as sure


def test_a_misheard_transcript_does_not_shut_the_lips_where_the_speech_is_open():
    """Espeak's French "Bonjour, mon ami." heard by Whisper base on one CPU as "pour vous, m'oubami."
    (word probabilities 0.04-0.37; real speech in video/train: median 0.89-0.99): the misheard
    m and b would shut an open mouth. Below the word floor the model alone drives."""
    open_mouth = np.tile([0.08, 0.0, 0.0, 0.0], (100, 1)).astype(np.float32)  # 2 s: an open "a" from 0.2 to 1.8 s
    analysis = SpeechAnalysis(_posteriors([("rest", 10), ("open", 80), ("rest", 10)]).astype(np.float32), open_mouth)
    heard = [{**_word(" m", 0.6, 0.8), "probability": 0.09}, {**_word(" 'oubami.", 0.8, 1.06), "probability": 0.22}]
    priors = np.log(np.full(len(VISEME_CLASSES), 1 / len(VISEME_CLASSES)))

    def drive(floor: float):
        text = DubText("transcript-aligned", spans_from_words(heard, min_probability=floor), "fr")
        return drive_mouth(analysis, priors, [text], 25.0, 50, min_score=0.0)

    trusted = drive(0.0)  # every word aligned, as before the floor: the lips shut inside the open vowel
    assert trusted.path == "transcript-aligned" and trusted.coefficients[5:45, 0].min() < 0.01
    floored = drive(0.3)
    assert (floored.path, floored.note) == ("model-only", "no transcript words sure enough to align")
    assert floored.coefficients[5:45, 0].min() > 0.07


def test_script_stretches_from_cue_times_or_from_the_transcript():
    timed = [ScriptCue(0.4, 1.3, "Bonjour tout le monde."), ScriptCue(2.0, 3.5, "Comment allez-vous ?")]
    assert spans_from_script(timed, [], 3.0) == [TextSpan(0.4, 1.3, "Bonjour tout le monde."), TextSpan(2.0, 3.0, "Comment allez-vous ?")]
    heard = [_word(" hello", 0.5, 0.8), _word(" there", 0.85, 1.2), _word(" how", 2.0, 2.2), _word(" are", 2.25, 2.4),
             _word(" you", 2.45, 2.7)]
    # The script's words take the times of the transcript words they match; a word the
    # transcript misheard ("ya") goes with its neighbours.
    untimed = [ScriptCue(None, None, "Hello there! How are ya?")]
    assert spans_from_script(untimed, heard, 3.0) == [TextSpan(0.5, 1.2, "Hello there!"), TextSpan(2.0, 2.7, "How are ya?")]
    unrelated = [ScriptCue(None, None, "Completely different words entirely")]
    assert spans_from_script(unrelated, heard, 3.0) == [TextSpan(0.0, 3.0, "Completely different words entirely")]
