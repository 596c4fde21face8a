"""The catalogue: which titles to dub into which languages, loaded and validated row by row.

A catalogue is a YAML, CSV or Parquet file (any fsspec URL) of rows with ``title_id``,
``video`` or ``portrait``, ``language`` and ``dub_audio``, an optional ``dub_script`` (the dub's
text: .txt, .srt or .vtt) and optional per-row options (``RowOptions``). YAML may also give a
title once with a ``dubs: {language: audio}`` mapping, where a language's value may be
``{audio: …, script: …, speakers: {S1: …}}`` (``speakers``: one dub stem per speaker, the option
``dub_speakers``). A ``speaker_binding`` file (YAML or CSV rows of shot, track, speaker) binds
face tracks to those speakers, or to ``none``. Relative paths are resolved against the
catalogue's own folder. A folder of title folders laid out by convention is a catalogue too
(``schemas.catalogue_folder``, validated here); ``schemas.catalogue_loader.load_catalogue``
loads either.

Validation never raises for a bad row: it returns the good entries and one ``RowError`` per
problem, so one bad title never stops the others.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os.path
import re
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import langcodes
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from dubline.schemas import storage
from dubline.schemas.colour import parse_colour

_URL_OPTIONS = ("ref_pose", "ref_blink")
_CODECS = ("auto", "h264", "hevc")
_HDR_OUTPUTS = ("source", "sdr")
_FRAMINGS = ("full", "crop", "resize")
_X264_PRESETS = {
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CORE_COLUMNS = {"title_id", "video", "portrait", "language", "dub_audio", "dub_script", "options"}
#: Extensions of dub scripts: plain text, SubRip and WebVTT subtitles (read by ``stages.speech.script``).
SCRIPT_EXTENSIONS = ("txt", "srt", "vtt")
_DUB_KEYS = ("audio", "script", "speakers")  # keys of a language's mapping in a YAML ``dubs`` mapping
#: Speaker names of dub stems and bindings: safe in file names and reports.
_SPEAKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The speaker a face is bound to when it must never be driven (a listener, a screen, a poster).
SPEAKER_NONE = "none"
BINDING_EXTENSIONS = ("yaml", "yml", "csv")


def speaker_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a dub stem's speaker, or None."""
    if name.lower() == SPEAKER_NONE:
        return f"speaker name {name!r} is reserved (it binds a face to nobody)"
    if not _SPEAKER_NAME.match(name):
        return f"speaker name {name!r} is not letters, digits, '_' or '-' (at most 64, starting with a letter or digit)"
    return None


