"""The viseme timeline of a dub from its text: the studio's script, or Whisper's transcript.

Text is aligned stretch by stretch (``TextSpan``: roughly where a line is said), each in a window
a little wider than its stretch, so that the aligner's work grows with the length of the dub, not
with its square:
- transcript: Whisper's words, grouped into stretches at pauses;
- script with cue times (.srt/.vtt): one stretch per cue;
- script without times (.txt): the script's words are matched to the transcript's (difflib) and
  take the stretch of the transcript words they match; with no transcript the whole dub is one
  stretch, if it is short enough to align in one piece.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dubline.stages.coeffs.alignment import AlignedUnit, Alignment, align
from dubline.stages.coeffs.phonetics import viseme_units
from dubline.stages.speech.features import STATE_RATE
from dubline.stages.speech.script import ScriptCue

if TYPE_CHECKING:  # the model module imports PyTorch, which the flow's driver does not need
    from dubline.stages.coeffs.model import SpeechAnalysis

_MARGIN_S = 0.4  # a stretch's window reaches this far beyond its own times
_MAX_GAP_S = 0.35  # a pause this long between transcript words starts a new stretch
_MAX_SPAN_S = 12.0
_MAX_CELLS = 60_000_000  # states × units the aligner may take on in one piece (~60 MB of back-pointers)


@dataclass(frozen=True)
class TextSpan:
    start_s: float
    end_s: float
    text: str


def _normalise(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def spans_from_words(words: Sequence[dict], min_probability: float = 0.0, max_gap_s: float = _MAX_GAP_S,
                     max_span_s: float = _MAX_SPAN_S) -> list[TextSpan]:
    """Transcript words (dicts with word, start_s, end_s and optionally probability) -> stretches
    split at pauses.

    A word Whisper gave a probability below ``min_probability`` is left out and splits its
    stretch: a misheard word must not put its phones (a wrong p/b/m shuts the lips) where the
    speech says something else; the model alone drives its time.
    """
    spans: list[TextSpan] = []
    current: list[dict] = []
    for word in words:
        probability = word.get("probability")
        unsure = probability is not None and probability < min_probability
        if current and (unsure or word["start_s"] - current[-1]["end_s"] > max_gap_s
                        or word["end_s"] - current[0]["start_s"] > max_span_s):
            spans.append(_span(current))
            current = []
        if not unsure:
            current.append(word)
    if current:
        spans.append(_span(current))
    return [s for s in spans if s.text.strip()]


def _span(words: list[dict]) -> TextSpan:
    return TextSpan(words[0]["start_s"], words[-1]["end_s"], "".join(w["word"] for w in words).strip())


def spans_from_script(cues: Sequence[ScriptCue], words: Sequence[dict], duration_s: float) -> list[TextSpan]:
    """A script's stretches: its cue times when it has them, else times matched from the transcript."""
    if all(c.start_s is not None and c.end_s is not None for c in cues):
        return [TextSpan(max(0.0, c.start_s), min(duration_s, c.end_s), c.text) for c in cues if c.start_s < duration_s]
    script_words = " ".join(c.text for c in cues).split()
    transcript = spans_from_words(words)
    if not transcript:
        return [TextSpan(0.0, duration_s, " ".join(script_words))]
    heard = [(_normalise(w["word"]), index) for index, span in enumerate(transcript) for w in _span_words(words, span)]
    matcher = difflib.SequenceMatcher(a=[_normalise(w) for w in script_words], b=[h for h, _ in heard], autojunk=False)
    span_of = np.full(len(script_words), -1)
    for block in matcher.get_matching_blocks():
        span_of[block.a : block.a + block.size] = [heard[block.b + k][1] for k in range(block.size)]
    if (span_of >= 0).mean() < 0.3:  # hardly any words in common: no anchors to trust
        return [TextSpan(0.0, duration_s, " ".join(script_words))]
    # Unmatched script words go with the stretch of the matched word before them (or after, at the start).
    known = np.flatnonzero(span_of >= 0)
    span_of = span_of[known[np.clip(np.searchsorted(known, np.arange(len(span_of)), side="right") - 1, 0, None)]]
    grouped: dict[int, list[str]] = {}
    for word, index in zip(script_words, span_of):
        grouped.setdefault(int(index), []).append(word)
    return [TextSpan(transcript[i].start_s, transcript[i].end_s, " ".join(ws)) for i, ws in sorted(grouped.items())]


def _span_words(words: Sequence[dict], span: TextSpan) -> list[dict]:
    return [w for w in words if span.start_s <= w["start_s"] and w["end_s"] <= span.end_s]


def align_spans(analysis: SpeechAnalysis, spans: Sequence[TextSpan], voice: str, log_priors: np.ndarray) -> Alignment:
    """Align every stretch in its window; one ``Alignment`` (units in time order, score weighted by
    the states each stretch covered). Raises ValueError when no stretch could be aligned."""
    units: list[AlignedUnit] = []
    weighted, states_total = 0.0, 0
    floor = 0
    count = len(analysis.log_posteriors)
    for span in spans:
        first = max(floor, int((span.start_s - _MARGIN_S) * STATE_RATE))
        stop = min(count, int(np.ceil((span.end_s + _MARGIN_S) * STATE_RATE)))
        if stop - first < 2:
            continue
        try:
            text_units = viseme_units(span.text, voice)
        except ValueError:
            continue  # nothing pronounceable (numbers-only cue, music notes...)
        if (stop - first) * len(text_units) > _MAX_CELLS:
            raise ValueError(f"a stretch of {(stop - first) / STATE_RATE:.0f} s with {len(text_units)} units is too long "
                             "to align in one piece; give the script cue times (.srt/.vtt) or a transcript")
        try:
            aligned = align(analysis.log_posteriors[first:stop], text_units, first / STATE_RATE, log_priors)
        except ValueError:
            continue  # more sounds than time: the stretch's times are wrong; leave it out
        units += aligned.units
        weighted += aligned.score * (stop - first)
        states_total += stop - first
        spoken = [u.end_s for u in aligned.units if u.viseme != "rest"]
        floor = int(round(spoken[-1] * STATE_RATE)) if spoken else floor  # the next window may use the trailing pause
    if not states_total:
        raise ValueError("no stretch of the text could be aligned to the audio")
    return Alignment(tuple(units), weighted / states_total)
