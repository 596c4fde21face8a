"""The lower face's target shape in dub mode: from the driven coefficients alone.

Per frame, the lower face is the track's 3D face model (identity + blendshape map) with the
driven coefficients under the measured head pose, nudged by a 2D similarity so that its nose and
cheekbones sit where they were filmed; above the mouth it blends into the measured mesh (eyes,
brows, blinks and head pose stay exactly as filmed). Nothing of the filmed mouth's own motion is
kept: the measured lips never enter the target below the upper lip.

Where the track's own map explains the filmed lips poorly (held-out R²), the map leans towards an
anatomical prior that still opens the jaw and widens the lips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dubline.stages.face_model import geometry
from dubline.stages.face_model.similarity import similarity_2d
from dubline.stages.render.warp import INNER_PAIRS

#: MediaPipe mesh vertices of the upper and lower lip (outer contour, two middle rings, inner
#: contour; corners excluded), checked on the canonical mesh of real tracks.
UPPER_LIP = (185, 40, 39, 37, 0, 267, 269, 270, 409, 184, 74, 73, 72, 11, 302, 303, 304, 408,
             183, 42, 41, 38, 12, 268, 271, 272, 407, 191, 80, 81, 82, 13, 312, 311, 310, 415)
LOWER_LIP = (146, 91, 181, 84, 17, 314, 405, 321, 375, 77, 90, 180, 85, 16, 315, 404, 320, 307,
             96, 89, 179, 86, 15, 316, 403, 319, 325, 95, 88, 178, 87, 14, 317, 402, 318, 324)
#: Rigid points around the lower face (nose, cheekbones) that anchor the driven shape to the film.
ANCHORS = (1, 2, 4, 5, 195, 98, 327, 234, 454, 93, 323, 116, 345)

#: Held-out R² of the lips below which the track's own map is not trusted at all, and above
#: which it is trusted fully (linear in between). Below a third of the lip motion explained the
#: map mostly carries noise; above ~0.7 it is as good as the landmark noise on real clips allows.
_FIT_UNTRUSTED, _FIT_TRUSTED = 0.3, 0.7
_STILL_JAW = 0.03  # IOD: jaw_open spread of a short track below which its map is not its own
_CV_BLOCK = 25  # frames per block of the two-fold held-out fit (one second: speech is not i.i.d.)


def lower_face_weights(mean_shape: np.ndarray) -> np.ndarray:
    """478 weights: 0 at and above the nose tip, rising to 1 at the top of the upper lip.

    ``mean_shape``: the track's mean canonical mesh (478·3, IOD units); not the map's intercept,
    which is the face at all coefficients zero (lip width zero...) and puts the chin above the
    nose. The ramp is this face's own nose-to-lip distance: a fixed one left the lips of
    short-philtrum faces half-weighted.
    """
    y = mean_shape.reshape(-1, 3)[:, 1]
    ramp = max(float(y[geometry.NOSE_TIP] - y[geometry.UPPER_LIP_OUTER]), 0.05)
    return np.clip((y[geometry.NOSE_TIP] - y) / ramp, 0.0, 1.0)


def lip_prior(mean_shape: np.ndarray, count: int) -> np.ndarray:
    """``geometry.generic_blendshapes`` with the lips assigned by the mesh's topology (count × 478·3).

    The generic prior decides by height which points follow the jaw, so on a mean shape with
    closed lips both inner contours sit on the mouth line, move alike and the lips never part;
    here the upper lip stays and the lower lip follows the jaw, fully in the middle and half at
    the corners (the jaw hinges behind the mouth: a lower lip dropped evenly opens a box).
    """
    prior = geometry.generic_blendshapes(mean_shape, count).reshape(count, -1, 3)
    x = mean_shape[:, 0]
    centre = (x[geometry.MOUTH_RIGHT] + x[geometry.MOUTH_LEFT]) / 2
    half_width = max(abs(x[geometry.MOUTH_LEFT] - x[geometry.MOUTH_RIGHT]) / 2, 1e-3)
    lower = list(LOWER_LIP)
    prior[0, lower, 1] = -(1.0 - 0.5 * np.clip(np.abs(x[lower] - centre) / half_width, 0.0, 1.0) ** 2)
    prior[0, list(UPPER_LIP), 1] = 0.0
    return prior.reshape(count, -1)


@dataclass
class MouthModel:
    """A track's face model as used for the driven lower face."""

    identity: np.ndarray  # 478·3 canonical (IOD units), the intercept: the face at coefficients 0
    blendshapes: np.ndarray  # K × 478·3
    mean_shape: np.ndarray  # 478·3 canonical, the face at the track's mean coefficients
    lip_fit_r2: float  # held-out R² of the lip vertices from the coefficients (NaN: too short to tell)
    prior_weight: float  # 0: the track's own map; 1: the anatomical prior


