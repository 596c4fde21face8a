"""Dub scripts: the studio's text of a dub, read as the words actually spoken.

A script is plain text (``.txt``) or subtitles (``.srt`` SubRip, ``.vtt`` WebVTT), UTF-8 (a byte
order mark is tolerated, and UTF-16 with one). From subtitles only what is spoken is kept: cue
numbers, timestamps, WebVTT headers and NOTE/STYLE/REGION blocks, inline markup (``<i>``,
``<c.x>``, ``<v Name>``, ruby readings, ``{\\an8}``), speaker labels (``- `` dialogue dashes,
``JOHN:``) and non-speech annotations (``[door slams]``, ``(laughs)``, ``♪``) are removed.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from dubline.schemas import storage
from dubline.schemas.catalogue import script_extension_problem


@dataclass(frozen=True)
class ScriptCue:
    """One stretch of a script's spoken text; times in seconds from the start of the dub audio,
    or None when the script has none (plain text)."""

    start_s: float | None
    end_s: float | None
    text: str


# [hh:]mm:ss,mmm (SubRip) or [hh:]mm:ss.mmm (WebVTT); some tools write the other separator.
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_VTT_SKIPPED_BLOCKS = re.compile(r"^(?:NOTE|STYLE|REGION)(?:[ \t]|$)")
_RUBY_READING = re.compile(r"<rt>.*?</rt>", re.DOTALL)  # furigana: a reading of the text, not more text
_TAG = re.compile(r"<[^>\n]*>")  # <i>, </b>, <c.yellow>, <v Roger>, <00:00:01.500>, <font ...>
_ASS_OVERRIDE = re.compile(r"\{\\[^}]*\}")  # {\an8}, {\i1}: SSA/ASS codes that players accept in SRT
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|（[^）]*）")  # sound and tone notes, e.g. [door slams] (laughs)
_DIALOGUE_DASH = re.compile(r"^[ \t]*[-‐–—](?!\d)[ \t]*")  # not the minus of "-5 degrees"
_SPEAKER_LABEL = re.compile(r"^[ \t]*([^\s:][^:\n]{0,30}):[ \t]+")
_MUSIC = re.compile(r"[♪♫]")


def script_format(url: str) -> str:
    """The script format of ``url`` from its extension: "txt", "srt" or "vtt"; ValueError otherwise."""
    if problem := script_extension_problem(url):
        raise ValueError(problem)
    return url.rsplit(".", 1)[-1].lower()


def read_script(url: str) -> str:
    """The spoken text of the dub script at ``url`` (any fsspec URL), cues in time order, joined
    by single spaces.

    Raises ValueError naming ``url`` when the file is of an unknown format, is not UTF-8 (or
    UTF-16 with a byte order mark) text, is malformed subtitles, or holds no spoken text; OSError
    (e.g. FileNotFoundError) when it cannot be read.
    """
    return " ".join(cue.text for cue in read_script_cues(url))


def read_script_cues(url: str) -> list[ScriptCue]:
    """The cues of the dub script at ``url`` in time order, each with its spoken text (non-empty).

    Subtitles give one cue per subtitle that holds speech, with its times; plain text gives one
    cue without times. Errors as ``read_script``.
    """
    fmt = script_format(url)
    text = decode_script(storage.read_bytes(url), url)
    try:
        cues = parse_script(text, fmt)
    except ValueError as exc:
        raise ValueError(f"dub script {url}: {exc}") from exc
    if not cues:
        raise ValueError(f"dub script {url}: no spoken text in it")
    return cues


def decode_script(data: bytes, url: str) -> str:
    """Script bytes as text: UTF-8 (byte order mark dropped), or UTF-16 when it starts with one."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Windows "Unicode" text and subtitle exports
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"dub script {url}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8") from exc


def parse_script(text: str, fmt: str) -> list[ScriptCue]:
    """Cues with spoken text of a script's ``text`` in format ``fmt`` ("txt", "srt" or "vtt"),
    in time order; ValueError for malformed subtitles."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if fmt == "txt":
        plain = " ".join(text.split())
        return [ScriptCue(None, None, plain)] if plain else []
    if fmt not in ("srt", "vtt"):
        raise ValueError(f"unknown script format {fmt!r}")
    return _subtitle_cues(text, vtt=fmt == "vtt" or text.lstrip().startswith("WEBVTT"))


def _subtitle_cues(text: str, vtt: bool) -> list[ScriptCue]:
    blocks = [b for b in re.split(r"\n[ \t]*\n", text.strip()) if b.strip()] if text.strip() else []
    if vtt:
        if not blocks or not re.match(r"WEBVTT(?:[ \t\n]|$)", blocks[0]):
            raise ValueError("a WebVTT file must start with the line WEBVTT")
        blocks = blocks[1:]
    cues = []
    for number, block in enumerate(blocks, start=1):
        lines = block.strip("\n").split("\n")
        if vtt and _VTT_SKIPPED_BLOCKS.match(lines[0]):
            continue
        # SubRip: index, times, text. WebVTT: optional identifier, times, text.
        timing = next((i for i, line in enumerate(lines[:2]) if "-->" in line), None)
        times = _TIMING.match(lines[timing]) if timing is not None else None
        if times is None:
            raise ValueError(f"subtitle block {number} has no 'start --> end' time line: {block[:80]!r}")
        spoken = _spoken(lines[timing + 1:], vtt)
        if spoken:
            cues.append(ScriptCue(_seconds(times.groups()[:4]), _seconds(times.groups()[4:]), spoken))
    return sorted(cues, key=lambda cue: cue.start_s)  # stable: cues starting together keep file order


def _seconds(parts: tuple[str | None, ...]) -> float:
    hours, minutes, seconds, fraction = parts
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000


def _spoken(lines: list[str], vtt: bool) -> str:
    """The words spoken in a cue's text lines, on one line."""
    text = _ASS_OVERRIDE.sub("", _TAG.sub("", _RUBY_READING.sub("", "\n".join(lines))))
    if vtt:
        text = html.unescape(text)  # WebVTT escapes &amp; &lt; &gt; and has &nbsp; &lrm; ...
    words = []
    for line in _MUSIC.sub(" ", _ANNOTATION.sub("", text)).split("\n"):
        line = _DIALOGUE_DASH.sub("", line)
        label = _SPEAKER_LABEL.match(line)
        if label and label.group(1).isupper():  # "JOHN:" is a label; "Note: ..." is speech
            line = line[label.end():]
        words.extend(line.split())
    return " ".join(words)
