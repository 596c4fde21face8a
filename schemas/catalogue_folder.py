"""A catalogue given as a folder laid out by convention, on any fsspec URL::

    <folder>/<title>/<video or portrait image>   exactly one: dub mode (video) or avatar mode (image)
    <folder>/<title>/dub.<lang>.<ext>            one per language, e.g. dub.fr.wav, dub.pt-BR.m4a
    <folder>/<title>/dub.<lang>.txt|srt|vtt      optional: that language's dub script (its text)
    <folder>/<title>/dub.<lang>.<speaker>.<ext>  optional: one dub stem per speaker, e.g. dub.fr.S1.wav
    <folder>/<title>/speakers.yaml|yml|csv       optional: the speaker binding (shot, track -> speaker)
    <folder>/<title>/options.yaml                optional: the title's options (see RowOptions)

The folder name is the title id. Each title becomes one catalogue entry with a ``dubs`` mapping and
goes through the same row validation as a catalogue file; titles are numbered as rows in name
order. Problems of a title's folder (no or two sources, no dub tracks, two tracks for a language,
a dub file without a language, an unsafe folder name, a bad options.yaml) are errors of that
title alone; a script or a speaker's stem without a dub track beside it, two scripts for one
language or two stems for one speaker, are errors of that language alone. Hidden entries and
other files (notes, subtitles) are ignored.
"""

from __future__ import annotations

import dataclasses
import os.path
from dataclasses import dataclass, field
from typing import Any

import yaml

from dubline.schemas import storage
from dubline.schemas.catalogue import (
    SCRIPT_EXTENSIONS,
    Catalogue,
    CatalogueError,
    RowError,
    title_id_problem,
    validate_rows,
)

VIDEO_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "mkv", "webm", "avi", "mxf", "ts", "mts", "mpg", "mpeg", "wmv", "flv"})
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"})
OPTIONS_FILES = ("options.yaml", "options.yml")
BINDING_FILES = ("speakers.yaml", "speakers.yml", "speakers.csv")
_URL_OPTIONS = ("ref_pose", "ref_blink", "speaker_binding")  # option values that are files, relative to the title folder


@dataclass
class TitleFolder:
    """What one title folder holds, and what is wrong with it."""

    title_id: str
    url: str
    videos: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    dubs: dict[str, list[str]] = field(default_factory=dict)  # language as written -> file names
    scripts: dict[str, list[str]] = field(default_factory=dict)  # language as written -> script file names
    stems: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # language -> speaker -> file names
    options: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    language_problems: dict[str, list[str]] = field(default_factory=dict)  # language as written -> problems

    def raw_row(self) -> dict[str, Any]:
        """The catalogue row of a folder without problems (absolute URLs), with the languages
        that have no problems of their own."""
        source_key = "video" if self.videos else "portrait"
        source = (self.videos or self.images)[0]
        dubs: dict[str, Any] = {}
        for language, files in self.dubs.items():
            if language in self.language_problems:
                continue
            audio = storage.join(self.url, files[0])
            scripts, stems = self.scripts.get(language), self.stems.get(language)
            dubs[language] = audio
            if scripts or stems:
                dubs[language] = {"audio": audio}
                if scripts:
                    dubs[language]["script"] = storage.join(self.url, scripts[0])
                if stems:
                    dubs[language]["speakers"] = {name: storage.join(self.url, f[0]) for name, f in stems.items()}
        return {"title_id": self.title_id, source_key: storage.join(self.url, source), "dubs": dubs,
                "options": self.options}


def load_folder_catalogue(url: str, check_files: bool = True) -> Catalogue:
    """Scan the catalogue folder at ``url`` and validate its titles (row numbers: title order)."""
    titles = scan(url)
    if not titles:
        raise CatalogueError(f"catalogue folder {url}: no title folders (expected <folder>/<title>/<video> "
                             "and <folder>/<title>/dub.<lang>.<ext>)")
    errors: list[RowError] = []
    rows, numbers = [], []
    for number, title in enumerate(titles, start=1):
        problems = [p for p in (title_id_problem(title.title_id),) if p] + title.problems
        errors.extend(RowError(number, title.title_id, None, problem) for problem in problems)
        errors.extend(RowError(number, title.title_id, language, problem)
                      for language, problems_of_language in title.language_problems.items()
                      for problem in problems_of_language)
        row = title.raw_row() if not problems else None
        if row is not None and row["dubs"]:
            rows.append(row)
            numbers.append(number)
    # URLs are absolute, so the base does not matter; validation numbers the rows it is given.
    checked = validate_rows(rows, base_url=url, url=url, check_files=check_files)
    entries = [dataclasses.replace(e, row=numbers[e.row - 1]) for e in checked.entries]
    errors.extend(dataclasses.replace(e, row=numbers[e.row - 1]) for e in checked.errors)
    errors.sort(key=lambda err: err.row)
    return Catalogue(url=url, entries=entries, errors=errors)


def is_folder(url: str) -> bool:
    """Whether ``url`` names a folder (a catalogue laid out by convention) rather than a file."""
    try:
        fs, path = storage.filesystem(url)
        return fs.isdir(path)
    except Exception:  # noqa: BLE001 - unknown protocol, backend error: the file reader reports it
        return False


