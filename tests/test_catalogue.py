"""Catalogue loading and validation: the three file formats, path resolution, and one clear
per-row error for every kind of bad row while the good rows stay valid."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dubline.schemas import storage
from dubline.schemas.catalogue import OPTION_DEFAULTS, Catalogue, CatalogueEntry, CatalogueError
from dubline.schemas.catalogue_loader import load_catalogue
from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import CATALOGUE

MEDIA = ("ep01.mp4", "ep02.mp4", "face.png", "ep01.fr.wav", "ep01.de.wav", "ep02.fr.wav", "face.en.wav",
         "ep01.fr.srt", "face.en.txt", "ep02.fr.vtt")

GOOD_ROWS = [
    {"title_id": "ep01", "video": "ep01.mp4", "language": "fr", "dub_audio": "ep01.fr.wav", "crf": 20},
    {"title_id": "ep01", "video": "ep01.mp4", "language": "de", "dub_audio": "ep01.de.wav", "crf": 20},
    {"title_id": "face", "portrait": "face.png", "language": "en", "dub_audio": "face.en.wav"},
]
GOOD = {"title_id": "ep02", "video": "ep02.mp4", "language": "fr", "dub_audio": "ep02.fr.wav"}


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A catalogue folder with small dummy media files (validation only opens them)."""
    for name in MEDIA:
        (tmp_path / name).write_bytes(b"dummy " + name.encode())
    (tmp_path / "clips").mkdir()
    return tmp_path


def write_catalogue(folder: Path | str, rows: Any, fmt: str = "yaml", name: str = "catalogue") -> str:
    """Write ``rows`` as a catalogue file of format ``fmt``; returns its URL."""
    url = storage.join(str(folder), f"{name}.{fmt}")
    if fmt == "yaml":
        storage.write_text(url, yaml.safe_dump(rows, sort_keys=False))
    elif fmt == "csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines: list[str] = []
        writer = csv.DictWriter(_LineSink(lines), fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        storage.write_text(url, "".join(lines))
    elif fmt == "parquet":
        columns = list(dict.fromkeys(key for row in rows for key in row))  # from_pylist reads row 0's keys only
        cells = [{k: _cell(row[k]) if isinstance(row.get(k), dict) else row.get(k) for k in columns} for row in rows]
        storage.write_bytes(url, _parquet_bytes(pa.Table.from_pylist(cells)))
    return url


class _LineSink:
    def __init__(self, lines: list[str]) -> None:
        self.write = lines.append


def _cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def load(folder: Path | str, rows: list[dict[str, Any]], fmt: str = "yaml") -> Catalogue:
    return load_catalogue(write_catalogue(folder, rows, fmt))


def one_error(catalogue: Catalogue):
    assert len(catalogue.errors) == 1, [str(e) for e in catalogue.errors]
    return catalogue.errors[0]


# --- formats and paths -------------------------------------------------------------------------


def test_yaml_rows_give_validated_entries(media: Path) -> None:
    catalogue = load(media, GOOD_ROWS)
    assert catalogue.errors == []
    assert catalogue.entries[0] == CatalogueEntry(
        row=1,
        title_id="ep01",
        language="fr",
        mode="dub",
        source_url=f"{media}/ep01.mp4",
        dub_audio_url=f"{media}/ep01.fr.wav",
        options={**OPTION_DEFAULTS, "crf": 20},
    )
    assert catalogue.entries[2].mode == "avatar" and catalogue.entries[2].source_url == f"{media}/face.png"
    assert catalogue.entries[2].options == OPTION_DEFAULTS
    assert {t: [e.language for e in es] for t, es in catalogue.by_title().items()} == {"ep01": ["fr", "de"], "face": ["en"]}


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"titles": GOOD_ROWS}, id="titles-mapping"),
        pytest.param(
            [
                {"title_id": "ep01", "video": "ep01.mp4", "crf": 20, "dubs": {"fr": "ep01.fr.wav", "de": "ep01.de.wav"}},
                {"title_id": "face", "portrait": "face.png", "dubs": {"en": "face.en.wav"}},
            ],
            id="dubs-mapping",
        ),
    ],
)
def test_yaml_forms_give_the_same_entries(media: Path, document: Any) -> None:
    expected = load(media, GOOD_ROWS).entries
    catalogue = load_catalogue(write_catalogue(media, document, name="other"))
    assert catalogue.errors == []
    assert [(e.title_id, e.language, e.source_url, e.dub_audio_url, e.options) for e in catalogue.entries] == [
        (e.title_id, e.language, e.source_url, e.dub_audio_url, e.options) for e in expected
    ]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_give_the_same_entries_as_yaml(media: Path, fmt: str) -> None:
    catalogue = load(media, GOOD_ROWS, fmt)
    assert catalogue.errors == []
    assert catalogue.entries == load(media, GOOD_ROWS).entries
    assert catalogue.entries[0].options["crf"] == 20  # CSV text "20" is coerced to int


