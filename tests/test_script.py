"""Dub scripts: plain text, SubRip and WebVTT read as the words spoken, with their cue times;
markup, labels and annotations gone; clear errors for files that are no script."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dubline.schemas import storage
from dubline.stages.speech.script import ScriptCue, parse_script, read_script, read_script_cues

# A French SubRip file as subtitle tools write it: CRLF line endings, a byte order mark, italics,
# an ASS position code, dialogue dashes, a speaker label, a sound note, a two-line cue, and the
# cues out of time order (cue 3 starts before cue 2).
FRENCH_SRT = (
    "\ufeff1\r\n"
    "00:00:01,200 --> 00:00:03,000\r\n"
    "<i>Bonjour</i> à tous, ça va ?\r\n"
    "\r\n"
    "2\r\n"
    "00:00:06,500 --> 00:00:09,750\r\n"
    "{\\an8}- MARIE: Où est l'été ?\r\n"
    "- Là-bas, près de la fenêtre.\r\n"
    "\r\n"
    "3\r\n"
    "00:00:03,500 --> 00:00:05,000\r\n"
    "[porte qui claque]\r\n"
    "Déjà <b>fini</b> ?\r\n"
)

# WebVTT in German: header with a title, NOTE and STYLE blocks, cue identifiers and settings,
# class and voice spans, an inline timestamp, entities, a cue of only music, hours left out.
GERMAN_VTT = """WEBVTT - Synchronfassung

NOTE Diese Datei ist für die
Synchronisation bestimmt.

STYLE
::cue(.gelb) { color: yellow }

eins
00:00.500 --> 00:02.250 align:start position:10%
<v Jürgen>Grüß Gott, <c.gelb>schöne</c> Grüße!</v>

00:02.500 --> 00:04.000
♪ ♪

zwei
00:04.000 --> 00:06.000
Straße &amp; Brücke <00:00:05.000>müssen
&lt;heute&gt; fertig sein.
"""

JAPANESE_VTT = """WEBVTT

00:00:01.000 --> 00:00:02.500
<ruby>今日<rt>きょう</rt></ruby>は（笑）いい天気ですね。

00:00:03.000 --> 00:00:04.000
- そうですね。
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def write(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def test_srt_gives_the_spoken_words_in_time_order(folder: Path) -> None:
    url = write(folder, "fr.srt", FRENCH_SRT)
    assert read_script_cues(url) == [
        ScriptCue(1.2, 3.0, "Bonjour à tous, ça va ?"),
        ScriptCue(3.5, 5.0, "Déjà fini ?"),
        ScriptCue(6.5, 9.75, "Où est l'été ? Là-bas, près de la fenêtre."),
    ]
    assert read_script(url) == "Bonjour à tous, ça va ? Déjà fini ? Où est l'été ? Là-bas, près de la fenêtre."


def test_vtt_skips_header_notes_styles_and_markup(folder: Path) -> None:
    url = write(folder, "de.vtt", GERMAN_VTT)
    assert read_script_cues(url) == [
        ScriptCue(0.5, 2.25, "Grüß Gott, schöne Grüße!"),
        ScriptCue(4.0, 6.0, "Straße & Brücke müssen <heute> fertig sein."),
    ]  # the music-only cue holds no speech


def test_japanese_vtt_keeps_the_text_and_drops_ruby_readings_and_notes(folder: Path) -> None:
    cues = read_script_cues(write(folder, "ja.vtt", JAPANESE_VTT))
    assert [c.text for c in cues] == ["今日はいい天気ですね。", "そうですね。"]
    assert (cues[0].start_s, cues[0].end_s, cues[1].start_s) == (1.0, 2.5, 3.0)


def test_plain_text_is_one_untimed_cue_with_whitespace_normalised(folder: Path) -> None:
    url = write(folder, "fr.txt", "\ufeff  Bonjour à tous.\r\n\r\n\tÇa va ?  Très bien.\n")
    assert read_script_cues(url) == [ScriptCue(None, None, "Bonjour à tous. Ça va ? Très bien.")]
    assert read_script(url) == "Bonjour à tous. Ça va ? Très bien."


def test_plain_text_keeps_brackets_and_labels_as_written(folder: Path) -> None:
    # Only subtitles have conventions for non-speech; a plain script is the text as is.
    assert read_script(write(folder, "en.txt", "JOHN: (softly) Hello")) == "JOHN: (softly) Hello"


def test_utf16_with_a_byte_order_mark_is_read(folder: Path) -> None:
    url = write(folder, "de.srt", "1\r\n00:00:01,000 --> 00:00:02,000\r\nÜbung macht den Meister\r\n".encode("utf-16"))
    assert read_script(url) == "Übung macht den Meister"


def test_a_subtitle_file_with_the_other_extension_is_still_read() -> None:
    # Times with '.' in SubRip and a WebVTT header in a .srt file: both are common tool output.
    assert parse_script("1\n00:00:01.000 --> 00:00:02.000\nHallo\n", "srt") == [ScriptCue(1.0, 2.0, "Hallo")]
    assert parse_script("WEBVTT\n\n00:01.000 --> 00:02.000\nHallo\n", "srt") == [ScriptCue(1.0, 2.0, "Hallo")]


def test_speech_that_merely_looks_like_a_label_or_a_dash_is_kept() -> None:
    (cue,) = parse_script("1\n00:00:01,000 --> 00:00:02,000\nNote: the time is 10:30\n-5 degrees\n", "srt")
    assert cue.text == "Note: the time is 10:30 -5 degrees"


def test_scripts_on_any_fsspec_url() -> None:
    url = f"memory://dubline-tests/{uuid.uuid4().hex}/fr.srt"
    try:
        storage.write_text(url, FRENCH_SRT)
        assert read_script(url).startswith("Bonjour à tous")
    finally:
        storage.remove(url)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("fr.txt", "Bonjour, ça va ?".encode("latin-1"), "not UTF-8 text (byte 0xe7 at offset 9); save it as UTF-8"),
        ("fr.txt", " \r\n\t\n", "no spoken text in it"),
        ("fr.srt", "", "no spoken text in it"),
        ("fr.srt", "1\n00:00:01,000 --> 00:00:02,000\n[musique]\n", "no spoken text in it"),
        ("fr.vtt", "WEBVTT\n\nNOTE rien\n", "no spoken text in it"),
        ("fr.vtt", "00:01.000 --> 00:02.000\nBonjour\n", "a WebVTT file must start with the line WEBVTT"),
        ("fr.srt", "1\n00:00:01,000 --> 00:00:02,000\nBonjour\n\nAu revoir\n",
         "subtitle block 2 has no 'start --> end' time line: 'Au revoir'"),
        ("fr.docx", "Bonjour", "unknown script format '.docx' (use .txt, .srt, .vtt)"),
    ],
    ids=["latin-1", "blank-text", "empty-srt", "only-annotations", "only-notes", "vtt-without-header",
         "block-without-times", "unknown-format"],
)
def test_a_file_that_is_no_script_is_a_clear_error(folder: Path, name: str, content: str | bytes, problem: str) -> None:
    url = write(folder, name, content)
    with pytest.raises(ValueError) as info:
        read_script(url)
    assert str(info.value).startswith("dub script ") and url in str(info.value)
    assert str(info.value).endswith(problem)


def test_a_missing_script_raises_file_not_found(folder: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_script(str(folder / "nope.srt"))
