"""MediaPipe 0.10.21 networks: full-range face detection and the 478-point face mesh.

The models ship inside the mediapipe wheel; nothing is downloaded. The mesh runs on each face's
own square crop, so any number of faces per frame works and small faces are upsampled.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

# MediaPipe's C++ side logs model-loading chatter at INFO/WARNING for every graph it builds.
os.environ.setdefault("GLOG_minloglevel", "2")

MESH_INPUT = 256  # side of the square crop the mesh network sees (px)
CROP_MARGIN = 1.8  # crop side / detected box side: the mesh's own detector needs context


class FaceDetector:
    """MediaPipe's full-range face detector. One per thread that uses it: a graph is not
    thread-safe."""

    def __init__(self, min_detection_confidence: float = 0.5):
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_detection_confidence  # 1 = full range
        )

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Faces in an RGB frame H×W×3 uint8 -> N×5 boxes (x0, y0, x1, y1 px; score)."""
        height, width = frame.shape[:2]
        result = self._detector.process(frame)
        boxes = []
        for detection in result.detections or []:
            box = detection.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            boxes.append([x0, y0, x0 + box.width * width, y0 + box.height * height, detection.score[0]])
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 5)

    def detect_tiled(self, frame: np.ndarray, grid: int = 2, overlap: float = 0.3) -> np.ndarray:
        """Faces found on a grid×grid of overlapping tiles -> N×5 boxes in frame px.

        The detector sees a whole frame at 192 px, so faces under ~60 px in a 640 px frame are
        lost; each tile is seen at the same 192 px, i.e. ``grid`` times larger.
        """
        height, width = frame.shape[:2]
        tile_h, tile_w = int(height / (grid - (grid - 1) * overlap)), int(width / (grid - (grid - 1) * overlap))
        found = []
        for row in range(grid):
            for col in range(grid):
                y0 = min(height - tile_h, round(row * tile_h * (1 - overlap)))
                x0 = min(width - tile_w, round(col * tile_w * (1 - overlap)))
                boxes = self.detect(np.ascontiguousarray(frame[y0 : y0 + tile_h, x0 : x0 + tile_w]))
                boxes[:, [0, 2]] += x0
                boxes[:, [1, 3]] += y0
                found.append(boxes)
        return np.concatenate(found) if found else np.zeros((0, 5), np.float32)

    def close(self) -> None:
        self._detector.close()


class FaceLandmarker(FaceDetector):
    """Detector + mesh, created once per worker (the graphs are not thread-safe)."""

    def __init__(self, min_detection_confidence: float = 0.5):
        import mediapipe as mp

        super().__init__(min_detection_confidence)
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )

    def mesh(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """478×3 landmarks (x, y, z in frame px) of the face in ``box``, or None if none is found."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = CROP_MARGIN * max(box[2] - box[0], box[3] - box[1])
        scale = MESH_INPUT / side
        # Similarity from frame to crop; BORDER_CONSTANT pads faces at the frame edge.
        to_crop = np.array([[scale, 0, MESH_INPUT / 2 - scale * cx], [0, scale, MESH_INPUT / 2 - scale * cy]])
        crop = cv2.warpAffine(frame, to_crop, (MESH_INPUT, MESH_INPUT), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        points = np.array([(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
        points *= MESH_INPUT  # normalised crop units -> crop px (z shares x's scale)
        points[:, 0] = (points[:, 0] - to_crop[0, 2]) / scale
        points[:, 1] = (points[:, 1] - to_crop[1, 2]) / scale
        points[:, 2] /= scale
        return points

    def close(self) -> None:
        super().close()
        self._mesh.close()
