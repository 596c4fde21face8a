"""Catalogues given as a folder of title folders: the convention, and one clear per-title error for
every kind of bad folder while the good titles stay valid (local folders and memory://)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dubline.schemas import storage
from dubline.schemas.catalogue import OPTION_DEFAULTS, CatalogueError
from dubline.schemas.catalogue_loader import load_catalogue

#: title folder -> files (name -> content); dummy bytes suffice, validation only opens them.
LAYOUT: dict[str, dict[str, bytes | str]] = {
    "ep01": {
        "ep01.mp4": b"video",
        "dub.fr.wav": b"fr",
        "dub.fr.srt": "1\n00:00:01,000 --> 00:00:02,000\nBonjour\n",  # fr's script; de has none
        "dub.de.flac": b"de",
        "options.yaml": "crf: 20\nstill: false\nref_pose: refs/pose.mp4\n",
        "refs/pose.mp4": b"reference video",  # in a subfolder: not a second source of the title
        "notes.txt": b"ignored",
        ".DS_Store": b"ignored",
    },
    "face": {"portrait.PNG": b"image", "dub.pt-BR.m4a": b"pt"},
    "multi_lang": {"clip.mov": b"video", "dub.fr.wav": b"fr", "dub.xx.wav": b"bad code"},
    "no_video": {"dub.fr.wav": b"fr"},
    "two_videos": {"a.mp4": b"video", "b.mkv": b"video", "dub.fr.wav": b"fr"},
    "no_dubs": {"clip.mp4": b"video", "dub-fr.wav": b"misnamed, not a dub track"},
    "unnamed_dub": {"clip.mp4": b"video", "dub.wav": b"no language"},
    "my film": {"clip.mp4": b"video", "dub.fr.wav": b"fr"},
    "twice_fr": {"clip.mp4": b"video", "dub.fr.wav": b"fr", "dub.fr.mp3": b"fr again"},
    "bad_options": {"clip.mp4": b"video", "dub.fr.wav": b"fr", "options.yaml": "crf: 99\nfoo: 1\n"},
    "missing_ref": {"clip.mp4": b"video", "dub.fr.wav": b"fr", "options.yaml": "ref_blink: blinks.mp4\n"},
    "list_options": {"clip.mp4": b"video", "dub.fr.wav": b"fr", "options.yaml": "- crf: 20\n"},
    ".hidden": {"clip.mp4": b"video", "dub.fr.wav": b"fr"},
    "script_alone": {"clip.mp4": b"video", "dub.fr.WAV": b"fr", "dub.de.vtt": "WEBVTT\n"},
    "two_scripts": {"clip.mp4": b"video", "dub.fr.wav": b"fr", "dub.fr.txt": b"text", "dub.fr.srt": b"subs",
                    "dub.de.wav": b"de"},
    "only_text": {"clip.mp4": b"video", "dub.fr.txt": b"a script is no dub track"},
}


def write_layout(root: str, layout: dict[str, dict[str, bytes | str]]) -> None:
    for title, files in layout.items():
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            storage.write_bytes(storage.join(root, title, name), data)


@pytest.fixture(params=["local", "memory"])
def folder(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        root = str(tmp_path / "catalogue")
    else:
        root = f"memory://dubline-tests/{uuid.uuid4().hex}/catalogue"
    write_layout(root, LAYOUT)
    storage.write_bytes(storage.join(root, "loose_file.txt"), b"files beside the title folders are ignored")
    yield root
    storage.remove(root)


def errors_by_title(catalogue) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for error in catalogue.errors:
        out.setdefault(error.title_id, []).append(error.problem)
    return out


def test_good_title_folders_become_entries(folder: str) -> None:
    catalogue = load_catalogue(folder)
    pairs = {(e.title_id, e.language): e for e in catalogue.entries}
    assert set(pairs) == {("ep01", "de"), ("ep01", "fr"), ("face", "pt-BR"), ("multi_lang", "fr"),
                          ("script_alone", "fr"), ("two_scripts", "de")}

    fr = pairs[("ep01", "fr")]
    assert (fr.mode, fr.source_url, fr.dub_audio_url) == ("dub", storage.join(folder, "ep01", "ep01.mp4"),
                                                           storage.join(folder, "ep01", "dub.fr.wav"))
    assert fr.dub_script_url == storage.join(folder, "ep01", "dub.fr.srt")
    assert pairs[("ep01", "de")].dub_audio_url == storage.join(folder, "ep01", "dub.de.flac")
    assert pairs[("ep01", "de")].dub_script_url is None
    # A script's extension is not taken for audio, whatever the case of the audio's extension.
    assert pairs[("script_alone", "fr")].dub_audio_url == storage.join(folder, "script_alone", "dub.fr.WAV")
    # options.yaml applies to every language of the title; file options resolve in the title folder
    assert fr.options == {**OPTION_DEFAULTS, "crf": 20, "ref_pose": storage.join(folder, "ep01", "refs", "pose.mp4")}
    face = pairs[("face", "pt-BR")]
    assert (face.mode, face.source_url) == ("avatar", storage.join(folder, "face", "portrait.PNG"))
    assert face.options == OPTION_DEFAULTS


def test_bad_title_folders_are_per_title_errors(folder: str) -> None:
    catalogue = load_catalogue(folder)
    errors = errors_by_title(catalogue)
    assert set(errors) == {"multi_lang", "no_video", "two_videos", "no_dubs", "unnamed_dub", "my film", "twice_fr",
                           "bad_options", "missing_ref", "list_options", "script_alone", "two_scripts", "only_text"}
    assert errors["multi_lang"] == ["unknown language code 'xx' (expected BCP-47 / ISO 639, e.g. 'fr', 'pt-BR')"]
    assert len(errors["no_video"]) == 1
    assert errors["no_video"][0].startswith("no video or portrait image in the title folder (video: ")
    assert errors["two_videos"] == ["more than one video or portrait image in the title folder: a.mp4, b.mkv"]
    assert errors["no_dubs"] == ["no dub tracks in the title folder (name them dub.<lang>.<ext>, e.g. dub.fr.wav)"]
    assert errors["unnamed_dub"] == ["no language in the name of dub.wav (name dub tracks dub.<lang>.<ext>, e.g. dub.fr.wav)"]
    assert len(errors["my film"]) == 1 and "'my film' is not a safe path component" in errors["my film"][0]
    assert errors["twice_fr"] == ["more than one dub track for language 'fr': dub.fr.mp3, dub.fr.wav"]
    assert any("crf=99" in p for p in errors["bad_options"]) and any("unknown option or column 'foo'" in p
                                                                     for p in errors["bad_options"])
    assert errors["missing_ref"] == [f"missing file: {storage.join(folder, 'missing_ref', 'blinks.mp4')}"]
    assert errors["list_options"] == ["options.yaml must be a mapping of option names to values"]
    assert errors["script_alone"] == [
        "dub script dub.de.vtt has no dub track beside it (dub.de.<audio ext>, e.g. dub.de.wav)"]
    assert errors["two_scripts"] == ["more than one dub script for language 'fr': dub.fr.srt, dub.fr.txt"]
    assert errors["only_text"] == [
        "dub script dub.fr.txt has no dub track beside it (dub.fr.<audio ext>, e.g. dub.fr.wav)"]
    # Rows are numbered by title folder in name order, and every message names its title.
    order = sorted(t for t in LAYOUT if not t.startswith("."))
    for error in catalogue.errors:
        assert error.row == order.index(error.title_id) + 1
        assert str(error).startswith(f"row {error.row} ({error.title_id}")


def test_language_errors_keep_the_other_languages_of_the_title(folder: str) -> None:
    catalogue = load_catalogue(folder)
    languages = {(e.title_id, e.language) for e in catalogue.errors if e.title_id in ("multi_lang", "script_alone",
                                                                                       "two_scripts", "only_text")}
    assert languages == {("multi_lang", "xx"), ("script_alone", "de"), ("two_scripts", "fr"), ("only_text", "fr")}
    assert [e.language for e in catalogue.entries if e.title_id == "multi_lang"] == ["fr"]
    assert [e.language for e in catalogue.entries if e.title_id == "two_scripts"] == ["de"]


def test_folder_url_with_a_trailing_slash_and_without_file_checks(folder: str) -> None:
    catalogue = load_catalogue(folder + "/", check_files=False)
    assert {e.title_id for e in catalogue.entries} == {"ep01", "face", "multi_lang", "missing_ref", "script_alone",
                                                       "two_scripts"}


def test_a_folder_without_title_folders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "catalogue.yaml").write_text(yaml.safe_dump([]))
    with pytest.raises(CatalogueError, match="no title folders"):
        load_catalogue(str(tmp_path))


def test_relative_local_folder(tmp_path: Path, monkeypatch) -> None:
    write_layout(str(tmp_path / "drop"), {"ep01": LAYOUT["ep01"]})
    monkeypatch.chdir(tmp_path)
    (entry, _) = load_catalogue("drop").entries
    assert entry.source_url == str(tmp_path / "drop" / "ep01" / "ep01.mp4")


def test_speaker_stems_and_binding_of_a_title_folder(tmp_path: Path) -> None:
    root = str(tmp_path / "catalogue")
    write_layout(root, {
        "talk": {"talk.mp4": b"video", "dub.fr.wav": b"mix", "dub.fr.S1.wav": b"s1", "dub.fr.S2.flac": b"s2",
                 "dub.de.wav": b"mix", "speakers.csv": "shot,track,speaker\n0,0,S1\n0,1,S2\n"},
        "stem_alone": {"clip.mp4": b"video", "dub.fr.wav": b"mix", "dub.de.S1.wav": b"no mix beside it",
                       "dub.fr.S1.srt": b"a script per speaker"},
        "unknown": {"clip.mp4": b"video", "dub.fr.wav": b"mix", "dub.fr.S1.wav": b"s1", "dub.fr.S3.wav": b"s3",
                    "speakers.yaml": "- {shot: 0, track: 0, speaker: S1}\n"},
    })
    catalogue = load_catalogue(root)
    entries = {(e.title_id, e.language): e for e in catalogue.entries}
    assert set(entries) == {("talk", "fr"), ("talk", "de")}
    fr = entries[("talk", "fr")].options
    assert fr["dub_speakers"] == {"S1": storage.join(root, "talk", "dub.fr.S1.wav"),
                                  "S2": storage.join(root, "talk", "dub.fr.S2.flac")}
    assert fr["speaker_binding"] == storage.join(root, "talk", "speakers.csv")
    # German has no stems: its mix drives the faces the binding names, by active speaker detection.
    assert entries[("talk", "de")].options["dub_speakers"] is None
    errors = {(e.title_id, e.language): e.problem for e in catalogue.errors}
    assert errors == {
        ("stem_alone", "de"): "dub stem dub.de.S1.wav has no dub track beside it (dub.de.<audio ext>, the mix of every speaker)",
        ("stem_alone", "fr"): "dub script dub.fr.S1.srt: scripts are per language (dub.<lang>.txt|srt|vtt), not per speaker",
        ("unknown", "fr"): f"dub stem for unknown speaker 'S3': the speaker binding "
                           f"{storage.join(root, 'unknown', 'speakers.yaml')} binds no face to it (speakers bound: S1)",
    }