def _speaker_stems(value: Any) -> dict[str, str]:
    """``dub_speakers`` as {speaker: path}: a mapping (YAML, JSON) or "S1=a.wav;S2=b.wav" (a CSV cell)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        else:
            pairs = [item.split("=", 1) for item in text.split(";") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("must be a mapping {speaker: audio} or 'S1=a.wav;S2=b.wav'")
            value = {name.strip(): path.strip() for name, path in pairs}
    if not isinstance(value, dict) or not value:
        raise ValueError("must be a mapping {speaker: audio} with at least one speaker")
    stems = {}
    for name, path in value.items():
        if problem := speaker_name_problem(str(name)):
            raise ValueError(problem)
        if _text(path) is None or not isinstance(path, str):
            raise ValueError(f"speaker {name}: expected an audio file, not {path!r}")
        stems[str(name)] = path.strip()
    return stems


def _in_range(number: Any, low: float, high: float, reason: str) -> Any:
    """``number`` when it lies in [low, high] (NaN does not), else ValueError(reason)."""
    if not low <= number <= high:
        raise ValueError(reason)
    return number


def _number(kind: type, low: float, high: float, reason: str) -> BeforeValidator:
    """A check: text or a number -> ``kind`` within [low, high], else ValueError(reason)."""
    return BeforeValidator(lambda value: _in_range(kind(value), low, high, reason))


def _one_of(choices: Collection[str], reason: str) -> BeforeValidator:
    """A check: ``value`` as text when it is one of ``choices``, else ValueError(reason)."""

    def check(value: Any) -> str:
        if str(value) not in choices:
            raise ValueError(reason)
        return str(value)

    return BeforeValidator(check)


def _crf(value: Any) -> int | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    return _in_range(int(value), 0, 51, "must be 'auto' or between 0 and 51")


def _colour(value: Any) -> str:
    parse_colour(str(value))  # ValueError for anything but a colour
    return str(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    if str(value).strip().lower() in ("false", "0", "no"):
        return False
    raise ValueError("must be true or false")


def _angles(value: Any) -> list[float]:
    angles = [float(a) for a in (value if isinstance(value, list) else str(value).split(","))]
    if not angles or any(abs(a) > 90 for a in angles):
        raise ValueError("must be a list of angles in degrees within ±90")
    return angles


def _binding_file(value: Any) -> str:
    path = str(value)
    extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if extension not in BINDING_EXTENSIONS:
        raise ValueError("must be a .yaml, .yml or .csv file of rows (shot, track, speaker)")
    return path


_Text = BeforeValidator(str)
_Angles = Annotated[list[float] | None, BeforeValidator(_angles)]


class RowOptions(BaseModel):
    """The per-row options a catalogue may set: each one's type, default and check.

    Values come as YAML or JSON values or as CSV text; each check (a ``BeforeValidator``) turns
    text into the option's type or raises ValueError with the reason an operator reads
    (``option <key>=<value>: reason``)."""

    model_config = ConfigDict(extra="forbid")

    # constant rate factor of the output video; "auto": from the source's bits per pixel
    crf: Annotated[int | Literal["auto"], BeforeValidator(_crf)] = "auto"
    # x264/x265 preset of the output video
    preset: Annotated[str, _one_of(_X264_PRESETS, f"must be one of {sorted(_X264_PRESETS)}")] = "veryfast"
    # "h264", "hevc", or "auto": HEVC for HEVC, deeper than 8-bit or HDR sources
    video_codec: Annotated[Literal[_CODECS], _one_of(_CODECS, f"must be one of {', '.join(_CODECS)}")] = "auto"
    # an HDR source's output: "source" (HDR, tagged like it) or "sdr" (tone-mapped)
    hdr_output: Annotated[Literal[_HDR_OUTPUTS], _one_of(_HDR_OUTPUTS, f"must be one of {', '.join(_HDR_OUTPUTS)}")] = "source"
    # colour under a portrait's transparent pixels: #rrggbb or white/black/grey/green
    background: Annotated[str, BeforeValidator(_colour)] = "#ffffff"
    # refuse dub audio whose length differs more from the picture
    audio_tolerance_s: Annotated[float, _number(float, 0.0, math.inf, "must be a non-negative number of seconds")] = 2.0
    # multiplies the driven mouth motion (SadTalker's expression scale)
    expression_scale: Annotated[float, _number(float, 0.0, 3.0, "must be between 0 and 3")] = 1.0
    # Avatar mode (portrait input), as SadTalker has them:
    pose_style: Annotated[int, _number(int, 0, math.inf, "must be a non-negative integer")] = 0  # seed of the head-motion style
    still: Annotated[bool, BeforeValidator(_flag)] = False  # keep the portrait's head pose (no generated motion)
    ref_pose: Annotated[str | None, _Text] = None  # video whose head motion is replayed instead of generated
    ref_blink: Annotated[str | None, _Text] = None  # video whose blinks are replayed instead of generated
    yaw: _Angles = None  # degrees visited in order over the clip, e.g. [0, 15, -15, 0]
    pitch: _Angles = None
    roll: _Angles = None
    # output picture: "full" portrait, "crop" around the face, "resize" to 512 px
    avatar_framing: Annotated[Literal[_FRAMINGS], _one_of(_FRAMINGS, f"must be one of {', '.join(map(repr, _FRAMINGS))}")] = "full"
    # Who speaks when (dub mode):
    # {speaker: audio}: one dub stem per speaker, beside the mix (dub_audio)
    dub_speakers: Annotated[dict[str, str] | None, BeforeValidator(_speaker_stems)] = None
    # YAML/CSV rows (shot, track, speaker): which face each speaker is, or none
    speaker_binding: Annotated[str | None, BeforeValidator(_binding_file)] = None


#: Every option with its default, in ``RowOptions``' order.
OPTION_DEFAULTS: dict[str, Any] = RowOptions().model_dump()


class _CatalogueYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only): YAML 1.1 reads the language code
    ``no`` (Norwegian) as False, and ``on``/``off``/``yes`` as booleans too."""


_CatalogueYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CatalogueYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class CatalogueError(ValueError):
    """The catalogue file as a whole cannot be read."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One valid (title, language) pair to produce."""

    row: int
    title_id: str
    language: str  # normalised BCP-47 tag
    mode: str  # "dub" (source is a video) or "avatar" (source is a portrait)
    source_url: str
    dub_audio_url: str
    options: dict[str, Any] = field(default_factory=dict)
    dub_script_url: str | None = None  # the dub's text (.txt, .srt or .vtt), when the studio gave it

    def to_row(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "title_id": self.title_id,
            "language": self.language,
            "mode": self.mode,
            "source_url": self.source_url,
            "dub_audio_url": self.dub_audio_url,
            "options_json": json.dumps(self.options, sort_keys=True),
            "dub_script_url": self.dub_script_url,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CatalogueEntry:
        return cls(
            row=row["row"],
            title_id=row["title_id"],
            language=row["language"],
            mode=row["mode"],
            source_url=row["source_url"],
            dub_audio_url=row["dub_audio_url"],
            options=json.loads(row["options_json"]),
            dub_script_url=row["dub_script_url"],
        )


@dataclass(frozen=True)
class RowError:
    """A problem with one catalogue row (row numbers start at 1)."""

    row: int
    title_id: str | None
    language: str | None
    problem: str

    def __str__(self) -> str:
        who = self.title_id or "?"
        if self.language:
            who += f" [{self.language}]"
        return f"row {self.row} ({who}): {self.problem}"


@dataclass
class Catalogue:
    url: str
    entries: list[CatalogueEntry]
    errors: list[RowError]

    def by_title(self) -> dict[str, list[CatalogueEntry]]:
        titles: dict[str, list[CatalogueEntry]] = defaultdict(list)
        for entry in self.entries:
            titles[entry.title_id].append(entry)
        return dict(titles)

    def to_rows(self) -> list[dict[str, Any]]:
        return [e.to_row() for e in self.entries]


def load_catalogue_file(url: str, check_files: bool = True) -> Catalogue:
    """Read and validate the catalogue file (YAML, CSV or Parquet) at ``url``."""
    raw_rows = _read_raw_rows(url)
    protocol, sep, path = url.partition("://") if "://" in url else ("", "", url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ("" if sep else ".")
    base = f"{protocol}{sep}{parent}"  # "memory://cat.yaml" -> "memory://", not "memory:/"
    return validate_rows(raw_rows, base_url=base, url=url, check_files=check_files)


def validate_rows(
    raw_rows: list[dict[str, Any]], base_url: str, url: str = "<rows>", check_files: bool = True
) -> Catalogue:
    """Validate raw catalogue rows; paths relative to ``base_url``."""
    rows = _expand_dub_mappings(raw_rows)
    errors: list[RowError] = []
    candidates: list[CatalogueEntry] = []
    url_problems: dict[str, str | None] = {}

    for number, raw, mapping_problems in rows:
        # A malformed dubs entry has no row to validate: its problems are the row's.
        entry, problems = (None, mapping_problems) if mapping_problems else _validate_row(number, raw, base_url)
        if check_files and entry is not None:
            references = [entry.options[k] for k in (*_URL_OPTIONS, "speaker_binding") if entry.options.get(k)]
            script = [entry.dub_script_url] if entry.dub_script_url else []
            stems = list((entry.options.get("dub_speakers") or {}).values())
            for file_url in (entry.source_url, entry.dub_audio_url, *script, *references, *stems):
                if file_url not in url_problems:
                    url_problems[file_url] = _file_problem(file_url)
                if url_problems[file_url]:
                    problems.append(url_problems[file_url])
            if not problems and entry.options.get("speaker_binding"):
                problems.extend(_binding_problems(entry))
        if problems:
            title = raw.get("title_id")
            language = raw.get("language")
            for problem in problems:
                errors.append(
                    RowError(number, str(title) if title else None, str(language) if language else None, problem)
                )
        else:
            candidates.append(entry)

    # Ambiguities across rows: reject every row involved, since we cannot know which one was meant.
    pair_counts = Counter((e.title_id, e.language) for e in candidates)
    sources: dict[str, set[str]] = defaultdict(set)
    for e in candidates:
        sources[e.title_id].add(e.source_url)
    entries = []
    for e in candidates:
        if pair_counts[(e.title_id, e.language)] > 1:
            errors.append(RowError(e.row, e.title_id, e.language, f"duplicate (title_id, language) pair ({e.title_id}, {e.language})"))
        elif len(sources[e.title_id]) > 1:
            errors.append(RowError(e.row, e.title_id, e.language, f"title {e.title_id} is given different sources in different rows: {sorted(sources[e.title_id])}"))
        else:
            entries.append(e)
    errors.sort(key=lambda err: err.row)
    return Catalogue(url=url, entries=entries, errors=errors)


def _read_raw_rows(url: str) -> list[dict[str, Any]]:
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError as exc:
        raise CatalogueError(f"catalogue {url}: no such file") from exc
    except Exception as exc:  # noqa: BLE001 - any fsspec backend error means "cannot read"
        raise CatalogueError(f"catalogue {url}: cannot be read ({exc})") from exc
    suffix = url.lower().rsplit(".", 1)[-1]
    try:
        if suffix in ("yaml", "yml"):
            doc = yaml.load(data.decode("utf-8"), Loader=_CatalogueYamlLoader)  # a SafeLoader
            if isinstance(doc, dict):
                doc = doc.get("titles")
            if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
                raise CatalogueError(f"catalogue {url}: expected a list of rows (or a 'titles:' list)")
            return doc
        if suffix == "csv":
            return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
        if suffix == "parquet":
            return pq.read_table(io.BytesIO(data), use_threads=False).to_pylist()  # see manifest_io
    except CatalogueError:
        raise
    except Exception as exc:  # noqa: BLE001 - parse errors of any of the three formats
        raise CatalogueError(f"catalogue {url}: cannot be parsed as {suffix} ({exc})") from exc
    raise CatalogueError(f"catalogue {url}: unknown format '.{suffix}' (use .yaml, .csv or .parquet)")


def _expand_dub_mappings(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], list[str]]]:
    """YAML convenience: ``dubs: {fr: a.wav, de: {audio: b.wav, script: b.srt}}`` becomes one row
    per language.

    Returns (row number in the catalogue file, row, problems of its ``dubs`` entry) triples: the
    rows of one ``dubs`` mapping share the number of the entry they come from, so errors point at
    the right place in the file."""
    out = []
    for number, raw in enumerate(rows, start=1):
        dubs = raw.get("dubs")
        if not isinstance(dubs, dict):
            out.append((number, raw, []))
            continue
        base = {k: v for k, v in raw.items() if k != "dubs"}
        # A script is the text of one language's dub: beside a mapping of languages it is ambiguous.
        shared_script = _text(base.pop("dub_script", None)) is not None
        for language, dub in dubs.items():
            row, problems = {**base, "language": language}, []
            if shared_script:
                problems.append("dub_script beside a dubs mapping: give each language's script in the mapping, "
                                "e.g. dubs: {fr: {audio: fr.wav, script: fr.srt}}")
            if isinstance(dub, dict):
                unknown = sorted(str(key) for key in dub if key not in _DUB_KEYS)
                if unknown:
                    problems.append(f"dubs.{language} has unknown keys {unknown} (use 'audio', 'script' and 'speakers')")
                row.update(dub_audio=dub.get("audio"), dub_script=dub.get("script"))
                if dub.get("speakers") is not None:
                    row["dub_speakers"] = dub["speakers"]
            elif dub is None or isinstance(dub, str):
                row["dub_audio"] = dub
            else:
                problems.append(f"dubs.{language} must be an audio file or a mapping {{audio: …, script: …, "
                                f"speakers: …}}, not {dub!r}")
            out.append((number, row, problems))
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _resolve(path: str, base_url: str) -> str:
    if "://" in path or path.startswith("/"):
        return path
    if path.startswith("~"):
        return os.path.expanduser(path)
    return storage.join(base_url, path)


