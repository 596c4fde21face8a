"""Head motion and blinks of a reference video (SadTalker's --ref_pose / --ref_blink)."""

from __future__ import annotations

import numpy as np

from dubline.stages.face_model import geometry
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.face_model.smoothing import one_euro_zero_phase
from dubline.stages.media import describe, rgb_frames


def reference_motion(url: str, landmarker: FaceLandmarker, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Pose T×6 and blink T×2 of the largest face of ``url``, resampled to ``fps``.

    Frames where no face is found take the nearest measured frame's values.
    """
    source_fps = float(describe(url).clock.rate)  # the clock rgb_frames yields frames on
    found, meshes = [], []
    for index, rgb in rgb_frames(url):
        boxes = landmarker.detect(rgb)
        if len(boxes):
            largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
            mesh = landmarker.mesh(rgb, largest)
            if mesh is not None:
                found.append(index)
                meshes.append(mesh)
    if not meshes:
        raise ValueError(f"no face found in the reference video {url}")
    fit = geometry.fit_pose(one_euro_zero_phase(np.stack(meshes), source_fps))
    pose, blink = fit.pose_rows(), geometry.blink(fit.canonical)
    times = np.asarray(found) / source_fps
    wanted = np.arange(int((found[-1] + 1) / source_fps * fps)) / fps
    nearest = np.clip(np.searchsorted(times, wanted), 0, len(times) - 1)
    return pose[nearest].astype(np.float32), blink[nearest].astype(np.float32)
