"""3D face geometry on MediaPipe's 478-point mesh: head pose, named expression coefficients,
blink, the per-track linear blendshape map, and the box around a mesh.

Coordinates. Measured landmarks are in frame pixels: x right, y down, z depth in pixel units
(MediaPipe's z has the scale of x; smaller is closer to the camera). *Canonical* coordinates are
head-centred: origin between the eyes, x towards the subject's left, y up, z towards the camera,
unit = the subject's inter-ocular distance (IOD, between the eye centres). A frame's landmarks are
``L ≈ scale · C @ R.T + t`` with canonical shape ``C``, rotation ``R``, scale in px per IOD and
translation ``t`` in px.

Pose is fitted in two steps per track: a first rotation from anatomical axes (eye and cheek
pairs, forehead-to-nose line), then a weighted Procrustes fit of rigid points (nose, eye corners,
forehead, cheekbones; never lips, jaw, lids or brows) against the track's own mean shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from dubline.stages.face_model.similarity import similarity_3d

# Landmark indices of MediaPipe's face mesh ("right"/"left" are the subject's).
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (263, 362)
RIGHT_EYE_LIDS = (159, 145)  # upper, lower
LEFT_EYE_LIDS = (386, 374)
NOSE_TIP, NOSE_BASE, FOREHEAD, CHIN = 1, 2, 10, 152
UPPER_LIP_OUTER, UPPER_LIP_INNER, LOWER_LIP_INNER, LOWER_LIP_OUTER = 0, 13, 14, 17
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
RIGHT_BROW, LEFT_BROW = 105, 334
SYMMETRIC_PAIRS = ((33, 263), (133, 362), (234, 454))  # (right, left) for the head's x axis
RIGID_POINTS = np.array(
    [1, 2, 4, 5, 6, 168, 197, 195, 98, 327, 33, 133, 263, 362, 10, 109, 338, 67, 297, 234, 454, 93, 323, 116, 345]
)
#: Rotation from the canonical frame (y up, z to camera) to image axes (y down, z away).
_FLIP = np.diag([1.0, -1.0, -1.0])


@dataclass
class PoseFit:
    """Per-frame rigid fit of a track: ``L ≈ scale · C @ rotation.T + translation``."""

    rotation: np.ndarray  # T×3×3, canonical -> image axes
    scale: np.ndarray  # T, px per IOD
    translation: np.ndarray  # T×3, px
    canonical: np.ndarray  # T×478×3, landmarks in canonical coordinates

    def pose_rows(self) -> np.ndarray:
        """T×6: yaw, pitch, roll (degrees), tx, ty (px), scale (px per IOD).

        Angles are of the head relative to facing the camera upright: yaw > 0 turns the face
        towards image right, pitch > 0 tilts the chin up, roll > 0 turns the face counter-clockwise
        as seen in the image.
        """
        head = np.einsum("tij,jk->tik", self.rotation, _FLIP)  # identity for a frontal, upright face
        yaw, pitch, roll = Rotation.from_matrix(head).as_euler("YXZ", degrees=True).T
        return np.stack([-yaw, pitch, -roll, self.translation[:, 0], self.translation[:, 1], self.scale], axis=1)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) eye centres, ...×3, from the eye corners."""
    right = landmarks[..., RIGHT_EYE_CORNERS, :].mean(axis=-2)
    left = landmarks[..., LEFT_EYE_CORNERS, :].mean(axis=-2)
    return right, left


def mesh_box(landmarks: np.ndarray) -> np.ndarray:
    """Box (x0, y0, x1, y1) around a 478×3 mesh: the face oval's extent."""
    x0, y0 = landmarks[:, :2].min(axis=0)
    x1, y1 = landmarks[:, :2].max(axis=0)
    return np.array([x0, y0, x1, y1])


def _axis_rotation(landmarks: np.ndarray) -> np.ndarray:
    """T×3×3 first-guess rotation (canonical -> image) from anatomical axes."""
    x = sum(landmarks[:, left] - landmarks[:, right] for right, left in SYMMETRIC_PAIRS)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    up = landmarks[:, FOREHEAD] - landmarks[:, NOSE_BASE]  # image y is down: "up" is -y
    y = -(up - (up * x).sum(axis=1, keepdims=True) * x)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    z = np.cross(x, y)
    image_axes = np.stack([x, y, z], axis=2)  # columns: head x, y(down), z(away) in image coordinates
    return np.einsum("tij,jk->tik", image_axes, _FLIP)


