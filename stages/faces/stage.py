"""The faces stage: detect, mesh, track, fit, and cut aligned crops.

Two streaming passes over the video keep memory flat in its length: the first runs detection and
the mesh on every frame and links faces into tracks per shot; after each track's geometry is
fitted, the second cuts the aligned crops of the dubbable tracks into frame chunks.

Tracks never cross a shot boundary, nor a multiple of ``FacesJob.segment_frames`` counted from
the title's first frame (a *segment*: by default 30 s at 25 fps). That bounds memory, and it
lets a long title run in frame ranges made of whole segments (``FacesJob.frame_range``), one job
each, which link exactly the tracks one job would and cut their crops. A join job
(``FacesJob.ranges``) numbers the ranges' tracks in order; their crops stay where the range jobs
wrote them (not copied: a chunk's own ``track_id`` is its range job's number). A face that goes
on across a segment's first frame becomes a new track there: it is found again by the detector
and fitted and smoothed afresh (a piece shorter than ``min_track_frames`` is left as filmed).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import FACE_TRACKS, SHOTS, TITLES
from dubline.stages.base import Resources, Stage, TitleError
from dubline.stages.job_rows import JobRow, Place, Upstream
from dubline.stages.face_model import geometry
from dubline.stages.face_model.crop import crop_face, crop_transforms
from dubline.stages.face_model.landmarks import FaceDetector, FaceLandmarker
from dubline.stages.face_model.smoothing import jitter, lag_frames, one_euro_zero_phase
from dubline.stages.faces.chunks import ChunkWriter
from dubline.stages.faces.tracking import TrackLinker, distinct, iou
from dubline.stages.media import rgb_frames
from dubline.stages.threads import prefetched


#: Frames of a track segment (30 s at 25 fps): memory stays bounded by it, not by the title's
#: length, and frame ranges of whole segments link the tracks one job would. Half a minute, so
#: that a one-minute title's analysis is two jobs (one job of the 60 s benchmark title: 36.6 s);
#: a track's own footage (its mouth model, its donors) is then at most this long.
SEGMENT_FRAMES = 750


class FacesJob(JobRow):
    titles_url: Upstream
    shots_url: Upstream
    chunks_url: Place | None = None  # the crops' folder, beside the output manifest
    #: Tracks are cut at every multiple of this many frames from the title's first frame. In the
    #: row, not the stage's parameters, so that every job of a title is given the segments its
    #: ranges were cut on.
    segment_frames: int = SEGMENT_FRAMES
    #: [start, end) clock frames, whole segments (multiples of ``segment_frames``): the tracks of
    #: these frames, numbered from 0, with their crops.
    frame_range: tuple[int, int] | None = None
    #: The range jobs' ``face_tracks`` manifests, in order: this job numbers their tracks (their
    #: crops stay in the ranges' chunks) instead of analysing frames.
    ranges: list[Upstream] = []

class FaceStage(Stage):
    """One row per title (a ``FacesJob``) -> ``face_tracks`` rows."""

    name = "faces"
    # 5: frames as shown (upright, on the frame clock, SDR view for analysis); 6: detector score per
    # track; 7: tracks cut at multiples of segment_frames from the title's start, not per track;
    # 8: landmarks and crop windows smoothed forwards and backwards (no lag behind fast moves);
    # 9: a range job cuts its own crops; 10: the join keeps the ranges' chunks where they are;
    # 11: the whole-frame detector skips frames between discoveries where every face is followed and scored
    version = "11"
    resources = Resources(cpus=1.0, memory_gb=2.0)
    output_schema = FACE_TRACKS
    job_row = FacesJob
    counted_metrics = ("faces_detected", "tracks", "tracks_dubbable")
    defaults = {
        "min_detection_confidence": 0.5,
        "discover_every": 5,  # frames between tiled detections (and whole-frame ones where every face is followed)
        "discover_grid": 2,
        "max_gap": 5,  # frames a track may miss and still continue (filled by interpolation)
        "min_track_frames": 8,
        # A track the face detector never scored this high is not taken for a face: a gesturing
        # hand found on the tiles scored at most 0.72 over 18 frames, while the real faces of the
        # video/train clips score a median 0.81-0.96 frame by frame (each track's best is higher).
        "min_face_score": 0.8,
        "min_face_px": 64,  # median face box height below which a track is not dubbed
        "max_abs_yaw": 50.0,  # degrees; beyond this profile the mouth cannot be re-driven well
        "smoothing_min_cutoff": 3.0,  # One-Euro filter, Hz
        "smoothing_beta": 0.02,
        "crop_size": 512,
        "chunk_frames": 48,
        "jpeg_quality": 95,
    }

    def setup(self) -> None:
        self._landmarker = FaceLandmarker(self.params["min_detection_confidence"])
        # Discovery frames' detections run ahead in the decoding thread, on a graph of their own.
        self._discoverer = FaceDetector(self.params["min_detection_confidence"])

    def process_batch(self, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            yield from (self._join(row["ranges"]) if row.get("ranges") else self._title(row))

    def _title(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        (title,) = read_rows(row["titles_url"], TITLES)
        shots = read_rows(row["shots_url"], SHOTS)
        start, end = row.get("frame_range") or (0, title["frame_count"])
        segment = row["segment_frames"]
        if row.get("frame_range") and (start >= end or start % segment or (end % segment and end < title["frame_count"])):
            raise ValueError(f"faces frame range {start}-{end} is not a run of whole {segment}-frame segments")
        started = time.perf_counter()
        try:
            analysed, frames, faces = self._link_and_analyse(title, shots, start, end, segment)
        except (av.error.FFmpegError, OSError) as exc:  # a decoder failure is this title's problem
            raise TitleError(row["title_id"], f"face analysis failed while decoding ({exc})") from exc
        for track_id, track in enumerate(analysed):
            track["track_id"] = track_id
        analysis_s = time.perf_counter() - started
        self._write_crops(title, analysed, row["chunks_url"])
        dubbable = [t for t in analysed if t["dubbable"]]
        weights = [len(t["frame_index"]) for t in analysed] or [1]
        self.count_work(frames=frames)
        self.report(
            faces_detected=faces,
            tracks=len(analysed),
            tracks_dubbable=len(dubbable),
            analysis_fps=frames / max(analysis_s, 1e-9),
            jitter_raw_px=np.average([t.pop("_jitter_raw") for t in analysed] or [0], weights=weights),
            jitter_smoothed_px=np.average([t.pop("_jitter_smoothed") for t in analysed] or [0], weights=weights),
            reprojection_px=np.average([t.pop("_reprojection") for t in analysed] or [0], weights=weights),
            smoothing_lag_frames_max=max([t.pop("_lag") for t in analysed] or [0]),
            crops_s=time.perf_counter() - started - analysis_s,
        )
        return [{k: v for k, v in t.items() if not k.startswith("_")} for t in analysed]

    @staticmethod
    def _join(ranges: list[str]) -> Iterator[dict[str, Any]]:
        """The range jobs' tracks, numbered in range order as one job numbers them, one range read
        at a time (a long title's landmarks are never all in memory). Their crops stay in the
        range jobs' chunks (a long title's crops are neither read nor written again)."""
        track_id = 0
        for url in ranges:
            for track in read_rows(url, FACE_TRACKS):
                yield {**track, "track_id": track_id}
                track_id += 1

    def _link_and_analyse(self, title: dict[str, Any], shots: list[dict[str, Any]], start: int, end: int,
                          segment_frames: int) -> tuple[list[dict[str, Any]], int, int]:
        """Pass 1 over clock frames [``start``, ``end``): faces of every frame, linked per shot and
        segment; each track is analysed as soon as it ends, so its raw meshes never outlive it.

        Returns the analysed tracks in shot, segment and creation order, the frame and face counts.
        """
        starts = [s["start_frame"] for s in shots]
        place, linker = None, TrackLinker(self.params["max_gap"])  # place: (shot index, segment index)
        analysed: list[tuple[int, int, int, dict[str, Any]]] = []

        def analyse(tracks) -> None:
            analysed.extend((*place, t.serial, self._analyse(title, place[0], t)) for t in tracks)

        frames = faces = 0
        for index, rgb, discovered in prefetched(self._discoveries(rgb_frames(title, start=start), end)):
            frames += 1
            here = (max(0, bisect_right(starts, index) - 1), index // segment_frames)
            if here != place:  # a new shot or segment: the tracks before it have ended
                analyse(linker.tracks)
                place, linker = here, TrackLinker(self.params["max_gap"])
            boxes, meshes, scores = self._faces_in_frame(rgb, index, linker, discovered)
            faces += len(boxes)
            linker.add(index, boxes, meshes, scores)
            analyse(linker.pop_finished(index))
        analyse(linker.tracks)
        analysed.sort(key=lambda item: item[:3])
        return [track for *_, track in analysed], frames, faces

    def _discoveries(self, decoded: Iterator[tuple[int, np.ndarray]], end: int
                     ) -> Iterator[tuple[int, np.ndarray, list[np.ndarray] | None]]:
        """(clock frame index, RGB frame in the SDR view, on discovery frames the whole-frame and
        the tiled detections, else None) up to frame ``end``. Discovery frames are every
        ``discover_every`` frames, known in advance, so their detections run in the decoding
        thread while the previous frames are meshed."""
        every, grid = self.params["discover_every"], self.params["discover_grid"]
        for index, rgb in decoded:
            if index >= end:
                return
            found = [self._discoverer.detect(rgb), self._discoverer.detect_tiled(rgb, grid)] if index % every == 0 else None
            yield index, rgb, found

    def _faces_in_frame(self, rgb: np.ndarray, index: int, linker: TrackLinker,
                        discovered: list[np.ndarray] | None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Meshes of the faces in one frame, with their boxes (N×4, from the mesh's extent) and
        the detector's best score on each (N; 0 where it was only followed).

        Candidates: tracked faces where they were in the previous frame, the detector's faces,
        and on discovery frames faces found on tiles (small faces; ``discovered``: the
        whole-frame and tiled detections of a discovery frame, else None). The mesh confirms
        each one. A followed face is meshed from its previous box whether or not the detector
        runs, so the whole-frame detector (~5 ms) runs on discovery frames and otherwise only
        where it can change something (``TrackLinker.needs_detector``: nothing followed, a face
        missed, a face not yet scored as one); a face entering beside a followed one is found at
        the next discovery frame.
        """
        expected = linker.expected_boxes(index)
        candidates = [np.hstack([expected, np.zeros((len(expected), 1))])]
        if discovered is not None:
            candidates += discovered
        elif linker.needs_detector(index, self.params["min_face_score"]):
            candidates.append(self._landmarker.detect(rgb))
        candidates = np.concatenate(candidates)
        meshes = [m for m in (self._landmarker.mesh(rgb, candidates[i, :4]) for i in distinct(candidates)) if m is not None]
        boxes = np.array([geometry.mesh_box(m) for m in meshes]).reshape(-1, 4)
        kept = distinct(boxes)  # two candidates may have found the same face
        overlap = iou(boxes[kept], candidates[:, :4]) if len(kept) and len(candidates) else np.zeros((len(kept), 0))
        scores = np.where(overlap >= 0.3, candidates[None, :, 4], 0.0).max(axis=1, initial=0.0)
        return boxes[kept], [meshes[i] for i in kept], scores

    def _analyse(self, title: dict[str, Any], shot_index: int, track) -> dict[str, Any]:
        """Smoothing, pose, coefficients and blendshape map of one track."""
        p = self.params
        frames, boxes, raw, filled = track.dense()
        smoothed = one_euro_zero_phase(raw, title["fps"], p["smoothing_min_cutoff"], p["smoothing_beta"])
        fit = geometry.fit_pose(smoothed)
        pose = fit.pose_rows()
        expression = geometry.expression_coefficients(fit.canonical)
        blink = geometry.blink(fit.canonical)
        coefficients = np.hstack([expression, blink])
        identity, blendshapes = geometry.fit_blendshapes(fit.canonical, coefficients)
        sample = slice(None, None, max(1, len(frames) // 200))  # the figure needs no more frames than this
        rebuilt = geometry.to_image(geometry.reconstruct(identity, blendshapes, coefficients[sample]),
                                    fit.rotation[sample], fit.scale[sample], fit.translation[sample])
        reason = None
        if len(frames) < p["min_track_frames"] and title["mode"] != "avatar":  # a portrait is one frame
            reason = f"track too short ({len(frames)} frames < {p['min_track_frames']})"
        elif track.best_score < p["min_face_score"] and title["mode"] != "avatar":  # a portrait is a face
            reason = f"not surely a face (best detector score {track.best_score:.2f} < {p['min_face_score']})"
        elif np.median(boxes[:, 3] - boxes[:, 1]) < p["min_face_px"]:
            reason = f"face too small (median height {np.median(boxes[:, 3] - boxes[:, 1]):.0f} px < {p['min_face_px']})"
        elif np.median(np.abs(pose[:, 0])) > p["max_abs_yaw"]:
            reason = f"extreme profile (median |yaw| {np.median(np.abs(pose[:, 0])):.0f}° > {p['max_abs_yaw']:.0f}°)"
        if reason:
            self.drop(reason.split(" (")[0])
        if filled:
            self.drop("frames interpolated in tracks", filled)
        return {
            "title_id": title["title_id"],
            "shot_index": shot_index,
            "dubbable": reason is None,
            "skip_reason": reason,
            "frame_index": frames.tolist(),
            "bbox": boxes.astype(np.float32),
            "landmarks": smoothed.reshape(len(frames), -1).astype(np.float32),
            "pose": pose.astype(np.float32),
            "expression": expression,
            "blink": blink,
            "identity": identity,
            "blendshapes": blendshapes.ravel(),
            "chunk_urls": [],
            "_jitter_raw": jitter(raw[..., :2]),
            "_jitter_smoothed": jitter(smoothed[..., :2]),
            "_lag": lag_frames(*(self._mouth_gap(x) for x in (raw, smoothed))),
            "_reprojection": float(np.linalg.norm(rebuilt[..., :2] - smoothed[sample, :, :2], axis=-1).mean()),
        }

    @staticmethod
    def _mouth_gap(landmarks: np.ndarray) -> np.ndarray:
        return landmarks[:, geometry.LOWER_LIP_INNER, 1] - landmarks[:, geometry.UPPER_LIP_INNER, 1]

    def _write_crops(self, title: dict[str, Any], tracks: list[dict[str, Any]], chunks_url: str) -> None:
        """Pass 2: aligned crops of the dubbable tracks, streamed into frame chunks (decoded from
        the keyframe before the first frame with a crop)."""
        size = self.params["crop_size"]
        due: dict[int, list[tuple[ChunkWriter, np.ndarray]]] = defaultdict(list)
        writers = []
        for track in tracks:
            if not track["dubbable"]:
                continue
            landmarks = track["landmarks"].reshape(len(track["frame_index"]), -1, 3)
            writer = ChunkWriter(chunks_url, title["title_id"], track["shot_index"], track["track_id"],
                                 self.params["chunk_frames"], self.params["jpeg_quality"])
            writers.append((track, writer))
            for frame, to_crop in zip(track["frame_index"], crop_transforms(landmarks, title["fps"], size)):
                due[frame].append((writer, to_crop))
        if due:
            last = max(due)
            # Crops hold the source's own code values (for HDR: not the SDR view), as they are
            # pasted back into the source's own picture.
            for index, rgb in prefetched(rgb_frames(title, view="rgb", start=min(due))):
                for writer, to_crop in due.pop(index, ()):
                    writer.add(index, crop_face(rgb, to_crop, size), to_crop)
                if index >= last:
                    break
        for track, writer in writers:
            writer.flush()
            track["chunk_urls"] = writer.urls