def title_id_problem(title_id: str) -> str | None:
    """Why ``title_id`` cannot be used as a path component of the run folder, or None."""
    if _SAFE_ID.match(title_id):
        return None
    return (f"title_id {title_id!r} is not a safe path component "
            "(letters, digits, '.', '_', '-'; starting with a letter or digit; at most 128)")


def script_extension_problem(path: str) -> str | None:
    """Why ``path`` cannot be a dub script by its extension, or None (.txt, .srt, .vtt; any case)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if extension in SCRIPT_EXTENSIONS:
        return None
    what = f"unknown script format '.{extension}'" if extension else "no file extension"
    return f"dub script {path}: {what} (use {', '.join('.' + e for e in SCRIPT_EXTENSIONS)})"


def safe_title_id(name: str, max_length: int = 128) -> str:
    """A title id made from a file name: unsafe characters become "_" (passes ``title_id_problem``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:max_length].strip("._-") or "title"


def _validate_row(number: int, raw: dict[str, Any], base_url: str) -> tuple[CatalogueEntry | None, list[str]]:
    problems: list[str] = []
    title_id = _text(raw.get("title_id"))
    if title_id is None:
        problems.append("missing title_id")
    elif problem := title_id_problem(title_id):
        problems.append(problem)

    language = _text(raw.get("language"))
    if language is None:
        problems.append("missing language")
    elif not langcodes.tag_is_valid(language) or langcodes.standardize_tag(language) == "und":
        problems.append(f"unknown language code {language!r} (expected BCP-47 / ISO 639, e.g. 'fr', 'pt-BR')")
    else:
        language = langcodes.standardize_tag(language)

    video, portrait = _text(raw.get("video")), _text(raw.get("portrait"))
    if video and portrait:
        problems.append("both 'video' and 'portrait' are given; a row is either a dub (video) or an avatar (portrait)")
    elif not video and not portrait:
        problems.append("neither 'video' nor 'portrait' is given")

    dub_audio = _text(raw.get("dub_audio"))
    if dub_audio is None:
        problems.append("missing dub_audio")
    dub_script = _text(raw.get("dub_script"))
    if dub_script is not None and (problem := script_extension_problem(dub_script)):
        problems.append(problem)

    options, option_problems = _parse_options(raw)
    problems.extend(option_problems)
    if problems:
        return None, problems
    for key in _URL_OPTIONS:
        if options.get(key):
            options[key] = _resolve(options[key], base_url)
    if options["dub_speakers"]:
        options["dub_speakers"] = {name: _resolve(path, base_url) for name, path in options["dub_speakers"].items()}
    if options["speaker_binding"]:
        options["speaker_binding"] = _resolve(options["speaker_binding"], base_url)
    if portrait and (options["dub_speakers"] or options["speaker_binding"]):
        return None, [("dub_speakers and speaker_binding are for dub mode (a video): an avatar's portrait "
                       "has one talking face")]
    source = video or portrait
    return (
        CatalogueEntry(
            row=number,
            title_id=title_id,
            language=language,
            mode="dub" if video else "avatar",
            source_url=_resolve(source, base_url),
            dub_audio_url=_resolve(dub_audio, base_url),
            options=options,
            dub_script_url=_resolve(dub_script, base_url) if dub_script else None,
        ),
        [],
    )