def test_dubs_mapping_rows_keep_the_number_of_their_yaml_entry(media: Path) -> None:
    document = [
        {"title_id": "ep01", "video": "ep01.mp4", "dubs": {"fr": "ep01.fr.wav", "de": "ep01.de.wav"}},
        {"title_id": "face", "portrait": "face.png", "dubs": {"xx": "face.en.wav"}},
    ]
    catalogue = load(media, document)
    assert [e.row for e in catalogue.entries] == [1, 1]
    error = one_error(catalogue)
    assert (error.row, error.title_id, error.language) == (2, "face", "xx")


def test_relative_paths_resolve_against_the_catalogue_folder(media: Path, monkeypatch) -> None:
    (media / "sub").mkdir()
    (media / "sub" / "ep03.mp4").write_bytes(b"dummy")
    monkeypatch.chdir(media / "sub")  # the working directory must not matter
    rows = [
        {"title_id": "ep03", "video": "sub/ep03.mp4", "language": "fr", "dub_audio": f"{media}/ep01.fr.wav"},
        {"title_id": "ep01", "video": "./ep01.mp4", "language": "fr", "dub_audio": "ep01.fr.wav"},
    ]
    catalogue = load(media, rows)
    assert catalogue.errors == []
    assert [(e.source_url, e.dub_audio_url) for e in catalogue.entries] == [
        (f"{media}/sub/ep03.mp4", f"{media}/ep01.fr.wav"),
        (f"{media}/./ep01.mp4", f"{media}/ep01.fr.wav"),
    ]
    assert all(os.path.exists(e.source_url) for e in catalogue.entries)


def test_memory_catalogue_with_memory_media() -> None:
    folder = f"memory://dubline-tests/{uuid.uuid4().hex}"
    try:
        for name in MEDIA:
            storage.write_bytes(storage.join(folder, "media", name), b"dummy")
        rows = [
            {"title_id": "ep01", "video": "media/ep01.mp4", "language": "fr", "dub_audio": "media/ep01.fr.wav"},
            {"title_id": "ep02", "video": f"{folder}/media/ep02.mp4", "language": "fr",
             "dub_audio": f"{folder}/media/ep02.fr.wav"},
            {"title_id": "ep03", "video": "media/ep03.mp4", "language": "fr", "dub_audio": "media/ep01.fr.wav"},
        ]
        catalogue = load(folder, rows)
        assert [e.source_url for e in catalogue.entries] == [f"{folder}/media/ep01.mp4", f"{folder}/media/ep02.mp4"]
        assert one_error(catalogue).problem == f"missing file: {folder}/media/ep03.mp4"
    finally:
        storage.remove(folder)


