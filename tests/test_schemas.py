"""Manifest schemas: round trips of every schema (local and memory://), version and name checks,
row validation, and the atomic storage helpers every manifest write goes through."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dubline.schemas import storage
from dubline.schemas.manifest_io import ManifestVersionError, read_manifest, read_rows, to_table, write_manifest, write_rows
from dubline.schemas.manifests import (
    ALL_SCHEMAS,
    BLINK_NAMES,
    EXPRESSION_NAMES,
    MESH_POINTS,
    POSE_NAMES,
    SHOTS,
    TITLES,
)

T = 5  # frames per track in the sample rows
rng = np.random.default_rng(0)


def _frames(width: int, frames: int = T) -> list[list[float]]:
    """A T×width float32 array as nested lists (what stages hand to write_manifest)."""
    return rng.normal(size=(frames, width)).astype(np.float32).tolist()


def _png(width: int = 8, height: int = 6) -> bytes:
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample_rows() -> dict[str, list[dict[str, Any]]]:
    """One realistic row (two where nullable columns deserve a null) for every manifest."""
    frame_index = list(range(120, 120 + T))
    return {
        "catalogue": [
            {
                "row": 1,
                "title_id": "ep01",
                "language": "pt-BR",
                "mode": "dub",
                "source_url": "s3://bucket/ep01.mp4",
                "dub_audio_url": "s3://bucket/ep01.pt-BR.wav",
                "dub_script_url": "s3://bucket/ep01.pt-BR.srt",
                "options_json": '{"audio_tolerance_s": 2.0, "crf": 18, "preset": "veryfast"}',
            },
            {
                "row": 2,
                "title_id": "ep01",
                "language": "fr",
                "mode": "dub",
                "source_url": "s3://bucket/ep01.mp4",
                "dub_audio_url": "s3://bucket/ep01.fr.wav",
                "dub_script_url": None,
                "options_json": '{"audio_tolerance_s": 2.0, "crf": 18, "preset": "veryfast"}',
            },
        ],
        "titles": [
            {
                "title_id": "ep01", "mode": "dub", "source_url": "/data/ep01.mp4",
                "content_hash": "9f86d081884c7d659a2feaa0c55ad015", "size_bytes": 12_345_678_901,
                "container": "mov,mp4,m4a,3gp,3g2,mj2", "video_codec": "h264", "pix_fmt": "yuv420p",
                "width": 1920, "height": 1080, "fps_num": 30000, "fps_den": 1001, "fps": 30000 / 1001,
                "frame_count": 43_157, "duration_s": 1439.8, "variable_frame_rate": False, "keyframe_index": [0, 250], "keyframe_pts": [0, 128000],
                "coded_width": 1920, "coded_height": 1080, "rotation_deg": 0.0, "mirrored": False,
                "sar_num": 1, "sar_den": 1, "start_s": 0.0, "source_frames": 43_157,
                "color_primaries": 1, "color_transfer": 1, "color_matrix": 1, "color_range": 1, "bit_depth": 8,
                "bit_rate": 8_000_000, "still": False, "background": None,
                "audio_streams": 1, "audio_codec": "aac", "audio_sample_rate": 48_000, "audio_channels": 2,
            },
            {
                "title_id": "portrait", "mode": "avatar", "source_url": "/data/face.png",
                "content_hash": "e3b0c44298fc1c149afbf4c8996fb924", "size_bytes": 52_000,
                "container": "png_pipe", "video_codec": "png", "pix_fmt": "rgb24",
                "width": 512, "height": 512, "fps_num": 25, "fps_den": 1, "fps": 25.0,
                "frame_count": 1, "duration_s": 0.04, "variable_frame_rate": False, "keyframe_index": [], "keyframe_pts": [],
                "coded_width": 512, "coded_height": 512, "rotation_deg": 0.0, "mirrored": False,
                "sar_num": 1, "sar_den": 1, "start_s": 0.0, "source_frames": 1,
                "color_primaries": 1, "color_transfer": 13, "color_matrix": 0, "color_range": 2, "bit_depth": 8,
                "bit_rate": None, "still": True, "background": "#ffffff",
                "audio_streams": 0, "audio_codec": None, "audio_sample_rate": None, "audio_channels": None,
            },
        ],
        "shots": [
            {"title_id": "ep01", "shot_index": 3, "start_frame": 120, "end_frame": 245,
             "start_s": 4.004, "end_s": 8.1748},
        ],
        "face_tracks": [
            {
                "title_id": "ep01", "shot_index": 3, "track_id": 0, "dubbable": True, "skip_reason": None,
                "frame_index": frame_index,
                "bbox": _frames(4),
                "landmarks": _frames(MESH_POINTS * 3),
                "pose": _frames(len(POSE_NAMES)),
                "expression": _frames(len(EXPRESSION_NAMES)),
                "blink": _frames(len(BLINK_NAMES)),
                "identity": _frames(MESH_POINTS * 3, frames=1)[0],
                "blendshapes": _frames(len(EXPRESSION_NAMES) * MESH_POINTS * 3, frames=1)[0],
                "chunk_urls": ["memory://run/chunks/ep01/3/0/000.parquet", "memory://run/chunks/ep01/3/0/001.parquet"],
            },
            {
                "title_id": "ep01", "shot_index": 3, "track_id": 1, "dubbable": False,
                "skip_reason": "face smaller than 48 px", "frame_index": frame_index[:2],
                "bbox": _frames(4, 2), "landmarks": _frames(MESH_POINTS * 3, 2),
                "pose": _frames(len(POSE_NAMES), 2), "expression": _frames(len(EXPRESSION_NAMES), 2),
                "blink": _frames(len(BLINK_NAMES), 2), "identity": _frames(MESH_POINTS * 3, 1)[0],
                "blendshapes": [], "chunk_urls": [],
            },
        ],
        "audio_tracks": [
            {
                "title_id": "ep01", "language": "fr", "audio_url": "/data/ep01.fr.wav",
                "audio_hash": "5d41402abc4b2a76b9719d911017c592", "sample_rate": 16_000,
                "duration_s": 1439.5, "audio_fit": "padded", "fps": 30000 / 1001,
                "loudness_db": [-23.5, -18.25, -100.0],
                "speech_segments": [{"start_s": 0.5, "end_s": 2.25}, {"start_s": 3.0, "end_s": 4.75}],
                "transcript": "Bonjour à tous.",
                "words": [
                    {"word": "Bonjour", "start_s": 0.5, "end_s": 0.9, "probability": 0.875},
                    {"word": "à", "start_s": 0.95, "end_s": 1.0, "probability": 0.5},
                    {"word": "tous.", "start_s": 1.05, "end_s": 1.5, "probability": 0.625},
                ],
                "transcript_language": "fr",
                "detected_language": "fr", "language_probability": 0.96875, "language_matches": True,
                "srt_url": "/run/ep01.fr.srt", "vtt_url": "/run/ep01.fr.vtt",
                "script_url": "/data/ep01.fr.srt",
                "script": [{"start_s": 0.5, "end_s": 1.5, "text": "Bonjour à tous."},
                           {"start_s": None, "end_s": None, "text": "Ça va ?"}],
            },
            {
                "title_id": "ep01", "language": "de", "audio_url": "/data/ep01.de.wav",
                "audio_hash": "7d793037a0760186574b0282f2f435e7", "sample_rate": 16_000,
                "duration_s": 1439.5, "audio_fit": "exact", "fps": 30000 / 1001, "loudness_db": [-30.0],
                "speech_segments": [], "transcript": None, "words": None, "transcript_language": None,
                "detected_language": None, "language_probability": None, "language_matches": None,
                "srt_url": None, "vtt_url": None, "script_url": None, "script": None,
            },
        ],
        "driven_coeffs": [
            {
                "title_id": "ep01", "language": "fr", "shot_index": 3, "track_id": 0,
                "frame_index": frame_index,
                "expression": _frames(len(EXPRESSION_NAMES)),
                "pose": _frames(len(POSE_NAMES)),
                "blink": _frames(len(BLINK_NAMES)),
                "mouth_path": "transcript-aligned",
                "mouth_path_note": "the script does not match the audio (alignment score 0.21 < 0.30)",
                "alignment_score": 0.75,
                "visemes": [{"viseme": "bilabial", "phonemes": "b", "start_s": 4.0, "end_s": 4.0625},
                            {"viseme": "open", "phonemes": "O~", "start_s": 4.0625, "end_s": 4.25}],
                # a speaker's turn ends: driven, fading out, then as filmed
                "speaker_probability": [0.875, 0.75, 0.5, 0.03125, 0.0],
                "driven_weight": [1.0, 1.0, 0.5, 0.0, 0.0],
                "speaker": "S1",
            },
            {
                "title_id": "ep01", "language": "ja", "shot_index": 3, "track_id": 0,
                "frame_index": frame_index,
                "expression": _frames(len(EXPRESSION_NAMES)),
                "pose": _frames(len(POSE_NAMES)),
                "blink": _frames(len(BLINK_NAMES)),
                "mouth_path": "model-only", "mouth_path_note": "no script and no transcript",
                "alignment_score": None, "visemes": [],
                "speaker_probability": None, "driven_weight": [1.0] * T, "speaker": None,  # no source audio
            },
        ],
        "rendered_tracks": [
            {
                "title_id": "ep01", "language": "fr", "shot_index": 3, "track_id": 0,
                "frame_index": [120, 121, 122],
                "chunk_urls": ["/run/manifests/render/ep01/k.chunks/track0000_0000.parquet"], "chunk_index": [0],
            },
        ],
        "frame_chunk": [
            {
                "title_id": "ep01", "shot_index": 3, "track_id": 0, "frame_index": 120 + i,
                "image": _png(), "image_format": "png",
                "affine": np.array([[1.5, 0.1, 300.0], [-0.1, 1.5, 120.0]], np.float32).ravel().tolist(),
            }
            for i in range(3)
        ],
        "outputs": [
            {
                "title_id": "ep01", "language": "fr", "video_url": "/run/outputs/ep01/ep01.fr.mp4",
                "width": 1920, "height": 1080, "fps": 30000 / 1001, "frame_count": 43_157,
                "duration_s": 1439.8, "video_codec": "h264", "audio_codec": "aac",
                "pix_fmt": "yuv420p", "color_primaries": 1, "color_transfer": 1, "color_matrix": 1,
                "color_range": 1, "crf": 18,
                "audio_source_s": 1439.5, "audio_fit": "padded", "faces_dubbed": 4,
            }
        ],
        "mouth_meshes": [
            {"title_id": "ep01", "language": "fr", "track_id": 3, "frame_index": list(range(T)),
             "landmarks": _frames(MESH_POINTS * 3)},
            {"title_id": "ep01", "language": "fr", "track_id": 5, "frame_index": [40, 90],
             "landmarks": _frames(MESH_POINTS * 3, 2)},
        ],
        "reports": [
            {
                "title_id": "ep01", "language": "fr", "html_url": "/run/outputs/ep01/ep01.fr.report.html",
                "json_url": "/run/outputs/ep01/ep01.fr.report.json", "video_url": "/run/outputs/ep01/ep01.fr.mp4",
                "tracks_dubbed": 2, "tracks_skipped": 1, "lipsync_r": 0.81,
            },
            {
                "title_id": "ep02", "language": "fr", "html_url": "/run/outputs/ep02/ep02.fr.report.html",
                "json_url": "/run/outputs/ep02/ep02.fr.report.json", "video_url": "/run/outputs/ep02/ep02.fr.mp4",
                "tracks_dubbed": 0, "tracks_skipped": 0, "lipsync_r": None,
            },
        ],
    }


SAMPLE_ROWS = _sample_rows()


def assert_same(got: Any, want: Any, where: str = "row") -> None:
    """Equal values; floats and float arrays compared with numpy allclose (float32 columns)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, float):
        assert np.allclose(got, want, rtol=1e-6), where
    elif isinstance(want, list) and _is_float_array(want):
        assert np.asarray(got).shape == np.asarray(want).shape, where
        assert np.allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)), where
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def _is_float_array(values: list[Any]) -> bool:
    try:
        return np.asarray(values).dtype.kind == "f"
    except ValueError:  # ragged
        return False