def _parse_options(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A row's options (its ``options`` mapping or JSON text, and any column that is not a core
    one) checked by ``RowOptions``: all options with their defaults, and one problem per unknown
    or invalid option, in the order given."""
    given: dict[str, Any] = {}
    problems: list[str] = []
    nested = raw.get("options")
    if isinstance(nested, str) and nested.strip():
        try:
            nested = json.loads(nested)
        except json.JSONDecodeError as exc:
            return {}, [f"options is not valid JSON ({exc.msg})"]
    if isinstance(nested, dict):
        given.update(nested)
    elif nested not in (None, ""):
        problems.append("options must be a mapping")
    given.update({k: v for k, v in raw.items() if k not in _CORE_COLUMNS and k != "dubs" and _text(v) is not None})

    known = {key: value for key, value in given.items() if key in OPTION_DEFAULTS}
    invalid: dict[str, str] = {}
    try:
        options = RowOptions.model_validate(known).model_dump()
    except ValidationError as exc:
        options = dict(OPTION_DEFAULTS)
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            invalid.setdefault(str(error["loc"][0]), str(cause) if cause is not None else error["msg"])
    for key, value in given.items():
        if key not in OPTION_DEFAULTS:
            problems.append(f"unknown option or column {key!r} (known options: {', '.join(OPTION_DEFAULTS)})")
        elif key in invalid:
            problems.append(f"option {key}={value!r}: {invalid[key]}")
    return options, problems


@dataclass(frozen=True)
class SpeakerBinding:
    """One row of a speaker binding: the face track ``track`` of shot ``shot`` is ``speaker``."""

    shot: int
    track: int
    speaker: str  # a dub stem's speaker, or ``SPEAKER_NONE`` (never driven)


def read_speaker_binding(url: str) -> list[SpeakerBinding]:
    """Read a speaker binding: YAML (a list of {shot, track, speaker}) or CSV (header shot,track,speaker).

    Shot and track are the numbers ``dubline inspect`` and the report show. Raises ValueError
    naming the file and the problem (unreadable, not rows, a bad number or name, a track twice).
    """
    try:
        text = storage.read_text(url)
        if url.lower().endswith(".csv"):
            rows: Any = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
        else:
            rows = yaml.load(text, Loader=_CatalogueYamlLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, csv.Error) as exc:
        raise ValueError(f"speaker binding {url}: cannot be read ({exc})") from exc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"speaker binding {url}: expected rows of shot, track, speaker")
    bindings, seen = [], set()
    for number, row in enumerate(rows, start=1):
        missing = [k for k in ("shot", "track", "speaker") if _text(row.get(k)) is None]
        if missing:
            raise ValueError(f"speaker binding {url}: row {number} has no {', '.join(missing)}")
        try:
            shot, track = int(str(row["shot"]).strip()), int(str(row["track"]).strip())
        except ValueError as exc:
            raise ValueError(f"speaker binding {url}: row {number}: shot and track must be whole numbers") from exc
        speaker = str(row["speaker"]).strip()
        if speaker.lower() == SPEAKER_NONE:
            speaker = SPEAKER_NONE
        elif problem := speaker_name_problem(speaker):
            raise ValueError(f"speaker binding {url}: row {number}: {problem}")
        if shot < 0 or track < 0:
            raise ValueError(f"speaker binding {url}: row {number}: shot and track are not negative")
        if (shot, track) in seen:
            raise ValueError(f"speaker binding {url}: shot {shot}, track {track} is bound twice")
        seen.add((shot, track))
        bindings.append(SpeakerBinding(shot, track, speaker))
    return bindings


def _binding_problems(entry: CatalogueEntry) -> list[str]:
    """The speaker binding of a row that can be read, against its stems: every stem's speaker is
    bound to a face, and every speaker bound to a face has a stem (when the row has stems)."""
    try:
        bindings = read_speaker_binding(entry.options["speaker_binding"])
    except ValueError as exc:
        return [str(exc)]
    stems = entry.options.get("dub_speakers") or {}
    if not stems:
        return []
    bound = {b.speaker for b in bindings if b.speaker != SPEAKER_NONE}
    problems = [f"dub stem for unknown speaker {name!r}: the speaker binding {entry.options['speaker_binding']} "
                f"binds no face to it (speakers bound: {', '.join(sorted(bound)) or 'none'})"
                for name in sorted(set(stems) - bound)]
    problems += [f"speaker {name!r} of the speaker binding has no dub stem (stems: {', '.join(sorted(stems))})"
                 for name in sorted(bound - set(stems))]
    return problems


def _file_problem(url: str) -> str | None:
    """None when ``url`` can be opened and read, else what is wrong with it."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return f"file name is not valid UTF-8: {url.encode('utf-8', 'backslashreplace').decode()} (rename the file)"
    try:
        with storage.open_url(url, "rb") as f:
            f.read(1)
    except FileNotFoundError as exc:
        # fsspec's HTTP backend says "not found" for an unreachable server too; its cause tells them apart.
        cause = exc.__cause__ or exc.__context__
        if cause is not None and not isinstance(cause, FileNotFoundError):
            return f"unreadable URL: {url} ({type(cause).__name__}: {cause})"
        return f"missing file: {url}"
    except IsADirectoryError:
        return f"not a file: {url}"
    except PermissionError:
        return f"unreadable URL (permission denied): {url}"
    except Exception as exc:  # noqa: BLE001 - unknown protocol, network, backend errors
        return f"unreadable URL: {url} ({type(exc).__name__}: {exc})"
    return None

