"""Read and write manifests: Parquet with an explicit schema, checked name and version."""

from __future__ import annotations

import functools
import io
import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dubline.schemas import storage
from dubline.schemas.manifests import ManifestSchema


class ManifestVersionError(ValueError):
    """A manifest was written by another schema (name or version) than the reader expects."""


def to_table(rows: list[dict[str, Any]], schema: ManifestSchema) -> pa.Table:
    """Rows (dicts) -> Arrow table of exactly ``schema``; unknown or missing keys fail loudly."""
    if not rows:
        return schema.arrow.empty_table()
    # Row by row, per-frame arrays straight from numpy: through Python lists a ten-minute faces
    # manifest took ~3× its size in transient memory.
    return pa.concat_tables([_row_table(i, row, schema) for i, row in enumerate(rows)])


def _row_table(index: int, row: dict[str, Any], schema: ManifestSchema) -> pa.Table:
    """Row number ``index`` -> a one-row table of ``schema``; unknown or missing keys fail loudly."""
    extra = set(row) - set(schema.column_names)
    if extra:
        raise ValueError(f"{schema.name} row {index}: unknown columns {sorted(extra)}")
    missing = [f.name for f in schema.fields if not f.nullable and row.get(f.name) is None]
    if missing:
        raise ValueError(f"{schema.name} row {index}: missing values for required columns {missing}")
    columns = []
    for field in schema.fields:
        value = row.get(field.name)
        if isinstance(value, np.ndarray) and value.ndim == 2 and _is_per_frame(field.type):
            columns.append(_per_frame_column(value, field))
        else:
            columns.append(pa.array([list(value) if isinstance(value, np.ndarray) and value.ndim > 1 else value], type=field.type))
    return pa.Table.from_arrays(columns, schema=schema.arrow)


def _is_per_frame(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) and pa.types.is_fixed_size_list(type_.value_type)


def _per_frame_column(value: np.ndarray, field: pa.Field) -> pa.Array:
    """A T×K array -> a one-row column of ``field``'s list of fixed-size (K) lists."""
    width = field.type.value_type.list_size
    if value.shape[1] != width:
        raise pa.ArrowInvalid(f"{field.name}: expected {width} values per frame, got {value.shape[1]}")
    flat = pa.array(np.ascontiguousarray(value).ravel(), type=field.type.value_type.value_type)
    frames = pa.FixedSizeListArray.from_arrays(flat, width)
    return pa.ListArray.from_arrays(pa.array([0, len(value)], pa.int32()), frames).cast(field.type)


def write_manifest(rows: Iterable[dict[str, Any]] | pa.Table, schema: ManifestSchema, url: str) -> str:
    """Write ``rows`` as a ``schema`` manifest to ``url`` atomically; returns ``url``."""
    write_rows(rows, schema, url)
    return url


def write_rows(rows: Iterable[dict[str, Any]] | pa.Table, schema: ManifestSchema, url: str) -> int:
    """Write ``rows`` (dicts, e.g. a generator, or a table) as a ``schema`` manifest to ``url``
    atomically; returns how many. A manifest of per-frame arrays (a row per track or title) is
    written as rows come, a row group each, so that a reader of a frame range reads only the rows
    that overlap it (``read_rows(frames=...)``) and a writer holds one row at a time (a join of a
    long title's ranges stays flat in memory); any other is written as one row group."""
    per_row = any(_is_per_frame(f.type) for f in schema.fields)
    if isinstance(rows, pa.Table):
        tables: Iterable[pa.Table] = [rows if rows.schema.equals(schema.arrow, check_metadata=True) else rows.cast(schema.arrow)]
    elif per_row:
        tables = (_row_table(i, row, schema) for i, row in enumerate(rows))
    else:
        tables = [to_table(list(rows), schema)]
    # The first row is made before the file is opened: a stage that returns a list does all its
    # work first, so a job killed midway (a time limit, out of memory) leaves no temporary file.
    tables = iter(tables)
    first = next(tables, None)
    count = 0
    compression, dictionary = _column_encodings(schema)
    with (storage.open_atomic(url) as f,
          pq.ParquetWriter(f, schema.arrow, compression=compression, use_dictionary=dictionary) as writer):
        for table in itertools.chain([first] if first is not None else [], tables):
            writer.write_table(table, row_group_size=1 if per_row else None)
            count += table.num_rows
    return count


@functools.cache
def _column_encodings(schema: ManifestSchema) -> tuple[dict[str, str], list[str]]:
    """Per Parquet leaf column of ``schema``: its compression, and those dictionary-encoded.
    Binary columns hold encoded images (JPEG, WebP), which zstd does not shrink and no dictionary
    fits: they are stored as they are (a 48-frame chunk of crops: ~4 ms to write against ~20 ms,
    and no larger); every other column is zstd with dictionaries."""
    buffer = io.BytesIO()
    pq.write_table(schema.arrow.empty_table(), buffer)
    leaves = pq.ParquetFile(io.BytesIO(buffer.getvalue())).schema
    binary = {f.name for f in schema.fields if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)}
    paths = [leaves.column(i).path for i in range(len(leaves))]
    raw = {path for path in paths if path.split(".")[0] in binary}
    return {path: "none" if path in raw else "zstd" for path in paths}, [path for path in paths if path not in raw]