def _lip_r2(canonical: np.ndarray, coefficients: np.ndarray) -> float:
    """Two-fold held-out R² of the lip vertices (blocks of ``_CV_BLOCK`` frames alternate folds)."""
    lips = list(UPPER_LIP + LOWER_LIP)
    fold = (np.arange(len(canonical)) // _CV_BLOCK) % 2
    if len(canonical) < 4 * _CV_BLOCK:
        return float("nan")
    error = total = 0.0
    for k in (0, 1):
        train, test = fold != k, fold == k
        identity, blendshapes = geometry.fit_blendshapes(canonical[train], coefficients[train])
        rebuilt = geometry.reconstruct(identity, blendshapes, coefficients[test])[:, lips]
        observed = canonical[test][:, lips]
        error += float(((observed - rebuilt) ** 2).sum())
        total += float(((observed - observed.mean(axis=0)) ** 2).sum())
    return 1.0 - error / max(total, 1e-12)


def mouth_model(track: dict[str, Any]) -> MouthModel:
    """The track's map, leaning towards ``lip_prior`` by how poorly it predicts held-out lips.

    A track too short to hold frames out leans on the prior by how little its jaw moves (its
    map has seen no opening to learn from; below ``_STILL_JAW`` IOD of spread it is the prior).
    """
    coefficients = np.hstack([np.asarray(track["expression"]), np.asarray(track["blink"])]).astype(np.float64)
    count = coefficients.shape[1]
    identity = np.asarray(track["identity"], dtype=np.float64)
    blendshapes = np.asarray(track["blendshapes"], dtype=np.float64).reshape(count, -1)
    frames = len(coefficients)
    landmarks = np.asarray(track["landmarks"], dtype=np.float64).reshape(frames, -1, 3)
    r2 = _lip_r2(geometry.fit_pose(landmarks).canonical, coefficients) if frames >= 4 * _CV_BLOCK else float("nan")
    if np.isfinite(r2):
        prior_weight = float(np.clip((_FIT_TRUSTED - r2) / (_FIT_TRUSTED - _FIT_UNTRUSTED), 0.0, 1.0))
    else:
        prior_weight = float(np.clip(1.0 - coefficients[:, 0].std() / _STILL_JAW, 0.0, 1.0))
    mean_shape = identity + coefficients.mean(axis=0) @ blendshapes
    mixed = (1 - prior_weight) * blendshapes + prior_weight * lip_prior(mean_shape.reshape(-1, 3), count)
    # The intercept follows the map so that the track's mean coefficients still give its mean shape.
    return MouthModel(mean_shape - coefficients.mean(axis=0) @ mixed, mixed, mean_shape, r2, prior_weight)


def uncross_lips(landmarks: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Landmarks ...×478×2 with no lower inner-lip point above its upper partner along ``down``.

    ``down`` (...×2, unit) is the face's downward axis in the same pixels. A driven shape at or
    beyond closed (coefficient noise, the map's extrapolation) would otherwise cross the inner
    contours and fold the lips over each other; crossing pairs meet at their midpoint instead.
    """
    out = landmarks.copy()
    upper, lower = (list(p) for p in zip(*INNER_PAIRS))
    gap = np.einsum("...nd,...d->...n", out[..., lower, :] - out[..., upper, :], down)
    overlap = np.minimum(gap, 0.0)[..., None] * down[..., None, :] / 2
    out[..., upper, :] += overlap
    out[..., lower, :] -= overlap
    return out


def driven_landmarks(model: MouthModel, measured: np.ndarray, pose: np.ndarray, coefficients: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
    """Target image landmarks T×478×2 (px): measured where ``weights`` is 0, driven where it is 1.

    measured T×478×2 px, pose T×6 (measured), coefficients T×K (driven expression and blink),
    weights 478 (``lower_face_weights``). The driven shape is the model under the measured pose,
    moved by a per-frame similarity that puts its anchors (nose, cheekbones) on the measured ones,
    so pose-fit jitter does not slide the lower face against the upper one.
    """
    pose = np.asarray(pose, dtype=np.float64)
    driven = geometry.project(model.identity, model.blendshapes, coefficients, pose)
    anchors = list(ANCHORS)
    snap = similarity_2d(driven[:, anchors], measured[:, anchors])
    driven = np.einsum("tij,tnj->tni", snap[..., :2], driven) + snap[:, None, :, 2]
    down = geometry.rotation_from_pose(pose)[:, :2, 1]  # the canonical y axis (up) in the image
    down = -down / np.maximum(np.linalg.norm(down, axis=1, keepdims=True), 1e-9)
    driven = uncross_lips(driven, down)
    return measured + weights[None, :, None] * (driven - measured)
