"""The face-crop template: where the eyes and the nose tip land in an aligned face crop, the
per-frame similarity transform that puts them there (smoothed over time so the crop does not
shake), and the crop itself."""

from __future__ import annotations

import cv2
import numpy as np

from dubline.stages.face_model.geometry import NOSE_TIP, eye_centres
from dubline.stages.face_model.similarity import similarity_2d
from dubline.stages.face_model.smoothing import one_euro_zero_phase

#: Where the right eye, left eye and nose tip land in a crop of side 1 (the mouth and chin fit).
TEMPLATE = np.array([[0.38, 0.33], [0.62, 0.33], [0.50, 0.46]])


def crop_transforms(landmarks: np.ndarray, fps: float, size: int) -> np.ndarray:
    """T×2×3 frame -> crop affines for a track's landmarks T×478×3, smoothed over time."""
    right, left = eye_centres(landmarks[..., :2])
    anchors = np.stack([right, left, landmarks[:, NOSE_TIP, :2]], axis=1)
    m = similarity_2d(anchors, TEMPLATE * size)
    params = np.stack([m[:, 0, 0], m[:, 1, 0], m[:, 0, 2], m[:, 1, 2]], axis=1)  # a, b, tx, ty
    # A stronger filter than for landmarks: the crop window should glide, not follow lip motion.
    a, b, tx, ty = one_euro_zero_phase(params, fps, min_cutoff=0.8, beta=0.001).T
    return np.stack([np.stack([a, -b, tx], 1), np.stack([b, a, ty], 1)], axis=1)


def crop_face(frame: np.ndarray, to_crop: np.ndarray, size: int) -> np.ndarray:
    """The aligned size×size crop of an RGB frame."""
    return cv2.warpAffine(frame, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