def read_manifest(url: str, schema: ManifestSchema, without: tuple[str, ...] = (),
                  frames: tuple[int, int] | None = None) -> pa.Table:
    """Read a ``schema`` manifest, less the columns named in ``without``; refuse one of another
    name or version with a clear message. ``frames`` (start, end): only the row groups whose
    ``frame_index`` spans (first to last frame) overlap [start, end), and any without statistics,
    found from the Parquet footer without reading the others (a row group per row in per-frame
    manifests: the rows of a track or title that may have a frame in the range)."""
    unknown = set(without) - set(schema.column_names)
    if unknown:
        raise ValueError(f"{schema.name} has no columns {sorted(unknown)}")
    if frames is not None and "frame_index" not in schema.column_names:
        raise ValueError(f"{schema.name} has no frame_index to select frames by")
    kept = [field for field in schema.fields if field.name not in without]
    columns = [field.name for field in kept] if without else None
    with storage.open_url(url, "rb") as f:
        # Threaded decoding from a file object makes pyarrow 25 abort the interpreter at exit
        # ("terminate called without an active exception") about half the time.
        if frames is None:
            table = pq.read_table(f, columns=columns, use_threads=False)
        else:
            parquet = pq.ParquetFile(f)
            groups = _groups_with_frames(parquet.metadata, *frames)
            table = parquet.read_row_groups(groups, columns=columns, use_threads=False)
    meta = table.schema.metadata or {}
    name = meta.get(b"dubline.manifest", b"").decode() or "unknown"
    version = meta.get(b"dubline.schema_version", b"").decode() or "unknown"
    if name != schema.name or version != str(schema.version):
        raise ManifestVersionError(
            f"{url}: is a '{name}' manifest of schema version {version}, but this dubline reads "
            f"'{schema.name}' version {schema.version}. Write the run to a new output folder "
            f"(or remove the stale stage output) so the stage is recomputed."
        )
    return table.cast(pa.schema(kept, metadata=schema.arrow.metadata) if without else schema.arrow)


def _groups_with_frames(metadata: pq.FileMetaData, start: int, end: int) -> list[int]:
    """Row groups whose ``frame_index`` statistics (min to max) overlap frames [start, end), or that
    have none (or no ``frame_index``: the manifest check after reading names such a file)."""
    groups = []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        leaf = next((i for i in range(row_group.num_columns)
                     if row_group.column(i).path_in_schema.split(".")[0] == "frame_index"), None)
        stats = None if leaf is None else row_group.column(leaf).statistics
        if stats is None or not stats.has_min_max or (stats.min < end and stats.max >= start):
            groups.append(group)
    return groups


def count_rows(url: str) -> int:
    """The number of rows of a manifest, from its Parquet footer alone (no column is read)."""
    with storage.open_url(url, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_rows(url: str, schema: ManifestSchema, without: tuple[str, ...] = (),
              frames: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Rows as dicts, less the columns named in ``without`` (e.g. the faces manifest's per-frame
    ``landmarks``, ~9 MB per minute of a face, for a stage that does not use them); ``frames``
    (start, end): only the rows whose first-to-last frames overlap [start, end) (``read_manifest``),
    e.g. for a job over a range of a long title. Float-valued list columns (per-frame arrays: landmarks,
    coefficients, …) come as numpy arrays straight from Arrow: as Python lists they would cost
    ~10× the memory."""
    table = read_manifest(url, schema, without, frames)
    fields = [f for f in schema.fields if f.name not in without]
    arrays = [f.name for f in fields if _is_float_list(f.type)]
    rows = table.drop_columns(arrays).to_pylist() if arrays else table.to_pylist()
    for name in arrays:
        for row, value in zip(rows, table.column(name)):
            row[name] = _numpy(value)
    return [{f.name: row[f.name] for f in fields} for row in rows]


def _is_float_list(type_: pa.DataType) -> bool:
    while pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_):
        type_ = type_.value_type
        if pa.types.is_floating(type_):
            return True
    return False


def _numpy(value: pa.Scalar) -> np.ndarray | None:
    """A list scalar -> 1-D array, or T×K for a list of fixed-size lists."""
    if not value.is_valid:
        return None
    values = value.values
    if pa.types.is_fixed_size_list(values.type):
        return values.flatten().to_numpy(zero_copy_only=False).reshape(-1, values.type.list_size)
    if pa.types.is_list(values.type):  # rows of equal length (e.g. T×80 features)
        flat = values.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(values), -1) if len(values) else flat.reshape(0, 0)
    return values.to_numpy(zero_copy_only=False)