@pytest.fixture
def mem_dir():
    """A private memory:// folder, removed afterwards (the memory filesystem is process-wide)."""
    url = f"memory://dubline-tests/{uuid.uuid4().hex}"
    yield url
    storage.remove(url)


def test_every_schema_has_sample_rows() -> None:
    assert set(SAMPLE_ROWS) == set(ALL_SCHEMAS), "add sample rows for a new manifest schema here"


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
@pytest.mark.parametrize("where", ["local", "memory"])
def test_manifest_round_trip(name: str, where: str, tmp_path, mem_dir) -> None:
    schema, rows = ALL_SCHEMAS[name], SAMPLE_ROWS[name]
    folder = str(tmp_path) if where == "local" else mem_dir
    url = storage.join(folder, "nested", f"{name}.parquet")

    assert write_manifest(rows, schema, url) == url

    table = read_manifest(url, schema)
    assert table.schema.equals(schema.arrow, check_metadata=True)
    assert table.schema.metadata[b"dubline.manifest"] == name.encode()
    assert table.schema.metadata[b"dubline.schema_version"] == str(schema.version).encode()
    assert_same(read_rows(url, schema), rows)


def test_face_track_arrays_have_their_declared_widths(tmp_path) -> None:
    url = write_manifest(SAMPLE_ROWS["face_tracks"], ALL_SCHEMAS["face_tracks"], str(tmp_path / "f.parquet"))
    track = read_manifest(url, ALL_SCHEMAS["face_tracks"]).slice(0, 1)
    assert np.asarray(track["landmarks"][0].as_py()).shape == (T, MESH_POINTS * 3)
    assert np.asarray(track["expression"][0].as_py()).shape == (T, len(EXPRESSION_NAMES))
    assert len(track["identity"][0].as_py()) == MESH_POINTS * 3


