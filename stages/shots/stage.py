"""shots: shot boundaries with PySceneDetect, as frame ranges that cover the whole title.

Frames are read as every other stage reads them (``stages.media``: shown upright, on the title's
frame clock, in the SDR view), so a cut's frame number is the same frame the faces, render and
composite stages see, whatever the source's rotation, frame-rate changes or start time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
from scenedetect import ContentDetector
from scenedetect.scene_manager import compute_downscale_factor

from dubline.schemas.manifests import SHOTS, TITLES
from dubline.stages.base import Resources, Stage, TitleError
from dubline.stages.media import ShownVideo, rgb_frames
from dubline.stages.threads import prefetched


class ShotsStage(Stage):
    """``titles`` rows -> ``shots`` rows (one per shot; ``end_frame`` exclusive).

    Shots shorter than ``min_shot_frames`` are merged into their neighbour by PySceneDetect, so
    a flash frame does not split a face track.
    """

    name = "shots"
    version = "3"  # 3: frames compared at ~256 px (PySceneDetect's default downscale)
    resources = Resources(cpus=1.0, memory_gb=1.0)
    input_schema = TITLES
    output_schema = SHOTS
    defaults = {"threshold": 27.0, "min_shot_frames": 8}

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [shot for row in rows for shot in self._shots(row)]

    def _shots(self, title: dict[str, Any]) -> list[dict[str, Any]]:
        title_id, frame_count, fps = title["title_id"], title["frame_count"], title["fps"]
        try:
            cut_frames = self._detect_cuts(ShownVideo.from_title(title))
        except Exception as exc:  # noqa: BLE001 - decoder errors surface as the title's problem
            raise TitleError(title_id, f"shot detection failed while decoding ({exc})") from exc
        bounds = [0, *[c for c in cut_frames if 0 < c < frame_count], frame_count]
        self.count_work(frames=frame_count)  # every frame is decoded and compared with the last
        return [
            {
                "title_id": title_id,
                "shot_index": i,
                "start_frame": start,
                "end_frame": end,
                "start_s": start / fps,
                "end_s": end / fps,
            }
            for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))
        ]

    def _detect_cuts(self, video: ShownVideo) -> list[int]:
        """Clock frame numbers where a new shot starts."""
        detector = ContentDetector(threshold=self.params["threshold"], min_scene_len=self.params["min_shot_frames"])
        # Frames are compared at about 256 px, as PySceneDetect's own SceneManager does by default
        # (its threshold is tuned there): ~5x less work per frame at 844 px than full resolution.
        factor = compute_downscale_factor(max(video.width, video.height))

        def compared() -> Iterator[tuple[int, np.ndarray]]:
            """(clock frame, BGR at the compared size: PySceneDetect wants BGR), decoded and
            scaled in a thread ahead of the detector."""
            for index, rgb in rgb_frames(video):
                if factor > 1.0:
                    size = (max(1, round(rgb.shape[1] / factor)), max(1, round(rgb.shape[0] / factor)))
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
                yield index, np.ascontiguousarray(rgb[..., ::-1])

        cuts: list[int] = []
        for index, bgr in prefetched(compared()):
            cuts += detector.process_frame(index, bgr)
        return sorted(set(cuts))
