"""Mouth opening measured on a video with the face mesh, and how well two mouth curves agree.

The lip-sync self-check of every run and the lip-sync benchmark both measure the *output*
video the same way the faces stage measures a source: MediaPipe's mesh per frame, a rigid fit
per track, and ``jaw_open`` (inner-lip gap in inter-ocular distances) on the pose-free mesh.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from dubline.stages.face_model import geometry
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.media import describe, frames
from dubline.stages.threads import Pool, ordered_map, prefetched

#: IOD added around the hull of the mesh at and below the nose: the region dubbing may change.
_LOWER_FACE_MARGIN = 0.35


@dataclass
class MouthCurve:
    """Mouth opening of one face over the frames it was measured on."""

    frame_index: np.ndarray  # T frame numbers
    jaw_open: np.ndarray  # T, IOD units
    lower_face: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> hull polygon N×2 (px)

    def at(self, frames: np.ndarray) -> np.ndarray:
        """Opening at ``frames`` (NaN where the face was not measured)."""
        lookup = dict(zip(self.frame_index.tolist(), self.jaw_open.tolist()))
        return np.array([lookup.get(int(f), np.nan) for f in frames])


def _lower_face_hull(mesh: np.ndarray) -> np.ndarray:
    right, left = geometry.eye_centres(mesh[None, :, :2])
    iod = float(np.linalg.norm(left - right))
    below = mesh[mesh[:, 1] >= mesh[geometry.NOSE_TIP, 1] - 0.1 * iod, :2]
    hull = cv2.convexHull(below.astype(np.float32))[:, 0]
    centre = hull.mean(axis=0)
    grown = centre + (hull - centre) * (1 + _LOWER_FACE_MARGIN * iod / max(np.ptp(hull, axis=0).max(), 1.0))
    return grown.astype(np.int32)


def measure_mouths(
    landmarker: FaceLandmarker,
    video_url: str,
    boxes_by_track: dict[int, dict[int, np.ndarray]] | None = None,
    keep_hulls: bool = False,
) -> dict[int, MouthCurve]:
    """Measure mouth opening on ``video_url`` in one decoding pass (``measure_meshes``, then a
    rigid fit per track: ``mouth_curve``). ``keep_hulls`` keeps each frame's lower-face polygon
    (the region dubbing may change)."""
    meshes = measure_meshes(landmarker, video_url, boxes_by_track)
    return {track: mouth_curve(found, keep_hulls) for track, found in meshes.items()}


def measure_meshes(
    landmarker: FaceLandmarker | Pool[FaceLandmarker],
    video_url: str,
    boxes_by_track: dict[int, dict[int, np.ndarray]] | None = None,
    start: int = 0,
) -> dict[int, list[tuple[int, np.ndarray]]]:
    """The face mesh on ``video_url``, per track: (frame, 478×3 float32 px) where a face was found.

    ``boxes_by_track`` gives, per track id, where its face is (frame -> x0, y0, x1, y1), e.g. the
    dubbed tracks' boxes; each track is measured on its own frames, and decoding stops after the
    last of them. Frames are then independent: a ``Pool`` of landmarkers measures as many at once
    (the same meshes as one). Without it the largest face is followed from frame to frame
    (re-detected when lost; on one landmarker of the pool) and returned as track 0. ``start``:
    the first frame to decode (from the keyframe before it, ``media.frames``); boxes before it are
    not measured.
    """
    pool = landmarker if isinstance(landmarker, Pool) else Pool([landmarker])
    follow = boxes_by_track is None
    wanted = {0: {}} if follow else boxes_by_track
    meshes: dict[int, list[tuple[int, np.ndarray]]] = {track: [] for track in wanted}
    last_frame = None if follow else max((max(b) for b in wanted.values() if b), default=-1)
    if last_frame is not None and last_frame < start:
        return meshes

    def due_frames() -> Iterator[tuple[int, list[int], np.ndarray]]:
        """(frame, its tracks to measure, RGB) of the frames with any, decoded in a thread ahead
        of the mesh."""
        for index, frame in enumerate(frames(describe(video_url), start=start), start=start):  # as shown, on its clock, SDR
            if last_frame is not None and index > last_frame:
                return
            due = [0] if follow else [track for track, boxes in wanted.items() if index in boxes]
            if due:
                yield index, due, frame.to_ndarray(format="rgb24")

    if follow:
        previous: np.ndarray | None = None
        with pool.lend() as one:
            for index, _, rgb in prefetched(due_frames()):
                mesh = follow_largest_face(one, rgb, previous)
                previous = geometry.mesh_box(mesh) if mesh is not None else None
                if mesh is not None:
                    meshes[0].append((index, mesh.astype(np.float32)))
        return meshes

    def measured(item: tuple[int, list[int], np.ndarray]) -> tuple[int, list[tuple[int, np.ndarray | None]]]:
        index, due, rgb = item
        with pool.lend() as free:
            return index, [(track, free.mesh(rgb, wanted[track][index])) for track in due]

    for index, found in ordered_map(measured, prefetched(due_frames()), workers=len(pool)):
        for track, mesh in found:
            if mesh is not None:
                meshes[track].append((index, mesh.astype(np.float32)))
    return meshes


def follow_largest_face(landmarker: FaceLandmarker, rgb: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
    """478×3 mesh (px) of the face in ``previous``'s box (x0, y0, x1, y1), or of the largest face
    the detector finds when there is none there (None: no face)."""
    mesh = landmarker.mesh(rgb, previous) if previous is not None else None
    if mesh is None:
        found = landmarker.detect(rgb)
        if len(found):
            largest = found[np.argmax((found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1]))]
            mesh = landmarker.mesh(rgb, largest[:4])
    return mesh


def mouth_curve(meshes: list[tuple[int, np.ndarray]], keep_hulls: bool = False) -> MouthCurve:
    """One track's mouth opening from its (frame, 478×3 mesh px) in frame order: ``jaw_open`` on
    the pose-free mesh of one rigid fit over all of them (so it depends on the whole set)."""
    if not meshes:
        return MouthCurve(np.zeros(0, np.int64), np.zeros(0, np.float32))
    fit = geometry.fit_pose(np.stack([m for _, m in meshes]).astype(np.float64))
    jaw = geometry.expression_coefficients(fit.canonical)[:, 0]
    hulls = {index: _lower_face_hull(mesh) for index, mesh in meshes} if keep_hulls else {}
    return MouthCurve(np.array([i for i, _ in meshes], np.int64), jaw, hulls)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the entries where both are finite (NaN when undefined)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) < 1e-9 or np.std(y[ok]) < 1e-9:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int = 2, centre: int = 0) -> tuple[float, int]:
    """Highest Pearson r of ``x[t + lag]`` against ``y[t]`` for |lag − ``centre``| ≤ ``max_lag``
    -> (r, lag).

    A positive lag means ``x`` is late against ``y`` by that many frames.
    """
    best = (float("nan"), 0)
    for lag in range(centre - max_lag, centre + max_lag + 1):
        if lag >= 0:
            r = pearson(x[lag:], y[: len(y) - lag] if lag else y)
        else:
            r = pearson(x[:lag], y[-lag:])
        if np.isfinite(r) and (not np.isfinite(best[0]) or r > best[0]):
            best = (r, lag)
    return best
