"""Text -> the sequence of visemes a speaker makes saying it, for forced alignment.

Phonemes come from espeak-ng's pronunciation rules and dictionaries (about 100 languages, the
``espeakng-loader`` wheel): the text is spoken once with the language's voice and its phoneme
events are kept, each with the word it belongs to. Consecutive phonemes of one word that share a
viseme class become one unit (their mouth targets are the same, so splitting them adds nothing
the aligner could get right). Silence ("rest") units may be inserted before, between and after
words: the aligner can use them where the speaker pauses, or skip them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import langcodes

from dubline.stages.coeffs.visemes import espeak_viseme
from dubline.stages.speech.espeak import list_voices, synthesize

#: espeak voices for languages whose BCP-47 tag is not a voice name of its own.
_VOICE_ALIASES = {"zh": "cmn", "yue": "yue", "nn": "nb", "no": "nb", "iw": "he", "jw": "id", "fil": "id"}


@dataclass(frozen=True)
class VisemeUnit:
    viseme: str  # a class of ``visemes.VISEMES``
    phonemes: str  # the espeak mnemonics it covers, space-separated ("" for rest)
    word: int  # index of the word in the text (-1 for rest)
    optional: bool  # may last zero frames (pauses)


@functools.cache
def _voices() -> frozenset[str]:
    return frozenset(list_voices())


def espeak_voice(language: str) -> str | None:
    """espeak-ng voice for a BCP-47 tag ("pt-BR" -> "pt-BR", "fr-CA" -> "fr", "zh" -> "cmn"), or None."""
    try:
        tag = langcodes.standardize_tag(language, macro=True)
    except (ValueError, langcodes.tag_parser.LanguageTagError):
        return None
    parsed = langcodes.Language.get(tag)
    primary = _VOICE_ALIASES.get(parsed.language, parsed.language)
    voices = {v.lower(): v for v in _voices()}
    for candidate in (f"{primary}-{parsed.territory}" if parsed.territory else None, primary):
        if candidate and candidate.lower() in voices:
            return voices[candidate.lower()]
    return None


def viseme_units(text: str, voice: str) -> list[VisemeUnit]:
    """The units of ``text`` in speaking order, with optional rests around and between words.

    Raises ValueError for text that gives no phonemes (empty, or nothing espeak can pronounce).
    """
    if not text.strip():
        raise ValueError("no text to align")
    speech = synthesize(text, voice)
    rest = VisemeUnit("rest", "", -1, True)
    units: list[VisemeUnit] = [rest]
    positions: list[int] = []
    for event in speech.phonemes:
        viseme = espeak_viseme(event.phoneme)
        if viseme == "rest":
            continue  # espeak's own pauses: the optional rests between words cover them
        if event.text_position not in positions:
            positions.append(event.text_position)
            if len(positions) > 1:
                units.append(rest)
        word = len(positions) - 1
        last = units[-1]
        if last.word == word and last.viseme == viseme:
            units[-1] = VisemeUnit(viseme, f"{last.phonemes} {event.phoneme}", word, False)
        else:
            units.append(VisemeUnit(viseme, event.phoneme, word, False))
    if not positions:
        raise ValueError(f"espeak-ng voice {voice!r} found nothing to pronounce in the text")
    units.append(rest)
    return units
