"""Rendering the mouth and pasting it back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dubline.flows.demo import astronaut, write_portrait_clip
from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import DRIVEN_COEFFS, EXPRESSION_NAMES, FACE_TRACKS, FRAME_CHUNK, RENDERED_TRACKS
from dubline.cluster.policy import frame_ranges
from dubline.stages.base import StageJob, join_metrics
from dubline.stages.composite.paste import paste
from dubline.stages.face_model.geometry import (LEFT_BROW, LEFT_EYE_CORNERS, LEFT_EYE_LIDS, LOWER_LIP_INNER, NOSE_TIP,
                                        RIGHT_BROW, RIGHT_EYE_CORNERS, RIGHT_EYE_LIDS, UPPER_LIP_INNER)
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.faces import FaceStage
from dubline.stages.probe import ProbeStage
from dubline.stages.render import RenderStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage

JAW = EXPRESSION_NAMES.index("jaw_open")
#: Eye corners, lids and brows (inner and outer) of MediaPipe's mesh, both eyes.
EYE_AND_BROW = (*RIGHT_EYE_CORNERS, *RIGHT_EYE_LIDS, *LEFT_EYE_CORNERS, *LEFT_EYE_LIDS, RIGHT_BROW, LEFT_BROW, 70, 300)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("render")
    write_portrait_clip(folder / "clip.mp4", [astronaut()], 0.6, fps=25, size=512)
    runner = SequentialRunner()
    urls = {n: str(folder / f"{n}.parquet") for n in ("titles", "shots", "faces")}
    runner.run(StageJob(ProbeStage, {}, urls["titles"], "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(folder / "clip.mp4")},)))
    runner.run(StageJob(ShotsStage, {}, urls["shots"], "t", input_url=urls["titles"]))
    runner.run(StageJob(FaceStage, {}, urls["faces"], "t", rows=({"title_id": "t", "titles_url": urls["titles"], "shots_url": urls["shots"], "chunks_url": str(folder / "faces")},)))
    (track,) = read_rows(urls["faces"], FACE_TRACKS)
    return runner, folder, urls, track


def driven_row(track, expression: np.ndarray, weight: np.ndarray | None = None) -> dict:
    """A driven_coeffs row for ``track`` with ``expression``, driven on every frame unless ``weight``."""
    return {"title_id": "t", "language": "fr", "shot_index": 0, "track_id": track["track_id"],
            "frame_index": track["frame_index"], "expression": expression, "pose": np.asarray(track["pose"]),
            "blink": np.asarray(track["blink"]), "mouth_path": "model-only", "mouth_path_note": "",
            "alignment_score": None, "visemes": [], "speaker_probability": None,
            "driven_weight": np.ones(len(expression), np.float32) if weight is None else weight, "speaker": None}


def render(analysed, jaw_change: float, weight: np.ndarray | None = None):
    runner, folder, urls, track = analysed
    expression = np.asarray(track["expression"], dtype=np.float32).copy()
    expression[:, JAW] += jaw_change
    name = f"{jaw_change}{'' if weight is None else '-weighted'}"
    coeffs = str(folder / f"coeffs{name}.parquet")
    write_manifest([driven_row(track, expression, weight)], DRIVEN_COEFFS, coeffs)
    out = str(folder / f"render{name}.parquet")
    stats = runner.run(StageJob(RenderStage, {}, out, "t", rows=({"title_id": "t", "language": "fr", "faces_url": urls["faces"], "coeffs_url": coeffs, "chunks_url": str(folder / f"r{name}")},)))
    rendered = read_rows(out, RENDERED_TRACKS)
    crops = [r for t in rendered for url in t["chunk_urls"] for r in read_rows(url, FRAME_CHUNK)]
    sources = [r for url in track["chunk_urls"] for r in read_rows(url, FRAME_CHUNK)]
    return crops, sources, stats


def rgba(row) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGBA"))


def pasted(analysed, crops, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(source frame, the frame with its rendered crop pasted) at ``frame_index``."""
    from dubline.stages.media import rgb_frames as decode_rgb

    _, folder, _, _ = analysed
    frame = next(rgb for i, rgb in decode_rgb(str(folder / "clip.mp4")) if i == frame_index)
    before = frame.copy()
    row = crops[frame_index]
    paste(frame, rgba(row), np.asarray(row["affine"], dtype=np.float64).reshape(2, 3))
    return before, frame


def lip_gap(landmarker: FaceLandmarker, image: np.ndarray) -> float:
    (box,) = landmarker.detect(image)[:1]
    mesh = landmarker.mesh(image, box)
    return float(mesh[LOWER_LIP_INNER, 1] - mesh[UPPER_LIP_INNER, 1])