def test_a_range_job_reads_only_the_tracks_in_its_frames(tmp_path) -> None:
    """Three tracks over frames 0-4, 10-14 and 30-34, a row group each: a job over frames [12, 31)
    reads the last two, from the footer's statistics; a file of one row group is read whole."""
    schema, sample = ALL_SCHEMAS["face_tracks"], SAMPLE_ROWS["face_tracks"][0]
    rows = [{**sample, "track_id": k, "frame_index": list(range(first, first + T))} for k, first in enumerate((0, 10, 30))]
    url = write_manifest(rows, schema, str(tmp_path / "f.parquet"))
    assert pq.ParquetFile(url).metadata.num_row_groups == 3
    assert [r["track_id"] for r in read_rows(url, schema, frames=(12, 31))] == [1, 2]
    assert [r["track_id"] for r in read_rows(url, schema, frames=(20, 30))] == []
    assert_same(read_rows(url, schema, frames=(0, 40)), rows)
    pq.write_table(to_table(rows, schema), str(tmp_path / "one.parquet"))  # as written before row groups per row
    assert [r["track_id"] for r in read_rows(str(tmp_path / "one.parquet"), schema, frames=(20, 30))] == [0, 1, 2]
    with pytest.raises(ValueError, match="no frame_index"):
        read_rows(url, ALL_SCHEMAS["titles"], frames=(0, 1))
    # a scalar frame_index (a frame chunk's rows) selects too; a file of another manifest is named as such
    chunk = write_manifest(SAMPLE_ROWS["frame_chunk"], ALL_SCHEMAS["frame_chunk"], str(tmp_path / "c.parquet"))
    assert len(read_rows(chunk, ALL_SCHEMAS["frame_chunk"], frames=(0, 10**9))) == len(SAMPLE_ROWS["frame_chunk"])
    with pytest.raises(ManifestVersionError, match="is a 'face_tracks' manifest"):
        read_rows(url, ALL_SCHEMAS["driven_coeffs"], frames=(0, 40))


