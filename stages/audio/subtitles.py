"""Subtitles from transcript segments: SRT and WebVTT writers, and an SRT reader."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dubline.stages.speech.transcribe import Segment

MAX_CUE_S = 7.0
LINE_CHARS = 42  # the usual broadcast limit per line, two lines per cue
MAX_CUE_CHARS = 2 * LINE_CHARS
_SRT_TIMES = re.compile(
    r"(\d+):([0-5]\d):([0-5]\d),(\d{3}) --> (\d+):([0-5]\d):([0-5]\d),(\d{3})$"
)


@dataclass(frozen=True)
class Cue:
    index: int  # from 1
    start_s: float
    end_s: float
    text: str  # lines joined by "\n"


def _timed_tokens(segment: Segment) -> list[tuple[str, float, float]]:
    """(text with its leading space, start, end) per word: Whisper's word times when present,
    else times spread over the segment in proportion to characters."""
    if segment.words:
        return [(w.word, w.start_s, w.end_s) for w in segment.words]
    tokens = segment.text.split()
    total = sum(len(token) for token in tokens) or 1
    rate = (segment.end_s - segment.start_s) / total
    timed, elapsed = [], 0
    for token in tokens:
        start = segment.start_s + elapsed * rate
        elapsed += len(token)
        timed.append((" " + token, start, segment.start_s + elapsed * rate))
    return timed


def _joined(tokens: list[tuple[str, float, float]]) -> tuple[str, float, float]:
    return "".join(text for text, _, _ in tokens).strip(), tokens[0][1], tokens[-1][2]


def _wrap(text: str) -> str:
    """Text over one line's length broken in two at the space nearest its middle."""
    spaces = [i for i, char in enumerate(text) if char == " "]
    if len(text) <= LINE_CHARS or not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return text[:cut] + "\n" + text[cut + 1 :]


def cues(segments: Sequence[Segment]) -> list[Cue]:
    """Numbered cues of at most ``MAX_CUE_S`` and ``MAX_CUE_CHARS`` each (a single longer word
    stays whole), split between words; times made monotonic, as players expect."""
    spans: list[tuple[str, float, float]] = []
    for segment in segments:
        text = " ".join(segment.text.split())  # a newline inside would end an SRT cue early
        if not text:
            continue
        if segment.end_s - segment.start_s <= MAX_CUE_S and len(text) <= MAX_CUE_CHARS:
            spans.append((text, segment.start_s, segment.end_s))
            continue
        group: list[tuple[str, float, float]] = []
        for token in _timed_tokens(segment):
            if group and (
                token[2] - group[0][1] > MAX_CUE_S or len(_joined(group + [token])[0]) > MAX_CUE_CHARS
            ):
                spans.append(_joined(group))
                group = []
            group.append(token)
        spans.append(_joined(group))
    result: list[Cue] = []
    previous_end = 0.0
    for text, start, end in spans:
        start = max(start, previous_end)
        previous_end = max(end, start)
        result.append(Cue(len(result) + 1, start, previous_end, _wrap(text)))
    return result


def _timestamp(seconds: float, separator: str) -> str:
    hours, rest = divmod(round(seconds * 1000), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip text; no segments give an empty file."""
    return "\n".join(
        f"{cue.index}\n{_timestamp(cue.start_s, ',')} --> {_timestamp(cue.end_s, ',')}\n{cue.text}\n"
        for cue in cues(segments)
    )


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT text; no segments give just the header."""
    blocks = [
        f"{_timestamp(cue.start_s, '.')} --> {_timestamp(cue.end_s, '.')}\n"
        # cue text is HTML-like markup in WebVTT, so these three must be escaped
        + cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        + "\n"
        for cue in cues(segments)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def parse_srt(text: str) -> list[Cue]:
    """Cues of SubRip text; ValueError naming the first malformed block."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").strip()
    result = []
    for number, block in enumerate(re.split(r"\n[ \t]*\n", text) if text else [], start=1):
        lines = block.strip("\n").split("\n")
        times = _SRT_TIMES.match(lines[1].strip()) if len(lines) >= 3 else None
        if times is None or not lines[0].strip().isdigit():
            raise ValueError(f"SRT block {number} is not index, times, text: {block!r}")
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, times.groups())
        result.append(Cue(
            int(lines[0]),
            h1 * 3600 + m1 * 60 + s1 + ms1 / 1000,
            h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
            "\n".join(lines[2:]),
        ))
    return result