def test_own_coefficients_keep_the_filmed_mouth(analysed):
    # In a dub the mouth is always re-made (its shape from the coefficients, its pixels from the
    # track's own frames); driven by the speaker's own coefficients it must look as filmed.
    crops, _, _ = render(analysed, 0.0)
    landmarker = FaceLandmarker()
    before, after = pasted(analysed, crops, len(crops) // 2)
    # Within 1.5 px of the filmed 8 px gap: the mesh's own frame-to-frame noise on a still face.
    assert abs(lip_gap(landmarker, after) - lip_gap(landmarker, before)) < 1.5
    assert np.abs(after.astype(int) - before).mean() < 1.0, "nothing moves far"


def test_opening_the_jaw_opens_the_mouth_in_the_output(analysed):
    crops, _, stats = render(analysed, 0.25)
    runner, folder, urls, track = analysed
    landmarker = FaceLandmarker()
    frame_index = len(crops) // 2
    before, frame = pasted(analysed, crops, frame_index)
    Image.fromarray(np.hstack([before, frame])).save(folder / "jaw_open.png")  # before | after, to look at

    # Measured: the inner-lip gap grows from 8.0 to ~12 px for +0.25 inter-ocular distances of jaw_open.
    opened, filmed = lip_gap(landmarker, frame), lip_gap(landmarker, before)
    assert opened > 1.3 * filmed and opened > filmed + 3.0
    changed = np.abs(frame.astype(int) - before).sum(axis=-1) > 0
    ys, xs = np.nonzero(changed)
    # Only the lower face changed: the eyes, brows and upper nose stay bit-identical. Bounds from
    # the filmed landmarks: every changed pixel lies below the midpoint between the lower eyelids
    # and the nose tip, and no pixel of a box around the eyes and brows changed. (A warp driving
    # everything below the brows fails both; the former bound, 80 px above the mouth, passed it.)
    points = np.asarray(track["landmarks"])[frame_index].reshape(-1, 3)[:, :2]
    eyes = points[list(EYE_AND_BROW)]
    assert ys.min() > (eyes[:, 1].max() + points[NOSE_TIP, 1]) / 2, "only the lower face changed"
    (x0, y0), (x1, y1) = np.floor(eyes.min(axis=0)).astype(int) - 3, np.ceil(eyes.max(axis=0)).astype(int) + 3
    assert not changed[y0:y1, x0:x1].any(), "the eyes and brows are as filmed"
    assert stats.metrics["flicker_output"] < 3 * stats.metrics["flicker_source"] + 2.0


def test_only_driven_frames_are_rendered_and_the_mouth_fades_in(analysed):
    _, _, _, track = analysed
    frames = len(track["frame_index"])
    weight = np.zeros(frames, np.float32)
    weight[6:10] = [0.2, 0.4, 0.6, 0.8]  # a turn starts: the driven mouth fades in
    weight[10:] = 1.0
    crops, _, stats = render(analysed, 0.25, weight)
    assert [r["frame_index"] for r in crops] == list(track["frame_index"][6:])
    assert stats.metrics["frames_rendered"] == frames - 6
    # the cluster's metrics: one face on each rendered frame
    assert stats.metrics["frames_processed"] == stats.metrics["faces_rendered"] == frames - 6
    peak = [rgba(r)[..., 3].max() for r in crops]
    # The alpha is scaled by the weight: 0.2 of full strength at the first frame of the fade.
    assert peak[0] == pytest.approx(0.2 * peak[-1], abs=3) and peak[4] == peak[-1] == 255
    none, _, none_stats = render(analysed, 0.25, np.zeros(frames, np.float32))
    assert none == [] and "frames_rendered" not in none_stats.metrics, "a face driven on no frame is not rendered"


def test_paste_leaves_everything_outside_the_mask_bit_identical():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, size=(64, 64, 4), dtype=np.uint8)
    crop[..., 3] = 0
    crop[20:40, 20:40, 3] = 255
    original = frame.copy()
    to_frame = np.array([[1.5, 0.1, 100.0], [-0.1, 1.5, 60.0]])
    paste(frame, crop, to_frame)
    inside = np.zeros(frame.shape[:2], bool)
    import cv2

    warped_alpha = cv2.warpAffine(crop[..., 3], to_frame, (320, 240))
    inside[warped_alpha > 0] = True
    assert np.array_equal(frame[~inside], original[~inside])
    assert (frame[inside] != original[inside]).any()


