"""Typed job rows: what one stage job is given, one pydantic model per stage, and the cache-key
inputs derived from that model, so that a row and the key of its output cannot disagree.

Each field says how it enters the key (a ``typing.Annotated`` marker):

- ``Upstream``: URL of an earlier stage's manifest in the run folder -> that manifest's key;
- ``Content``: URL of an input file read whole (dub audio, script) -> fingerprint of its bytes;
- ``Source``: URL of a source video -> its change token (size, mtime / ETag), without reading it;
- ``Place``: where a job writes what follows from the key itself (its chunk folder), or facts kept
  for the record only (earlier stages' timings) -> left out;
- any other field -> its value.

``options_json`` carries the run options a stage reads, and only those: the row's ``options``
(validation drops the others, so a stage that read an option it has not declared would fail in
its tests), with ``option_files`` keyed by their content.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, ClassVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.fields import FieldInfo

from dubline.schemas import storage


class KeyBy(enum.Enum):
    VALUE = "value"
    MANIFEST = "manifest"
    CONTENT = "content"
    STAT = "stat"
    NOTHING = "nothing"


Upstream = Annotated[str, KeyBy.MANIFEST]
Content = Annotated[str, KeyBy.CONTENT]
Source = Annotated[str, KeyBy.STAT]
Place = Annotated[str, KeyBy.NOTHING]


def manifest_key(url: str) -> str:
    """The key of a manifest in a run folder: its file name without ``.parquet``."""
    return url.rsplit("/", 1)[-1].removesuffix(".parquet")


class JobRow(BaseModel):
    """A job row; subclasses add their fields. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Run options the stage reads from ``options_json`` (rows without that field: none).
    options: ClassVar[tuple[str, ...]] = ()
    #: Of ``options``, those whose values are file URLs (or {name: URL}): keyed by content.
    option_files: ClassVar[tuple[str, ...]] = ()

    title_id: str

    @classmethod
    def declared_options(cls, options_json: str) -> dict[str, Any]:
        """The options of ``options_json`` (a JSON object) that this row's stage reads."""
        given = json.loads(options_json)
        return {name: given[name] for name in cls.options if name in given}

    @field_validator("options_json", mode="after", check_fields=False)
    @classmethod
    def _only_declared_options(cls, value: str) -> str:
        return json.dumps(cls.declared_options(value), sort_keys=True)


def _key_by(field: FieldInfo) -> KeyBy:
    """A field's marker: pydantic keeps a top-level ``Annotated``'s in ``metadata`` and a
    union's (``Upstream | None``) inside the annotation."""
    found = [m for m in field.metadata if isinstance(m, KeyBy)]
    for member in get_args(field.annotation):
        if get_origin(member) is Annotated:
            found += [m for m in get_args(member)[1:] if isinstance(m, KeyBy)]
    return found[0] if found else KeyBy.VALUE


def _content(value: Any) -> Any:
    """Fingerprint of the file at URL ``value`` ({name: URL}: of each; None stays None)."""
    if isinstance(value, dict):
        return {name: _content(v) for name, v in sorted(value.items())}
    return storage.fingerprint(value) if value else None


def key_inputs(row_type: type[JobRow], row: dict[str, Any]) -> dict[str, Any]:
    """What of ``row`` (a job row of ``row_type``, ``Place`` fields not yet filled in allowed)
    decides its output, field by field, as the module docstring says."""
    inputs: dict[str, Any] = {}
    for name, field in row_type.model_fields.items():
        by, value = _key_by(field), row.get(name, field.default)
        if name == "options_json":
            options = row_type.declared_options(value)
            value = {k: _content(v) if k in row_type.option_files else v for k, v in options.items()}
        elif value is None or by is KeyBy.VALUE:
            pass
        elif by is KeyBy.NOTHING:
            continue
        elif by is KeyBy.MANIFEST:
            value = [manifest_key(v) for v in value] if isinstance(value, (list, tuple)) else manifest_key(value)
        elif by is KeyBy.CONTENT:
            value = _content(value)
        elif by is KeyBy.STAT:
            value = storage.stat_token(value)
        inputs[name] = value
    return inputs