@pytest.mark.parametrize("where", ["local", "memory"])
def test_rows_are_written_as_they_come_and_a_failure_leaves_nothing(where, tmp_path, mem_dir) -> None:
    """A generator of per-frame rows is written a row group at a time; if it fails midway, neither
    the manifest nor a temporary file is left, and an older manifest there is kept."""
    schema, sample = ALL_SCHEMAS["face_tracks"], SAMPLE_ROWS["face_tracks"][0]
    folder = str(tmp_path) if where == "local" else mem_dir
    url = storage.join(folder, "f.parquet")
    given = []

    fs, path = storage.filesystem(folder)
    listed_at_first_row = []

    def tracks(fail_at: int | None):
        for k in range(3):
            if k == fail_at:
                raise RuntimeError("range manifest unreadable")
            if k == 0:  # the stage's work up to its first row happens before any file is opened
                listed_at_first_row.append(fs.ls(path, detail=False) if fs.exists(path) else [])
            given.append(k)
            yield {**sample, "track_id": k}

    assert write_rows(tracks(None), schema, url) == 3
    assert [r["track_id"] for r in read_rows(url, schema)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="unreadable"):
        write_rows(tracks(2), schema, url)
    assert given == [0, 1, 2, 0, 1]  # taken one at a time, up to the failure
    assert [r["track_id"] for r in read_rows(url, schema)] == [0, 1, 2]
    assert [[name.rpartition("/")[2] for name in listed] for listed in listed_at_first_row] == [[], ["f.parquet"]]
    assert [name.rpartition("/")[2] for name in fs.ls(path, detail=False)] == ["f.parquet"]


