"""Pictures of face analysis for people: mesh, head-pose axes and track ids on frames."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

_COLOURS = [(255, 80, 80), (80, 200, 255), (120, 255, 120), (255, 200, 60), (220, 120, 255)]


def draw_faces(frame: np.ndarray, faces: list[dict]) -> np.ndarray:
    """Draw on a copy of an RGB frame. Each face: track_id, landmarks 478×3, pose (6,), dubbable."""
    out = frame.copy()
    thickness = max(1, round(frame.shape[0] / 400))
    for face in faces:
        colour = _COLOURS[face["track_id"] % len(_COLOURS)] if face["dubbable"] else (160, 160, 160)
        points = np.asarray(face["landmarks"]).reshape(-1, 3)
        for x, y in points[:, :2].astype(int):
            cv2.circle(out, (int(x), int(y)), thickness, colour, -1, cv2.LINE_AA)
        yaw, pitch, roll, tx, ty, scale = face["pose"]
        # Head axes: x to the subject's left (red), y up (green), z towards the camera (blue).
        head = Rotation.from_euler("YXZ", [-yaw, pitch, -roll], degrees=True).as_matrix()
        axes = head @ np.diag([1.0, -1.0, -1.0]) * scale * 1.2
        origin = np.array([tx, ty])
        for column, axis_colour in zip(axes.T, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
            tip = origin + column[:2]
            cv2.arrowedLine(out, tuple(origin.astype(int)), tuple(tip.astype(int)), axis_colour, 2 * thickness, cv2.LINE_AA, tipLength=0.15)
        x0, y0 = points[:, :2].min(axis=0).astype(int)
        label = f"track {face['track_id']}" + ("" if face["dubbable"] else " (skipped)")
        cv2.putText(out, label, (x0, max(15, y0 - 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thickness, colour, thickness + 1, cv2.LINE_AA)
    return out
