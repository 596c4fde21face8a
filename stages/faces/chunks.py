"""The faces stage's frame chunks: one track's aligned crops, JPEG-encoded, with the affine
back into the frame, written as Parquet manifests of a fixed number of frames."""

from __future__ import annotations

import cv2
import numpy as np

from dubline.schemas.manifest_io import write_manifest
from dubline.schemas.manifests import FRAME_CHUNK


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