def test_memory_catalogue_at_the_root_resolves_relative_paths() -> None:
    name = f"dubline-{uuid.uuid4().hex}"
    try:
        storage.write_bytes(f"memory://{name}.mp4", b"dummy")
        storage.write_bytes(f"memory://{name}.wav", b"dummy")
        rows = [{"title_id": "ep01", "video": f"{name}.mp4", "language": "fr", "dub_audio": f"{name}.wav"}]
        catalogue = load_catalogue(write_catalogue("memory://", rows, name=name))
        assert catalogue.errors == []
        assert catalogue.entries[0].source_url == f"memory://{name}.mp4"
    finally:
        for suffix in ("mp4", "wav", "yaml"):
            storage.remove(f"memory://{name}.{suffix}")


def test_validated_catalogue_round_trips_through_its_manifest(media: Path) -> None:
    catalogue = load(media, [{**GOOD_ROWS[0], "dub_script": "ep01.fr.srt"}, *GOOD_ROWS[1:]])
    url = write_manifest(catalogue.to_rows(), CATALOGUE, str(media / "catalogue.parquet"))
    assert [CatalogueEntry.from_row(r) for r in read_rows(url, CATALOGUE)] == catalogue.entries
    assert [e.dub_script_url for e in catalogue.entries] == [f"{media}/ep01.fr.srt", None, None]


# --- dub scripts ----------------------------------------------------------------------------------


SCRIPT_ROWS = [
    {**GOOD_ROWS[0], "dub_script": "ep01.fr.srt"},
    GOOD_ROWS[1],
    {**GOOD_ROWS[2], "dub_script": "face.en.txt"},
    {**GOOD, "dub_script": "{media}/ep02.fr.vtt"},
]


@pytest.mark.parametrize("fmt", ["yaml", "csv", "parquet"])
def test_dub_scripts_resolve_like_dub_audio_in_every_format(media: Path, fmt: str) -> None:
    rows = [{k: v.format(media=media) if k == "dub_script" else v for k, v in row.items()} for row in SCRIPT_ROWS]
    catalogue = load(media, rows, fmt)
    assert catalogue.errors == []
    assert [(e.title_id, e.language, e.dub_script_url) for e in catalogue.entries] == [
        ("ep01", "fr", f"{media}/ep01.fr.srt"),
        ("ep01", "de", None),  # a language without a script: an empty CSV cell, a Parquet null
        ("face", "en", f"{media}/face.en.txt"),
        ("ep02", "fr", f"{media}/ep02.fr.vtt"),
    ]


def test_yaml_dubs_mapping_takes_audio_and_script_per_language(media: Path) -> None:
    document = [{"title_id": "ep01", "video": "ep01.mp4", "crf": 20,
                 "dubs": {"fr": {"audio": "ep01.fr.wav", "script": "ep01.fr.srt"}, "de": "ep01.de.wav"}}]
    catalogue = load(media, document)
    assert catalogue.errors == []
    expected = load(media, SCRIPT_ROWS[:2]).entries  # the same dubs as two rows (numbered 1 and 2)
    assert [dataclasses.replace(e, row=1) for e in expected] == catalogue.entries
    assert catalogue.entries[0].dub_script_url == f"{media}/ep01.fr.srt"


BAD_DUBS = {
    # id: (the value of language fr in a dubs mapping, the problem reported for fr)
    "unknown-key": ({"audio": "ep01.fr.wav", "scrpt": "ep01.fr.srt"},
                    "dubs.fr has unknown keys ['scrpt'] (use 'audio', 'script' and 'speakers')"),
    "script-without-audio": ({"script": "ep01.fr.srt"}, "missing dub_audio"),
    "list": (["ep01.fr.wav", "ep01.fr.srt"], "dubs.fr must be an audio file or a mapping {audio: …, script: …, speakers: …}"),
    "missing-script": ({"audio": "ep01.fr.wav", "script": "nope.srt"}, "missing file: {media}/nope.srt"),
}


