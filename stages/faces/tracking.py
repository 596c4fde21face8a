"""Link per-frame face detections into tracks within one shot.

Detections are matched to open tracks by box overlap (Hungarian assignment on 1 − IoU). A track
survives up to ``max_gap`` frames without a match (occlusion, a missed detection); the missing
frames are filled by linear interpolation afterwards. Tracks never cross a shot boundary because
the caller links each shot separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class Track:
    serial: int  # creation order within its linker (one shot, or one segment of it)
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # 4 (x0, y0, x1, y1)
    landmarks: list[np.ndarray] = field(default_factory=list)  # 478×3
    best_score: float = 0.0  # the face detector's highest score on it (0: only ever followed)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def dense(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Every frame from first to last: (frame idx T, boxes T×4, landmarks T×478×3, frames filled)."""
        frames = np.arange(self.frames[0], self.frames[-1] + 1)
        known = np.asarray(self.frames)
        boxes = _interpolate(frames, known, np.stack(self.boxes))
        landmarks = _interpolate(frames, known, np.stack(self.landmarks))
        return frames, boxes, landmarks, len(frames) - len(known)


def _interpolate(frames: np.ndarray, known: np.ndarray, values: np.ndarray) -> np.ndarray:
    flat = values.reshape(len(values), -1)
    out = np.empty((len(frames), flat.shape[1]))
    for column in range(flat.shape[1]):
        out[:, column] = np.interp(frames, known, flat[:, column])
    return out.reshape((len(frames), *values.shape[1:]))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a N×4 and b M×4 -> N×M."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def distinct(boxes: np.ndarray, max_iou: float = 0.3) -> list[int]:
    """Greedy non-maximum suppression that prefers earlier boxes: indices of the boxes kept."""
    kept: list[int] = []
    for i in range(len(boxes)):
        if not kept or iou(boxes[i : i + 1, :4], boxes[kept, :4]).max() <= max_iou:
            kept.append(i)
    return kept


class TrackLinker:
    """Online linking of one shot's (or shot segment's) detections, frame by frame."""

    def __init__(self, max_gap: int = 5, min_iou: float = 0.3):
        self.max_gap = max_gap
        self.min_iou = min_iou
        self.tracks: list[Track] = []
        self._created = 0

    def pop_finished(self, frame: int) -> list[Track]:
        """Remove and return the tracks that frames after ``frame`` can no longer extend."""
        done = [t for t in self.tracks if frame + 1 - t.last_frame > self.max_gap + 1]
        self.tracks = [t for t in self.tracks if all(t is not d for d in done)]
        return done

    def expected_boxes(self, frame: int) -> np.ndarray:
        """Boxes of the tracks seen in the previous frame: where to look for them again."""
        return np.array([t.boxes[-1] for t in self.tracks if t.last_frame == frame - 1]).reshape(-1, 4)

    def needs_detector(self, frame: int, min_score: float) -> bool:
        """Whether the face detector must look at ``frame`` (between discovery frames): nothing is
        followed into it, an open track missed the previous frame (it is searched for at once), or
        a track has not yet been scored ``min_score`` (its score decides whether it is a face)."""
        return not self.tracks or any(t.last_frame < frame - 1 or t.best_score < min_score for t in self.tracks)

    def add(self, frame: int, boxes: np.ndarray, landmarks: list[np.ndarray], scores: np.ndarray | None = None) -> None:
        """Faces of one frame: boxes N×4 with their 478×3 landmarks and detector scores N (0 where
        a face was only followed from the previous frame)."""
        scores = np.zeros(len(boxes)) if scores is None else np.asarray(scores, np.float64)
        open_tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_gap + 1]
        unmatched = set(range(len(boxes)))
        if open_tracks and len(boxes):
            overlap = iou(np.stack([t.boxes[-1] for t in open_tracks]), boxes)
            rows, cols = linear_sum_assignment(-overlap)
            for r, c in zip(rows, cols):
                if overlap[r, c] >= self.min_iou:
                    open_tracks[r].frames.append(frame)
                    open_tracks[r].boxes.append(boxes[c])
                    open_tracks[r].landmarks.append(landmarks[c].astype(np.float32))  # half the memory of long tracks
                    open_tracks[r].best_score = max(open_tracks[r].best_score, float(scores[c]))
                    unmatched.discard(c)
        for c in sorted(unmatched):
            self.tracks.append(Track(self._created, [frame], [boxes[c]], [landmarks[c].astype(np.float32)], float(scores[c])))
            self._created += 1
