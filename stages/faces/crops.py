"""Aligned face crops: a similarity transform fixed on the eyes and the nose tip, smoothed over
time so the crop does not shake, and the crops written as Parquet frame chunks."""

from __future__ import annotations

import cv2
import numpy as np

from schemas.manifest_io import write_manifest
from schemas.manifests import FRAME_CHUNK
from stages.faces.geometry import NOSE_TIP, eye_centres
from stages.faces.smoothing import one_euro

#: Where the right eye, left eye and nose tip land in a crop of side 1 (the mouth and chin fit).
TEMPLATE = np.array([[0.38, 0.33], [0.62, 0.33], [0.50, 0.46]])


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2×3 least-squares similarity mapping source N×2 onto target N×2 (Umeyama in 2D)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    a = (s * t).sum() / (s**2).sum()
    b = (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum() / (s**2).sum()
    rotation = np.array([[a, -b], [b, a]])
    return np.hstack([rotation, (mu_t - rotation @ mu_s)[:, None]])


def crop_transforms(landmarks: np.ndarray, fps: float, size: int) -> np.ndarray:
    """T×2×3 frame -> crop affines for a track's landmarks T×478×3, smoothed over time."""
    right, left = eye_centres(landmarks[..., :2])
    anchors = np.stack([right, left, landmarks[:, NOSE_TIP, :2]], axis=1)
    target = TEMPLATE * size
    params = []
    for points in anchors:
        m = _similarity(points, target)
        params.append([m[0, 0], m[1, 0], m[0, 2], m[1, 2]])  # a, b, tx, ty
    # A stronger filter than for landmarks: the crop window should glide, not follow lip motion.
    a, b, tx, ty = one_euro(np.asarray(params), fps, min_cutoff=0.8, beta=0.001).T
    return np.stack([np.stack([a, -b, tx], 1), np.stack([b, a, ty], 1)], axis=1)


def crop_face(frame: np.ndarray, to_crop: np.ndarray, size: int) -> np.ndarray:
    """The aligned size×size crop of an RGB frame."""
    return cv2.warpAffine(frame, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class ChunkWriter:
    """Collects one track's encoded crops and writes them as frame-chunk manifests of ``frames`` rows."""

    def __init__(self, url_prefix: str, title_id: str, shot: int, track: int, frames: int, quality: int):
        self._prefix, self._title, self._shot, self._track = url_prefix, title_id, shot, track
        self._frames, self._quality = frames, quality
        self._rows: list[dict] = []
        self.urls: list[str] = []

    def add(self, frame_index: int, crop: np.ndarray, to_crop: np.ndarray) -> None:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        assert ok, "JPEG encoding failed"
        to_frame = cv2.invertAffineTransform(to_crop)
        self._rows.append(
            {
                "title_id": self._title,
                "shot_index": self._shot,
                "track_id": self._track,
                "frame_index": frame_index,
                "image": jpeg.tobytes(),
                "image_format": "jpeg",
                "affine": to_frame.astype(np.float32).ravel().tolist(),
            }
        )
        if len(self._rows) >= self._frames:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            url = f"{self._prefix}/track{self._track:04d}_{len(self.urls):04d}.parquet"
            write_manifest(self._rows, FRAME_CHUNK, url)
            self.urls.append(url)
            self._rows = []