@pytest.mark.parametrize(("fr", "problem"), list(BAD_DUBS.values()), ids=list(BAD_DUBS))
def test_bad_dubs_mapping_is_one_error_of_its_language(media: Path, fr: Any, problem: str) -> None:
    catalogue = load(media, [GOOD, {"title_id": "ep01", "video": "ep01.mp4", "dubs": {"fr": fr, "de": "ep01.de.wav"}}])
    error = one_error(catalogue)
    assert (error.row, error.title_id, error.language) == (2, "ep01", "fr")
    assert problem.replace("{media}", str(media)) in error.problem and str(error).startswith("row 2 (ep01 [fr]): ")
    assert [(e.title_id, e.language) for e in catalogue.entries] == [("ep02", "fr"), ("ep01", "de")]


def test_a_script_beside_a_dubs_mapping_is_refused_for_each_language(media: Path) -> None:
    entry = {"title_id": "ep01", "video": "ep01.mp4", "dub_script": "ep01.fr.srt",
             "dubs": {"fr": "ep01.fr.wav", "de": "ep01.de.wav"}}
    catalogue = load(media, [GOOD, entry])
    assert sorted((e.row, e.title_id, e.language) for e in catalogue.errors) == [(2, "ep01", "de"), (2, "ep01", "fr")]
    assert all(e.problem.startswith("dub_script beside a dubs mapping: give each language's script in the mapping")
               for e in catalogue.errors)
    assert [(e.title_id, e.language) for e in catalogue.entries] == [("ep02", "fr")]


def test_check_files_false_skips_the_file_checks(media: Path) -> None:
    rows = [dict(GOOD, video="not-there.mp4")]
    assert load_catalogue(write_catalogue(media, rows), check_files=False).errors == []
    assert "missing file" in one_error(load(media, rows)).problem


# --- one bad row: one clear error, the good rows stay --------------------------------------------


def _unreadable(media: Path) -> str:
    (media / "locked.mp4").write_bytes(b"dummy")
    (media / "locked.mp4").chmod(0)
    return "locked.mp4"


BAD_ROWS = {
    # id: (changes to the row of title "bad", text the problem must contain)
    "missing-file": ({"video": "nope.mp4"}, "missing file: {media}/nope.mp4"),
    "missing-audio-file": ({"dub_audio": "nope.wav"}, "missing file: {media}/nope.wav"),
    "unknown-protocol": ({"video": "nosuchproto://bucket/x.mp4"}, "unreadable URL: nosuchproto://bucket/x.mp4"),
    "directory": ({"video": "clips"}, "not a file: {media}/clips"),
    "language-xx": ({"language": "xx"}, "unknown language code 'xx'"),
    "language-und": ({"language": "und"}, "unknown language code 'und'"),
    "language-garbage": ({"language": "french!"}, "unknown language code 'french!'"),
    "missing-language": ({"language": None}, "missing language"),
    "both-sources": ({"portrait": "face.png"}, "both 'video' and 'portrait' are given"),
    "no-source": ({"video": None}, "neither 'video' nor 'portrait' is given"),
    "missing-dub-audio": ({"dub_audio": ""}, "missing dub_audio"),
    "missing-script-file": ({"dub_script": "nope.srt"}, "missing file: {media}/nope.srt"),
    "script-is-a-folder": ({"dub_script": "clips"}, "dub script clips: no file extension (use .txt, .srt, .vtt)"),
    "script-of-unknown-format": ({"dub_script": "ep02.fr.wav"},
                                 "dub script ep02.fr.wav: unknown script format '.wav' (use .txt, .srt, .vtt)"),
    "unknown-column": ({"colour": "red"}, "unknown option or column 'colour'"),
    "unknown-option": ({"options": {"cfr": 20}}, "unknown option or column 'cfr'"),
    "crf-out-of-range": ({"crf": 99}, "option crf=99: must be 'auto' or between 0 and 51"),
    "bad-codec": ({"video_codec": "vp9"}, "option video_codec='vp9': must be one of auto, h264, hevc"),
    "bad-hdr-output": ({"hdr_output": "hdr10"}, "option hdr_output='hdr10': must be one of source, sdr"),
    "bad-background": ({"background": "mauve"}, "option background='mauve'"),
    "crf-not-a-number": ({"crf": "high"}, "option crf='high'"),
    "bad-preset": ({"preset": "warp"}, "option preset='warp': must be one of"),
    "negative-tolerance": ({"options": {"audio_tolerance_s": -1}}, "option audio_tolerance_s=-1: must be a non-negative"),
    "options-not-a-mapping": ({"options": [1, 2]}, "options must be a mapping"),
}