def to_canonical(landmarks: np.ndarray, rotation: np.ndarray, scale: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Landmarks T×478×3 (px) -> canonical coordinates T×478×3 (IOD units)."""
    return np.einsum("tni,tij->tnj", landmarks - translation[:, None], rotation) / scale[:, None, None]


def to_image(canonical: np.ndarray, rotation: np.ndarray, scale: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Canonical T×478×3 -> image landmarks T×478×3 (px)."""
    return scale[:, None, None] * np.einsum("tnj,tij->tni", canonical, rotation) + translation[:, None]


def fit_pose(landmarks: np.ndarray) -> PoseFit:
    """Rigid fit of every frame of a track, T×478×3 px -> ``PoseFit``."""
    right, left = eye_centres(landmarks)
    rotation = _axis_rotation(landmarks)
    scale = np.linalg.norm(left - right, axis=1)
    translation = (left + right) / 2
    mean_shape = to_canonical(landmarks, rotation, scale, translation).mean(axis=0)
    rotation, scale, translation = similarity_3d(mean_shape[RIGID_POINTS], landmarks[:, RIGID_POINTS])
    return PoseFit(rotation, scale, translation, to_canonical(landmarks, rotation, scale, translation))


def _distance(canonical: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(canonical[:, a] - canonical[:, b], axis=1)


def expression_coefficients(canonical: np.ndarray) -> np.ndarray:
    """T×8 named expression coefficients (order of ``schemas.manifests.EXPRESSION_NAMES``).

    All in IOD units, measured on the canonical (pose-free) mesh; larger means more of it:
      jaw_open          gap between the inner lip midpoints (0 with closed lips)
      lip_width         distance between the mouth corners
      lip_pucker        forward protrusion of the lip midline over the mouth corners (z)
      upper_lip_raise   height of the upper lip relative to the nose base (less negative = raised)
      lower_lip_depress how far the lower lip sits below its resting line to the chin, as
                        minus the lower-lip-to-chin distance
      lip_press         minus the visible thickness of both lips (pressed lips get thinner)
      smile             height of the mouth corners above the mouth centre
      brow_raise        mean brow-to-upper-lid distance of both eyes
    """
    c = canonical
    midline_z = (c[:, UPPER_LIP_OUTER, 2] + c[:, LOWER_LIP_OUTER, 2]) / 2
    corners_z = (c[:, MOUTH_RIGHT, 2] + c[:, MOUTH_LEFT, 2]) / 2
    mouth_centre_y = (c[:, UPPER_LIP_INNER, 1] + c[:, LOWER_LIP_INNER, 1]) / 2
    corners_y = (c[:, MOUTH_RIGHT, 1] + c[:, MOUTH_LEFT, 1]) / 2
    return np.stack(
        [
            _distance(c, UPPER_LIP_INNER, LOWER_LIP_INNER),
            _distance(c, MOUTH_RIGHT, MOUTH_LEFT),
            midline_z - corners_z,
            c[:, UPPER_LIP_OUTER, 1] - c[:, NOSE_BASE, 1],
            -_distance(c, LOWER_LIP_OUTER, CHIN),
            -(_distance(c, UPPER_LIP_OUTER, UPPER_LIP_INNER) + _distance(c, LOWER_LIP_INNER, LOWER_LIP_OUTER)),
            corners_y - mouth_centre_y,
            (_distance(c, RIGHT_BROW, RIGHT_EYE_LIDS[0]) + _distance(c, LEFT_BROW, LEFT_EYE_LIDS[0])) / 2,
        ],
        axis=1,
    ).astype(np.float32)


def eye_openness(canonical: np.ndarray) -> np.ndarray:
    """T×2 eye aspect ratio (lid gap / eye width) of the right and left eye."""
    right = _distance(canonical, *RIGHT_EYE_LIDS) / _distance(canonical, *RIGHT_EYE_CORNERS)
    left = _distance(canonical, *LEFT_EYE_LIDS) / _distance(canonical, *LEFT_EYE_CORNERS)
    return np.stack([right, left], axis=1)


def blink(canonical: np.ndarray) -> np.ndarray:
    """T×2 blink of the (left, right) eye: 0 open as usual for this track, 1 closed.

    Openness is relative to the track's own open eye (90th percentile of its aspect ratio).
    """
    openness = eye_openness(canonical)[:, ::-1]  # schema order: blink_left, blink_right
    reference = np.percentile(openness, 90, axis=0)
    return np.clip(1.0 - openness / np.maximum(reference, 1e-6), 0.0, 1.0).astype(np.float32)


def generic_blendshapes(mean_shape: np.ndarray, count: int) -> np.ndarray:
    """An anatomical prior map (count × 478·3) from the first two coefficients to the mesh.

    jaw_open lowers everything below the mouth line (lower lip, chin, jaw; less towards the
    ears) by the opening; lip_width moves the mouth region sideways by half the change on each
    side. Other coefficients get no prior. ``mean_shape`` is 478×3 canonical.
    """
    x, y = mean_shape[:, 0], mean_shape[:, 1]
    mouth_y = (mean_shape[UPPER_LIP_INNER, 1] + mean_shape[LOWER_LIP_INNER, 1]) / 2
    below = np.clip((mouth_y - y) / 0.04 + 0.5, 0.0, 1.0) * np.exp(-np.maximum(np.abs(x) - 0.35, 0.0) ** 2 / 0.08)
    centre = mean_shape[[UPPER_LIP_INNER, LOWER_LIP_INNER]].mean(axis=0)
    near_mouth = np.exp(-(((x - centre[0]) / 0.45) ** 2 + ((y - centre[1]) / 0.25) ** 2))
    prior = np.zeros((count, len(mean_shape), 3))
    prior[0, :, 1] = -below
    prior[1, :, 0] = 0.5 * np.sign(x - centre[0]) * near_mouth * np.clip(np.abs(x - centre[0]) / 0.35, 0.0, 1.0)
    return prior.reshape(count, -1)


#: Typical per-frame variance of each coefficient (expression, then blink) on talking faces,
#: measured on real clips; it sets how much motion a track must show to outweigh the prior.
_TYPICAL_VARIANCE = np.array([5e-3, 1e-3, 5e-5, 1e-3, 5e-4, 1.5e-4, 2e-4, 5e-4, 5e-2, 5e-2])


def fit_blendshapes(canonical: np.ndarray, coefficients: np.ndarray, prior_frames: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares map from coefficients to the mesh, on one track's own frames.

    canonical T×478×3, coefficients T×K -> (identity 478·3, blendshapes K×478·3) such that
    ``canonical[t].ravel() ≈ identity + coefficients[t] @ blendshapes``. The ridge pulls the map
    towards ``generic_blendshapes``, so a still or short track (a portrait) still knows how its
    jaw opens, while a track that really moves learns its own: the prior weighs as much as
    ``prior_frames`` frames of typical speech motion.
    """
    targets = canonical.reshape(len(canonical), -1)
    centred = coefficients.astype(np.float64) - coefficients.mean(axis=0)
    mean_target = targets.mean(axis=0, dtype=np.float64)
    prior = generic_blendshapes(mean_target.reshape(-1, 3), coefficients.shape[1])
    penalty = np.diag(prior_frames * _TYPICAL_VARIANCE[: coefficients.shape[1]])
    # Solve for B on centred coefficients (shrunk towards the prior), then the intercept exactly.
    # Centring the coefficients alone suffices: centred.T @ targets equals centred.T @ (targets − mean).
    gram = centred.T @ centred + penalty
    blendshapes = np.linalg.solve(gram, centred.T @ targets + penalty @ prior)
    identity = mean_target - coefficients.mean(axis=0) @ blendshapes
    return identity.astype(np.float32), blendshapes.astype(np.float32)


def reconstruct(identity: np.ndarray, blendshapes: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Canonical mesh T×478×3 from the identity, the blendshape map and T×K coefficients."""
    return (identity[None] + coefficients @ blendshapes).reshape(len(coefficients), -1, 3)


def rotation_from_pose(pose: np.ndarray) -> np.ndarray:
    """T×3×3 canonical -> image rotation from pose rows T×6 (inverse of ``PoseFit.pose_rows``)."""
    head = Rotation.from_euler("YXZ", np.stack([-pose[:, 0], pose[:, 1], -pose[:, 2]], axis=1), degrees=True).as_matrix()
    return np.einsum("tij,jk->tik", head, _FLIP)


def project(identity: np.ndarray, blendshapes: np.ndarray, coefficients: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Image landmarks T×478×2 (px) of a track's face with new coefficients T×K and pose T×6."""
    canonical = reconstruct(identity, blendshapes.reshape(coefficients.shape[1], -1), coefficients)
    rotated = np.einsum("tnj,tij->tni", canonical, rotation_from_pose(pose))
    return pose[:, None, 5:6] * rotated[..., :2] + pose[:, None, 3:5]