def test_a_stage_reads_the_faces_manifest_without_the_columns_it_does_not_use(tmp_path) -> None:
    schema, rows = ALL_SCHEMAS["face_tracks"], SAMPLE_ROWS["face_tracks"]
    url = write_manifest(rows, schema, str(tmp_path / "f.parquet"))
    lean = read_rows(url, schema, without=("landmarks",))
    assert_same(lean, [{k: v for k, v in row.items() if k != "landmarks"} for row in rows])
    assert read_manifest(url, schema, without=("landmarks",)).schema.metadata[b"dubline.manifest"] == b"face_tracks"
    with pytest.raises(ValueError, match="no columns"):
        read_rows(url, schema, without=("landmark",))


def test_per_frame_array_of_wrong_width_is_refused(tmp_path) -> None:
    row = dict(SAMPLE_ROWS["driven_coeffs"][0], expression=_frames(len(EXPRESSION_NAMES) - 1))
    with pytest.raises(pa.ArrowInvalid):
        write_manifest([row], ALL_SCHEMAS["driven_coeffs"], str(tmp_path / "d.parquet"))
    assert not os.listdir(tmp_path)


def test_table_with_inferred_types_is_cast_to_the_schema(tmp_path) -> None:
    inferred = pa.Table.from_pylist(SAMPLE_ROWS["shots"])  # int64 shot_index, no metadata
    url = write_manifest(inferred, SHOTS, str(tmp_path / "shots.parquet"))
    assert pq.read_schema(url).equals(SHOTS.arrow, check_metadata=True)
    assert read_rows(url, SHOTS) == SAMPLE_ROWS["shots"]


@pytest.mark.parametrize("written_version", [SHOTS.version + 1, SHOTS.version - 1])
def test_manifest_of_another_version_is_refused(written_version: int, tmp_path) -> None:
    other = dataclasses.replace(SHOTS, version=written_version)
    url = write_manifest(SAMPLE_ROWS["shots"], other, str(tmp_path / "shots.parquet"))
    assert read_rows(url, other) == SAMPLE_ROWS["shots"]  # its own version still reads it

    with pytest.raises(ManifestVersionError) as info:
        read_manifest(url, SHOTS)
    message = str(info.value)
    assert url in message
    assert f"schema version {written_version}" in message
    assert f"'shots' version {SHOTS.version}" in message


def test_manifest_of_another_name_is_refused(tmp_path) -> None:
    url = write_manifest(SAMPLE_ROWS["shots"], SHOTS, str(tmp_path / "shots.parquet"))
    with pytest.raises(ManifestVersionError, match=r"is a 'shots' manifest .* reads 'titles'"):
        read_rows(url, TITLES)


def test_parquet_without_dubline_metadata_is_refused(tmp_path) -> None:
    url = str(tmp_path / "plain.parquet")
    pq.write_table(pa.Table.from_pylist(SAMPLE_ROWS["shots"]), url)
    with pytest.raises(ManifestVersionError, match=r"plain\.parquet: is a 'unknown' manifest of schema version unknown"):
        read_manifest(url, SHOTS)


def test_unknown_column_is_named() -> None:
    row = dict(SAMPLE_ROWS["shots"][0], shot_lenght=125)
    with pytest.raises(ValueError, match=r"shots row 1: unknown columns \['shot_lenght'\]"):
        to_table([SAMPLE_ROWS["shots"][0], row], SHOTS)


@pytest.mark.parametrize("value", ["absent", None])
def test_missing_required_value_is_named(value: str | None, tmp_path) -> None:
    row = dict(SAMPLE_ROWS["shots"][0])
    if value == "absent":
        del row["end_frame"]
    else:
        row["end_frame"] = None
    with pytest.raises(ValueError, match=r"shots row 0: missing values for required columns \['end_frame'\]"):
        write_manifest([row], SHOTS, str(tmp_path / "shots.parquet"))


def test_missing_nullable_value_is_null() -> None:
    row = {k: v for k, v in SAMPLE_ROWS["titles"][0].items() if not k.startswith("audio_") or k == "audio_streams"}
    assert to_table([row], TITLES).to_pylist()[0]["audio_codec"] is None