@pytest.mark.parametrize(("changes", "problem"), list(BAD_ROWS.values()), ids=list(BAD_ROWS))
def test_bad_row_gives_one_clear_error_and_keeps_the_good_rows(media: Path, changes: dict, problem: str) -> None:
    bad = {k: v for k, v in {**GOOD, "title_id": "bad", **changes}.items() if v is not None}
    catalogue = load(media, [GOOD, bad, {**GOOD, "language": "de"}])

    error = one_error(catalogue)
    assert (error.row, error.title_id) == (2, "bad")
    assert problem.format(media=media) in error.problem
    assert str(error).startswith("row 2 (bad")
    assert [(e.row, e.title_id, e.language) for e in catalogue.entries] == [(1, "ep02", "fr"), (3, "ep02", "de")]


@pytest.mark.parametrize("title_id", ["../etc", "a/b", ".hidden", "ep 01", "-x", "é", "x" * 129])
def test_unsafe_title_id_is_rejected(media: Path, title_id: str) -> None:
    catalogue = load(media, [GOOD, {**GOOD, "title_id": title_id, "language": "de"}])
    error = one_error(catalogue)
    assert error.row == 2 and error.title_id == title_id
    assert "is not a safe path component" in error.problem
    assert [e.title_id for e in catalogue.entries] == ["ep02"]


