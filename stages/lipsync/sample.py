"""Which frames of a dub the lip-sync self-check measures, and the mouth curves it measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import MOUTH_MESHES
from dubline.stages.lipsync.mouth import MouthCurve, mouth_curve

#: The self-check measures every driven frame of a title and language (the dubbed tracks' frames
#: added up) below twice this many (40 s at 25 fps); beyond, one window of ``SELF_CHECK_WINDOW``
#: frames in every ``sampling_stride`` of each track, from its first frame: at least this many
#: frames and at least ``SELF_CHECK_SHARE`` of them (half of a one-minute title, a quarter of a long
#: one). The face mesh on the output is most of the self-check's cost (~9 ms a frame at 844², 2-core
#: VM): measuring all of a 2-hour film would cost about what the faces stage's mesh does.
SELF_CHECK_MIN_FRAMES = 500
SELF_CHECK_SHARE = 0.25
SELF_CHECK_WINDOW = 50  # 2 s at 25 fps: contiguous, so the curves and the correlation keep their timing


def sampling_stride(driven_frames: int) -> int:
    """One window measured in every this many, for a title with ``driven_frames`` in all (≥ 1)."""
    wanted = max(SELF_CHECK_MIN_FRAMES, SELF_CHECK_SHARE * driven_frames)
    return max(1, int(driven_frames // wanted))


def sampled_frames(frames: list[int], every: int) -> list[int]:
    """The frames of one track (its driven ``frames``, sorted) the self-check measures: the first
    window of ``SELF_CHECK_WINDOW`` frames, then one in every ``every``."""
    return [f for position, f in enumerate(frames) if (position // SELF_CHECK_WINDOW) % every == 0]


@dataclass(frozen=True)
class SelfCheckSample:
    """Where the self-check measures a dub: ``boxes`` per dubbed track (frame -> x0, y0, x1, y1
    px), the sampled ones of its ``driven`` frames in all, one window in every ``every``."""

    boxes: dict[int, dict[int, np.ndarray]]
    driven: int
    every: int

    @property
    def measured(self) -> int:
        return sum(len(b) for b in self.boxes.values())


def sampled_boxes(faces: dict[int, dict[str, Any]], coeffs: list[dict[str, Any]]) -> SelfCheckSample:
    """The sample of the frames a dub drives (``driven_weight`` > 0), track by track, from its
    ``coeffs`` rows on their face tracks (``faces``: track id -> face_tracks row, ``bbox`` and
    ``frame_index`` read); tracks the dub never drives are left out."""
    boxes = {
        d["track_id"]: {f: box for f, box, w in zip(faces[d["track_id"]]["frame_index"], faces[d["track_id"]]["bbox"],
                                                    d["driven_weight"]) if w > 0}
        for d in coeffs
    }
    boxes = {track: b for track, b in boxes.items() if b}
    driven_frames = sum(len(b) for b in boxes.values())
    every = sampling_stride(driven_frames) if driven_frames else 1
    return SelfCheckSample({track: {f: b[f] for f in sampled_frames(sorted(b), every)} for track, b in boxes.items()},
                           driven_frames, every)


def measured_curves(meshes_url: str) -> dict[int, MouthCurve]:
    """Track id -> mouth opening, from the ``mouth_meshes`` manifest at ``meshes_url``."""
    curves = {}
    for row in read_rows(meshes_url, MOUTH_MESHES):
        meshes = np.asarray(row["landmarks"], dtype=np.float32).reshape(len(row["frame_index"]), -1, 3)
        curves[row["track_id"]] = mouth_curve(list(zip(row["frame_index"], meshes)))
    return curves