def test_triangle_map_is_the_clamped_barycentric_map_even_on_degenerate_triangles():
    """Every covered pixel goes to the same barycentric point of its source triangle as the
    per-pixel definition gives (weights clamped to [0, 1], renormalised), on ordinary triangles and
    on collinear ones with corners on whole pixels (a shut mouth's opening), whose composed affine
    table alone was 0.14 px off."""
    import cv2
    from dubline.stages.render.warp import box_grid, triangle_map

    rng = np.random.default_rng(3)
    box = (100, 100, 400, 400)
    ordinary = rng.uniform(120, 380, (20, 1, 2)) + rng.normal(0, 15, (20, 3, 2))
    start = np.round(rng.uniform(120, 380, (20, 1, 2)))
    end = start + np.stack([rng.integers(5, 30, 20), np.zeros(20)], axis=1)[:, None]
    collinear = np.concatenate([start, end, (start + end) / 2], axis=1)
    for target in (ordinary, collinear):
        source = target + rng.normal(0, 3, target.shape)
        grid = box_grid(box)
        covered = triangle_map(source, target, box, grid)
        ids = np.zeros(covered.shape, np.int32)
        for i, corners in enumerate(np.round((target - box[:2]) * 16).astype(np.int32)):
            cv2.fillConvexPoly(ids, corners, i + 1, lineType=cv2.LINE_8, shift=4)
        ys, xs = np.nonzero(ids)
        a, b, c = (target[ids[ys, xs] - 1, k] for k in range(3))
        v0, v1, v2 = b - a, c - a, np.stack([xs + box[0], ys + box[1]], axis=1) - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-9, 1e-9, den)
        wb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        wc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        weights = np.clip(np.stack([1 - wb - wc, wb, wc], axis=1), 0, 1)
        expected = np.einsum("pk,pkd->pd", weights / weights.sum(axis=1, keepdims=True), source[ids[ys, xs] - 1])
        assert np.array_equal(covered, ids > 0) and len(ys) > 100
        assert np.abs(grid[ys, xs] - expected).max() < 1e-3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_paste_is_the_alpha_blend_with_the_seam_colour_matched(dtype):
    """The blend, pixel by pixel: frame·(1−a) + (crop·peak/255 + seam shift)·a, rounded, where the
    shift is the mean frame − crop difference over the feathered seam (0.05 < a < 0.95)."""
    import cv2

    rng = np.random.default_rng(1)
    peak = np.iinfo(dtype).max
    frame = (rng.integers(128, 256, size=(200, 260, 3)) * (peak // 255)).astype(dtype)
    crop = rng.integers(0, 128, size=(80, 90, 4), dtype=np.uint8)  # darker: the seam shift matters
    crop[..., 3] = cv2.GaussianBlur(np.pad(np.full((60, 70), 255, np.uint8), 10), (0, 0), 4)
    to_frame = np.array([[1.3, 0.2, 70.0], [-0.2, 1.3, 40.0]])
    pasted = frame.copy()
    region = paste(pasted, crop, to_frame)

    warped = cv2.warpAffine(crop, to_frame, (260, 200), borderValue=(0, 0, 0, 0))
    alpha = warped[..., 3:4].astype(np.float64) / 255
    layer = warped[..., :3] * (peak / 255)
    seam = ((alpha > 0.05) & (alpha < 0.95))[..., 0]
    shift = (frame[seam] - layer[seam]).mean(axis=0)
    expected = np.round(np.clip(frame * (1 - alpha) + (layer + shift) * alpha, 0, peak))
    assert np.array_equal(region, alpha[..., 0] > 0) and seam.sum() > 20
    assert np.abs(pasted.astype(np.float64) - expected).max() <= 1  # float32 in the stage
    assert np.array_equal(pasted[~region], frame[~region])


def test_avatar_framings(analysed):
    from dubline.stages.composite.stage import _avatar_framing

    _, _, urls, track = analysed
    title = {"title_id": "t", "width": 640, "height": 896}
    assert _avatar_framing(title, "full", None) is None
    resize, width, height = _avatar_framing(title, "resize", None)
    assert (width, height) == (366, 512) and resize(np.zeros((896, 640, 3), np.uint8)).shape == (512, 366, 3)
    crop, width, height = _avatar_framing(title, "crop", urls["faces"])
    marked = np.zeros((896, 640, 3), np.uint8)
    x0, y0, x1, y1 = (int(v) for v in track["bbox"][0])
    marked[(y0 + y1) // 2, (x0 + x1) // 2] = 255  # the face centre lands in the crop's centre
    ys, xs = np.nonzero(crop(marked)[..., 0])
    assert (width, height) == (512, 512) and abs(ys.mean() - 256) < 4 and abs(xs.mean() - 256) < 4


def test_a_title_rendered_in_frame_ranges_joins_into_the_single_job_s_output(analysed, tmp_path):
    runner, _, urls, _ = analysed
    # Face crops in chunks of 4 frames (starting at track positions 0, 4, 8, 12), so that the
    # ranges below own 2, 1 and 1 chunks, and the first range's end cuts through a chunk.
    faces = str(tmp_path / "faces.parquet")
    runner.run(StageJob(FaceStage, {"chunk_frames": 4}, faces, "t", rows=(
        {"title_id": "t", "titles_url": urls["titles"], "shots_url": urls["shots"], "chunks_url": str(tmp_path / "faces")},)))
    (track,) = read_rows(faces, FACE_TRACKS)
    assert len(track["frame_index"]) == 15 and len(track["chunk_urls"]) == 4
    expression = np.asarray(track["expression"], dtype=np.float32).copy()
    expression[:, JAW] += 0.25
    weight = np.ones(15, np.float32)
    weight[:3] = 0.0
    weight[8:12] = 0.0  # nothing to render in the second range's only chunk
    coeffs = write_manifest([driven_row(track, expression, weight)], DRIVEN_COEFFS, str(tmp_path / "coeffs.parquet"))

    def job(name: str, frame_range):
        out = str(tmp_path / f"{name}.parquet")
        stats = runner.run(StageJob(RenderStage, {}, out, "t", rows=({
            "title_id": "t", "language": "fr", "faces_url": faces, "coeffs_url": coeffs,
            "chunks_url": str(tmp_path / name), "frame_range": frame_range},)))
        return read_rows(out, RENDERED_TRACKS), stats

    (whole,), whole_stats = job("whole", None)
    parts, part_stats = zip(*(job(f"range{i}", r) for i, r in enumerate([(0, 5), (5, 10), (10, 15)])))
    assert [[p["chunk_index"] for p in part] for part in parts] == [[[0, 1]], [], [[3]]]
    (joined,) = RenderStage.join_ranges(list(parts))
    frames = list(track["frame_index"][3:8]) + list(track["frame_index"][12:])
    assert joined["frame_index"] == whole["frame_index"] == frames
    assert joined["chunk_index"] == whole["chunk_index"] == [0, 1, 3]
    # Chunk for chunk the same crops: every range plans the whole track, so it picks the same donors.
    for mine, theirs in zip(joined["chunk_urls"], whole["chunk_urls"], strict=True):
        got, want = read_rows(mine, FRAME_CHUNK), read_rows(theirs, FRAME_CHUNK)
        assert [(r["frame_index"], r["image"], list(r["affine"])) for r in got] == \
               [(r["frame_index"], r["image"], list(r["affine"])) for r in want]
    joined_metrics = join_metrics([s.metrics for s in part_stats], RenderStage.counted_metrics)
    assert joined_metrics["frames_rendered"] == whole_stats.metrics["frames_rendered"] == 8
    assert joined_metrics["outside_shift_iod_max"] == pytest.approx(whole_stats.metrics["outside_shift_iod_max"])


def test_join_metrics_adds_counts_takes_extremes_and_weights_means_by_faces():
    parts = [{"faces_rendered": 30.0, "frames_rendered": 30.0, "flicker_output": 1.0, "shift_max": 0.2, "fit_min": 0.9},
             {"faces_rendered": 10.0, "frames_rendered": 10.0, "flicker_output": 3.0, "shift_max": 0.5, "fit_min": 0.7}]
    assert join_metrics(parts, ("frames_rendered",)) == {
        "faces_rendered": 40.0, "frames_rendered": 40.0, "flicker_output": 1.5, "shift_max": 0.5, "fit_min": 0.7}


@pytest.mark.parametrize(("frames", "fps", "expected"), [
    (150, 25.0, [(0, 150)]),  # 6 s: one job
    (1500, 25.0, [(0, 375), (375, 750), (750, 1125), (1125, 1500)]),  # 60 s: four of 15 s
    (1001, 29.97, [(0, 500), (500, 1001)]),  # 33.4 s: two, the frames shared out evenly
])
def test_render_frame_ranges_are_equal_parts_of_about_fifteen_seconds(frames, fps, expected):
    assert frame_ranges("render", frames, fps) == expected
    assert frame_ranges("shots", frames, fps) == [(0, frames)], "a stage without range_s runs one job per title"


@pytest.mark.parametrize(("frames", "fps", "expected"), [
    (750, 25.0, [(0, 750)]),  # half a minute: one job
    (1489, 25.0, [(0, 750), (750, 1489)]),  # the 60 s benchmark title: a segment each
    (1800, 30.0, [(0, 750), (750, 1800)]),  # one minute at 30 fps: ranges start on segments
    (4500, 25.0, [(0, 750), (750, 1500), (1500, 2250), (2250, 3000), (3000, 3750), (3750, 4500)]),
])
def test_face_ranges_start_on_track_segments(frames, fps, expected):
    assert frame_ranges("faces", frames, fps, align=750) == expected