def test_missing_title_id_is_rejected(media: Path) -> None:
    catalogue = load(media, [{k: v for k, v in GOOD.items() if k != "title_id"}, {**GOOD, "language": "de"}])
    error = one_error(catalogue)
    assert (error.row, error.title_id, error.problem) == (1, None, "missing title_id")
    assert str(error) == "row 1 (? [fr]): missing title_id"
    assert [e.language for e in catalogue.entries] == ["de"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_is_rejected(media: Path) -> None:
    catalogue = load(media, [GOOD, {**GOOD, "title_id": "bad", "video": _unreadable(media)}])
    error = one_error(catalogue)
    assert error.row == 2 and "unreadable URL (permission denied)" in error.problem
    assert [e.title_id for e in catalogue.entries] == ["ep02"]


def test_permission_denied_is_reported_as_unreadable(media: Path, monkeypatch) -> None:
    """The same case without relying on file modes (the test above is skipped as root)."""

    def denied(url: str, mode: str = "rb"):
        if url.endswith("ep02.mp4"):
            raise PermissionError(13, "Permission denied", url)
        return open(url, mode)

    monkeypatch.setattr(storage, "open_url", denied)
    catalogue = load(media, [GOOD, GOOD_ROWS[0]])
    error = one_error(catalogue)
    assert (error.row, error.problem) == (1, f"unreadable URL (permission denied): {media}/ep02.mp4")
    assert [e.title_id for e in catalogue.entries] == ["ep01"]


def test_duplicate_title_language_pair_rejects_both_rows(media: Path) -> None:
    rows = [GOOD, GOOD_ROWS[0], {**GOOD, "dub_audio": "ep01.fr.wav"}]
    catalogue = load(media, rows)
    assert [(e.row, e.problem) for e in catalogue.errors] == [
        (1, "duplicate (title_id, language) pair (ep02, fr)"),
        (3, "duplicate (title_id, language) pair (ep02, fr)"),
    ]
    assert [e.title_id for e in catalogue.entries] == ["ep01"]


def test_duplicate_after_language_normalisation(media: Path) -> None:
    catalogue = load(media, [{**GOOD, "language": "pt-BR"}, {**GOOD, "language": "pt_br"}])
    assert [e.row for e in catalogue.errors] == [1, 2] and catalogue.entries == []


def test_same_title_with_different_videos_rejects_its_rows(media: Path) -> None:
    rows = [GOOD, {**GOOD, "language": "de", "video": "ep01.mp4"}, GOOD_ROWS[2]]
    catalogue = load(media, rows)
    assert [e.row for e in catalogue.errors] == [1, 2]
    assert all("title ep02 is given different sources" in e.problem for e in catalogue.errors)
    assert [e.title_id for e in catalogue.entries] == ["face"]


@pytest.mark.parametrize(("given", "normalised"), [("pt_BR", "pt-BR"), ("pt-br", "pt-BR"), ("FR", "fr"), ("no", "no")])
def test_language_codes_are_normalised(media: Path, given: str, normalised: str) -> None:
    catalogue = load(media, [{**GOOD, "language": given}])
    assert catalogue.errors == []
    assert catalogue.entries[0].language == normalised


def test_norwegian_stays_a_language_in_yaml(media: Path) -> None:
    # Plain YAML 1.1 reads an unquoted `no` as False.
    url = str(media / "nb.yaml")
    Path(url).write_text(
        "- {title_id: ep02, video: ep02.mp4, language: no, dub_audio: ep02.fr.wav}\n"
        "- {title_id: ep01, video: ep01.mp4, dubs: {no: ep01.fr.wav, de: ep01.de.wav}}\n"
    )
    catalogue = load_catalogue(url)
    assert catalogue.errors == []
    assert [e.language for e in catalogue.entries] == ["no", "no", "de"]


def test_encode_and_background_options(media: Path) -> None:
    catalogue = load(media, [{**GOOD, "crf": "AUTO", "video_codec": "hevc", "hdr_output": "sdr", "background": "#00ff00"},
                             {**GOOD, "language": "de", "crf": 16, "background": "black"}])
    assert not catalogue.errors
    fr, de = (entry.options for entry in catalogue.entries)
    assert (fr["crf"], fr["video_codec"], fr["hdr_output"], fr["background"]) == ("auto", "hevc", "sdr", "#00ff00")
    assert (de["crf"], de["video_codec"], de["hdr_output"], de["background"]) == (16, "auto", "source", "black")
    assert OPTION_DEFAULTS["crf"] == "auto"  # the CRF follows the source unless a row says otherwise


def test_csv_options_column_as_json(media: Path) -> None:
    rows = [
        {**GOOD, "options": {"crf": 23, "preset": "slow"}},
        {**GOOD, "language": "de", "options": "", "audio_tolerance_s": "0.5"},
    ]
    url = write_catalogue(media, rows, "csv")
    assert '"{""crf"": 23, ""preset"": ""slow""}"' in Path(url).read_text()
    catalogue = load_catalogue(url)
    assert catalogue.errors == []
    assert [e.options for e in catalogue.entries] == [
        {**OPTION_DEFAULTS, "crf": 23, "preset": "slow"},
        {**OPTION_DEFAULTS, "audio_tolerance_s": 0.5},
    ]


def test_csv_options_that_are_not_json(media: Path) -> None:
    url = str(media / "bad.csv")
    Path(url).write_text(
        "title_id,video,language,dub_audio,options\n"
        "ep02,ep02.mp4,fr,ep02.fr.wav,{crf: 20}\n"
        "ep01,ep01.mp4,fr,ep01.fr.wav,\n"
    )
    catalogue = load_catalogue(url)
    error = one_error(catalogue)
    assert error.row == 1 and error.problem.startswith("options is not valid JSON")
    assert [e.title_id for e in catalogue.entries] == ["ep01"]


def test_csv_with_several_bad_rows_reports_each(media: Path) -> None:
    rows = [
        {**GOOD, "title_id": "a/b"},
        GOOD,
        {**GOOD, "title_id": "ep01", "language": "xx", "video": "ep01.mp4"},
        {**GOOD, "title_id": "ep03", "video": "ep01.mp4", "crf": 99},
        {**GOOD, "title_id": "ep04", "video": "ep04.mp4", "language": "de"},
    ]
    catalogue = load(media, rows, "csv")
    assert [(e.row, e.title_id) for e in catalogue.errors] == [(1, "a/b"), (3, "ep01"), (4, "ep03"), (5, "ep04")]
    assert [p.split(" ")[0] for p in (e.problem for e in catalogue.errors)] == ["title_id", "unknown", "option", "missing"]
    assert [e.title_id for e in catalogue.entries] == ["ep02"]


# --- the catalogue file itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("catalogue.yaml", None, "no such file"),
        ("catalogue.yaml", b"- {title_id: [unclosed\n", "cannot be parsed as yaml"),
        ("catalogue.yaml", b"just a string\n", "expected a list of rows"),
        ("catalogue.yaml", b"titles: {ep01: x}\n", "expected a list of rows"),
        ("catalogue.csv", b"\xff\xfe\x00bad", "cannot be parsed as csv"),
        ("catalogue.parquet", b"not parquet at all", "cannot be parsed as parquet"),
        ("catalogue.txt", b"title_id,video\n", "unknown format '.txt' (use .yaml, .csv or .parquet)"),
    ],
)
def test_unreadable_catalogue_file(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    url = str(tmp_path / name)
    if content is not None:
        Path(url).write_bytes(content)
    with pytest.raises(CatalogueError) as info:
        load_catalogue(url)
    assert str(info.value).startswith(f"catalogue {url}: ")
    assert message in str(info.value)


def test_catalogue_url_of_unknown_protocol() -> None:
    with pytest.raises(CatalogueError, match=r"catalogue nosuchproto://x/catalogue\.yaml: cannot be read"):
        load_catalogue("nosuchproto://x/catalogue.yaml")


# --- who speaks when: per-speaker dub stems and the speaker binding ---------------------------------

BINDING_YAML = "- {shot: 0, track: 0, speaker: S1}\n- {shot: 0, track: 1, speaker: S2}\n- {shot: 1, track: 2, speaker: none}\n"


@pytest.fixture
def stems(media: Path) -> Path:
    for name in ("ep01.fr.S1.wav", "ep01.fr.S2.wav"):
        (media / name).write_bytes(b"stem")
    (media / "speakers.yaml").write_text(BINDING_YAML)
    (media / "speakers.csv").write_text("shot,track,speaker\n0,0,S1\n0,1,S2\n1,2,None\n")
    return media


def test_stems_and_a_binding_in_yaml_and_csv_give_the_same_entries(stems: Path) -> None:
    yaml_doc = [{"title_id": "ep01", "video": "ep01.mp4", "speaker_binding": "speakers.yaml",
                 "dubs": {"fr": {"audio": "ep01.fr.wav", "speakers": {"S1": "ep01.fr.S1.wav", "S2": "ep01.fr.S2.wav"}}}}]
    from_yaml = load(stems, yaml_doc)
    assert from_yaml.errors == []
    (entry,) = from_yaml.entries
    assert entry.options["dub_speakers"] == {"S1": f"{stems}/ep01.fr.S1.wav", "S2": f"{stems}/ep01.fr.S2.wav"}
    assert entry.options["speaker_binding"] == f"{stems}/speakers.yaml"
    csv_rows = [{"title_id": "ep01", "video": "ep01.mp4", "language": "fr", "dub_audio": "ep01.fr.wav",
                 "dub_speakers": "S1=ep01.fr.S1.wav; S2=ep01.fr.S2.wav", "speaker_binding": "speakers.csv"}]
    from_csv = load(stems, csv_rows, "csv")
    assert from_csv.errors == []
    assert from_csv.entries[0].options["dub_speakers"] == entry.options["dub_speakers"]
    from dubline.schemas.catalogue import SPEAKER_NONE, SpeakerBinding, read_speaker_binding

    expected = [SpeakerBinding(0, 0, "S1"), SpeakerBinding(0, 1, "S2"), SpeakerBinding(1, 2, SPEAKER_NONE)]
    assert read_speaker_binding(f"{stems}/speakers.yaml") == read_speaker_binding(f"{stems}/speakers.csv") == expected


BAD_SPEAKERS = {
    # id: (options of an ep01 fr row, binding file content or None, the problem reported)
    "stem-for-unknown-speaker": ({"dub_speakers": {"S1": "ep01.fr.S1.wav", "S2": "ep01.fr.S2.wav",
                                                   "S3": "ep01.fr.S2.wav"}}, BINDING_YAML,
                                 "dub stem for unknown speaker 'S3': the speaker binding {media}/b.yaml binds no face "
                                 "to it (speakers bound: S1, S2)"),
    "bound-speaker-without-stem": ({"dub_speakers": {"S1": "ep01.fr.S1.wav"}}, BINDING_YAML,
                                   "speaker 'S2' of the speaker binding has no dub stem (stems: S1)"),
    "missing-stem": ({"dub_speakers": {"S1": "nope.wav"}}, None, "missing file: {media}/nope.wav"),
    "bad-name": ({"dub_speakers": {"S 1": "ep01.fr.S1.wav"}}, None, "option dub_speakers={{'S 1': 'ep01.fr.S1.wav'}}: "
                 "speaker name 'S 1' is not letters, digits, '_' or '-' (at most 64, starting with a letter or digit)"),
    "reserved-name": ({"dub_speakers": {"none": "ep01.fr.S1.wav"}}, None,
                      "option dub_speakers={{'none': 'ep01.fr.S1.wav'}}: speaker name 'none' is reserved (it binds a "
                      "face to nobody)"),
    "track-twice": ({}, "- {shot: 0, track: 1, speaker: S1}\n- {shot: 0, track: 1, speaker: S2}\n",
                    "speaker binding {media}/b.yaml: shot 0, track 1 is bound twice"),
    "not-a-number": ({}, "- {shot: first, track: 1, speaker: S1}\n",
                     "speaker binding {media}/b.yaml: row 1: shot and track must be whole numbers"),
    "no-speaker": ({}, "- {shot: 0, track: 1}\n", "speaker binding {media}/b.yaml: row 1 has no speaker"),
    "not-rows": ({}, "S1: 0\n", "speaker binding {media}/b.yaml: expected rows of shot, track, speaker"),
}


@pytest.mark.parametrize(("options", "binding", "problem"), list(BAD_SPEAKERS.values()), ids=list(BAD_SPEAKERS))
def test_bad_stems_and_bindings_are_errors_naming_the_title(stems: Path, options: dict, binding: str | None,
                                                            problem: str) -> None:
    if binding is not None:
        (stems / "b.yaml").write_text(binding)
        options = {**options, "speaker_binding": "b.yaml"}
    catalogue = load(stems, [{"title_id": "ep01", "video": "ep01.mp4", "language": "fr", "dub_audio": "ep01.fr.wav",
                              "options": options}, GOOD])
    assert [e.title_id for e in catalogue.entries] == ["ep02"]
    (error,) = catalogue.errors
    assert (error.title_id, error.language, error.problem) == ("ep01", "fr", problem.format(media=stems))
    assert str(error).startswith("row 1 (ep01 [fr]): ")


def test_stems_and_bindings_are_for_dub_mode_and_bindings_are_yaml_or_csv(stems: Path) -> None:
    avatar = {**GOOD_ROWS[2], "dub_speakers": "S1=ep01.fr.S1.wav"}
    text = {**GOOD, "speaker_binding": "face.en.txt"}
    errors = [e.problem for e in load(stems, [avatar, text]).errors]
    assert errors == ["dub_speakers and speaker_binding are for dub mode (a video): an avatar's portrait has one "
                      "talking face", "option speaker_binding='face.en.txt': must be a .yaml, .yml or .csv file of "
                      "rows (shot, track, speaker)"]