# --- storage ---------------------------------------------------------------------------------


def _leftovers(folder: str) -> list[str]:
    fs, path = storage.filesystem(folder)
    return [p for p in fs.find(path) if "partial" in p]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_bytes_is_atomic_and_leaves_no_partial_files(where: str, tmp_path, mem_dir) -> None:
    folder = str(tmp_path) if where == "local" else mem_dir
    url = storage.join(folder, "a", "b", "blob.bin")
    storage.write_bytes(url, b"first")
    storage.write_bytes(url, b"second, longer")  # overwrite in place

    assert storage.read_bytes(url) == b"second, longer"
    fs, path = storage.filesystem(folder)
    assert [p.rsplit("/", 1)[-1] for p in fs.find(path)] == ["blob.bin"]
    assert not _leftovers(folder)


def test_fingerprint_is_a_stable_content_hash(tmp_path) -> None:
    a, b, c = (str(tmp_path / name) for name in ("a", "b", "c"))
    storage.write_bytes(a, b"same bytes")
    storage.write_bytes(b, b"same bytes")
    storage.write_bytes(c, b"other bytes")

    assert storage.fingerprint(a) == storage.fingerprint(a) == storage.fingerprint(b)
    assert storage.fingerprint(a) != storage.fingerprint(c)
    assert storage.fingerprint(a) == hashlib.blake2b(b"same bytes", digest_size=16).hexdigest()


def test_fingerprint_of_a_file_larger_than_one_read_chunk(tmp_path) -> None:
    data = rng.integers(0, 256, size=(1 << 20) + 17, dtype=np.uint8).tobytes()
    url = str(tmp_path / "big")
    storage.write_bytes(url, data)
    assert storage.fingerprint(url) == hashlib.blake2b(data, digest_size=16).hexdigest()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_stat_token_changes_when_the_size_changes(where: str, tmp_path, mem_dir) -> None:
    url = storage.join(str(tmp_path) if where == "local" else mem_dir, "f.bin")
    storage.write_bytes(url, b"abc")
    before = storage.stat_token(url)
    assert storage.stat_token(url) == before  # unchanged file, same token
    storage.write_bytes(url, b"abcdef")
    assert storage.stat_token(url) != before


def test_local_output_moves_the_finished_file_into_place(tmp_path) -> None:
    url = str(tmp_path / "out" / "ep01.fr.mp4")
    with storage.local_output(url, ".mp4") as local_file:
        assert local_file.endswith(".mp4.partial") and os.path.dirname(local_file) == str(tmp_path / "out")
        with open(local_file, "wb") as f:
            f.write(b"video bytes")
        assert not os.path.exists(url)  # nothing at the target until the body finished

    assert storage.read_bytes(url) == b"video bytes"
    assert os.listdir(tmp_path / "out") == ["ep01.fr.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(url).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_local_output_leaves_nothing_when_the_body_fails(tmp_path) -> None:
    url = str(tmp_path / "out" / "ep01.fr.mp4")
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with storage.local_output(url, ".mp4") as local_file:
            with open(local_file, "wb") as f:
                f.write(b"half a video")
            raise RuntimeError("encoder crashed")
    assert not os.path.exists(local_file)
    assert os.listdir(tmp_path / "out") == []


def test_local_output_to_a_remote_url(mem_dir) -> None:
    url = storage.join(mem_dir, "ep01.fr.mp4")
    with storage.local_output(url, ".mp4") as local_file:
        with open(local_file, "wb") as f:
            f.write(b"video bytes")
    assert storage.read_bytes(url) == b"video bytes"
    assert not os.path.exists(local_file)
    assert not _leftovers(mem_dir)


@pytest.mark.parametrize(
    ("base", "parts", "want"),
    [
        ("/run", ("manifests", "shots"), "/run/manifests/shots"),
        ("/run/", ("/manifests/", "x.parquet"), "/run/manifests/x.parquet"),
        ("s3://bucket/run", ("x.parquet",), "s3://bucket/run/x.parquet"),
        ("memory://", ("a", "b.wav"), "memory://a/b.wav"),  # root of a protocol keeps its '//'
    ],
)
def test_join(base: str, parts: tuple[str, ...], want: str) -> None:
    assert storage.join(base, *parts) == want