def scan(url: str) -> list[TitleFolder]:
    """The title folders under ``url``, sorted by name, each with its problems listed."""
    root = os.path.abspath(url) if "://" not in url else url.rstrip("/")
    fs, path = storage.filesystem(root)
    titles = []
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        name = _basename(entry["name"])
        if entry["type"] == "directory" and not name.startswith("."):
            titles.append(_scan_title(fs, entry["name"], TitleFolder(name, storage.join(root, name))))
    return titles


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _scan_title(fs, path: str, title: TitleFolder) -> TitleFolder:
    options_files, binding_files, unnamed_dubs = [], [], []
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        name = _basename(entry["name"])
        if entry["type"] != "file" or name.startswith("."):
            continue
        parts = name.split(".")
        extension = parts[-1].lower() if len(parts) > 1 else ""
        if parts[0] == "dub":
            if len(parts) < 3 or not parts[1]:
                unnamed_dubs.append(name)
            elif extension in SCRIPT_EXTENSIONS:  # a text or subtitle file is the language's script
                title.scripts.setdefault(".".join(parts[1:-1]), []).append(name)
            elif len(parts) > 3:  # dub.<lang>.<speaker>.<ext>: one speaker's stem (language tags have no dots)
                title.stems.setdefault(parts[1], {}).setdefault(".".join(parts[2:-1]), []).append(name)
            else:  # any other file is the language's audio
                title.dubs.setdefault(parts[1], []).append(name)
        elif name in OPTIONS_FILES:
            options_files.append(name)
        elif name in BINDING_FILES:
            binding_files.append(name)
        elif extension in VIDEO_EXTENSIONS:
            title.videos.append(name)
        elif extension in IMAGE_EXTENSIONS:
            title.images.append(name)

    sources = title.videos + title.images
    if not sources:
        title.problems.append(
            "no video or portrait image in the title folder "
            f"(video: {', '.join(sorted(VIDEO_EXTENSIONS))}; image: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    elif len(sources) > 1:
        title.problems.append(f"more than one video or portrait image in the title folder: {', '.join(sources)}")
    if unnamed_dubs:
        title.problems.append(f"no language in the name of {', '.join(unnamed_dubs)} "
                              "(name dub tracks dub.<lang>.<ext>, e.g. dub.fr.wav)")
    elif not title.dubs and not title.scripts:
        title.problems.append("no dub tracks in the title folder (name them dub.<lang>.<ext>, e.g. dub.fr.wav)")
    for language, files in title.dubs.items():
        if len(files) > 1:
            title.problems.append(f"more than one dub track for language {language!r}: {', '.join(files)}")
    for language, speakers in title.stems.items():
        for speaker, files in speakers.items():
            _companion_problem(title, language, files, "dub stem", "the mix of every speaker",
                               f"speaker {speaker!r} of language {language!r}")
    for language, files in title.scripts.items():
        if "." in language:
            title.language_problems.setdefault(language.split(".")[0], []).append(
                f"dub script {', '.join(files)}: scripts are per language (dub.<lang>.txt|srt|vtt), not per speaker")
            continue
        _companion_problem(title, language, files, "dub script", f"e.g. dub.{language}.wav", f"language {language!r}")
    if len(options_files) > 1:
        title.problems.append(f"both {' and '.join(options_files)}; keep one")
    elif options_files:
        _read_options(fs, f"{path.rstrip('/')}/{options_files[0]}", title)
    if len(binding_files) > 1:
        title.problems.append(f"both {' and '.join(binding_files)}; keep one speaker binding")
    elif binding_files and title.options.get("speaker_binding"):
        title.problems.append(f"{binding_files[0]} and a speaker_binding in the options; keep one")
    elif binding_files:
        title.options = {**title.options, "speaker_binding": storage.join(title.url, binding_files[0])}
    return title


def _companion_problem(title: TitleFolder, language: str, files: list[str], kind: str, hint: str, whose: str) -> None:
    """A problem of ``language`` when its companion files of one ``kind`` (its script, one
    speaker's stem) have no dub track beside them, or are more than one."""
    if language not in title.dubs:
        problem = f"{kind} {', '.join(files)} has no dub track beside it (dub.{language}.<audio ext>, {hint})"
    elif len(files) > 1:
        problem = f"more than one {kind} for {whose}: {', '.join(files)}"
    else:
        return
    title.language_problems.setdefault(language, []).append(problem)


def _read_options(fs, path: str, title: TitleFolder) -> None:
    name = _basename(path)
    try:
        options = yaml.safe_load(fs.cat_file(path).decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        title.problems.append(f"{name} cannot be parsed ({exc})")
        return
    if options is None:
        return
    if not isinstance(options, dict):
        title.problems.append(f"{name} must be a mapping of option names to values")
        return
    for key in _URL_OPTIONS:  # a reference video beside the title's own files
        value = options.get(key)
        if isinstance(value, str) and "://" not in value and not value.startswith(("/", "~")):
            options[key] = storage.join(title.url, value)
    title.options = options
