"""render: re-drive each dubbed face's lower face in its aligned crops (SadTalker's renderer role).

Per frame, the target landmarks are the measured ones plus the change the track's blendshape map
predicts between the measured and the driven coefficients, applied below the nose only. The
source crop is warped onto them on the mesh triangulation; where the new mouth opens wider than
the source's, the opening is filled from the track's own frame with the most similar open mouth.
Output crops carry an alpha mask (feathered) saying where composite pastes them back.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from schemas.manifest_io import read_rows, write_manifest
from schemas.manifests import DRIVEN_COEFFS, FACE_TRACKS, FRAME_CHUNK, RENDERED_TRACKS
from stages.base import Resources, Stage
from stages.chunk_images import decode_rgb, encode_rgba
from stages.faces.geometry import NOSE_TIP, UPPER_LIP_OUTER, project
from stages.render.warp import INNER_LIPS, backward_grid, mouth_grid, pixel_grid, sample

_BANK_SIZE = 12  # open-mouth frames of the track kept in memory as mouth-interior donors
_FEATHER = 9  # px of soft edge around the pasted region (crop pixels)
_AVATAR_CHUNK = 48  # frames per rendered chunk of an avatar


def lower_face_weights(identity: np.ndarray) -> np.ndarray:
    """478 weights: 0 at and above the nose tip, rising to 1 at the top of the upper lip.

    The ramp is this face's own nose-to-lip distance: a fixed one left the lips of short-philtrum
    faces half-weighted, which kept a third of the filmed mouth motion in the output.
    """
    y = identity.reshape(-1, 3)[:, 1]
    ramp = max(float(y[NOSE_TIP] - y[UPPER_LIP_OUTER]), 0.05)
    return np.clip((y[NOSE_TIP] - y) / ramp, 0.0, 1.0)


def opening_area(landmarks: np.ndarray) -> float:
    ring = landmarks[list(INNER_LIPS)]
    return float(cv2.contourArea(ring.astype(np.float32)))


def _to_crop(affine: list[float]) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64).reshape(2, 3))


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


class RenderStage(Stage):
    """One row per (title, language) -> ``rendered_tracks`` rows + RGBA frame chunks.

    Input row keys: title_id, language, faces_url, coeffs_url, chunks_url.
    """

    name = "render"
    version = "5"
    resources = Resources(cpus=1.0, gpus=0.5, memory_gb=2.0)
    output_schema = RENDERED_TRACKS
    defaults = {"webp_quality": 92}

    def setup(self) -> None:
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._render_title(row)]

    def _render_title(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        tracks = {t["track_id"]: t for t in read_rows(row["faces_url"], FACE_TRACKS)}
        outputs, flicker_in, flicker_out = [], [], []
        for driven in read_rows(row["coeffs_url"], DRIVEN_COEFFS):
            track = tracks[driven["track_id"]]
            urls, figures = self._render_track(track, driven, f"{row['chunks_url']}/track{track['track_id']:04d}")
            flicker_in.append(figures[0])
            flicker_out.append(figures[1])
            outputs.append({k: driven[k] for k in ("title_id", "language", "shot_index", "track_id", "frame_index")}
                           | {"chunk_urls": urls})
        if outputs:
            self.report(tracks_rendered=len(outputs), flicker_source=float(np.mean(flicker_in)),
                        flicker_output=float(np.mean(flicker_out)))
        return outputs

    def _render_track(self, track: dict[str, Any], driven: dict[str, Any], prefix: str) -> tuple[list[str], tuple[float, float]]:
        """Render one track's crops for the driven coefficients; returns chunk URLs and flicker figures.

        Dub: output frame i warps source frame i, below the nose only. Avatar (one source frame,
        a portrait): every output frame warps that frame, the whole face following the driven pose.
        """
        identity = np.asarray(track["identity"])
        blendshapes = np.asarray(track["blendshapes"])
        avatar = len(track["frame_index"]) == 1 and len(driven["frame_index"]) > 1
        frames = len(driven["frame_index"])
        source_at = (lambda i: 0) if avatar else (lambda i: i)
        source_coeffs = np.hstack([np.asarray(track["expression"]), np.asarray(track["blink"])])
        source_pose = np.asarray(track["pose"], dtype=np.float64)
        target_coeffs = np.hstack([np.asarray(driven["expression"]), np.asarray(driven["blink"])])
        target_pose = np.asarray(driven["pose"], dtype=np.float64)
        sources = [source_at(i) for i in range(frames)]
        # The map's own error cancels in the difference: only the change of expression (and, for
        # an avatar, of pose) moves points.
        delta = project(identity, blendshapes, target_coeffs, target_pose) - project(
            identity, blendshapes, source_coeffs[sources], source_pose[sources])
        if not avatar:
            delta *= lower_face_weights(identity)[None, :, None]
        measured = np.asarray(track["landmarks"]).reshape(len(track["frame_index"]), -1, 3)[..., :2]
        source_rows = [r for url in track["chunk_urls"] for r in read_rows(url, FRAME_CHUNK)] if avatar else None
        bank = self._mouth_bank(track, measured)

        urls, flicker_in, flicker_out = [], FlickerMeter(), FlickerMeter()
        chunks = (
            [source_rows[:1] * min(_AVATAR_CHUNK, frames - start) for start in range(0, frames, _AVATAR_CHUNK)]
            if avatar else (read_rows(url, FRAME_CHUNK) for url in track["chunk_urls"])
        )
        position = 0
        for chunk in chunks:
            crops, grids, interiors, alphas, indices = [], [], [], [], []
            for row in chunk:
                i = position
                position += 1
                to_crop = _to_crop(row["affine"])
                source = _apply(to_crop, measured[source_at(i)])
                target = source + delta[i] @ to_crop[:, :2].T
                crop = decode_rgb(row["image"])
                crops.append(crop)
                grids.append(backward_grid(source, target, crop.shape[0]))
                interiors.append(self._interior(bank, source, target, target_coeffs[i, 0], crop))
                alphas.append(self._alpha(source, target, grids[-1]))
                indices.append(driven["frame_index"][i] if avatar else row["frame_index"])
            rendered = self._warp_batch(crops, grids)
            for k, interior in enumerate(interiors):
                if interior is not None:
                    image, mask = interior
                    rendered[k] = (rendered[k] * (1 - mask[..., None]) + image * mask[..., None]).astype(np.uint8)
            out_rows = []
            for row, image, alpha, crop, index in zip(chunk, rendered, alphas, crops, indices):
                # Only the changed region is stored: its box, with the affine moved to match.
                ys, xs = np.nonzero(alpha > 0)
                y0, y1, x0, x1 = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) if len(ys) else (0, 1, 0, 1)
                rgba = np.dstack([image, (alpha * 255).astype(np.uint8)])[y0:y1, x0:x1]
                webp = encode_rgba(rgba, self.params["webp_quality"])
                to_frame = np.asarray(row["affine"], dtype=np.float64).reshape(2, 3)
                to_frame[:, 2] += to_frame[:, :2] @ [x0, y0]
                out_rows.append({**row, "frame_index": index, "image": webp, "image_format": "webp",
                                 "affine": to_frame.astype(np.float32).ravel().tolist()})
                flicker_in.add(_lower_face(crop, alpha))
                flicker_out.add(_lower_face(image, alpha))
            url = f"{prefix}_{len(urls):04d}.parquet"
            write_manifest(out_rows, FRAME_CHUNK, url)
            urls.append(url)
        return urls, (flicker_in.value, flicker_out.value)

    def _interior(self, bank, source: np.ndarray, target: np.ndarray, target_jaw: float,
                  crop: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Fill for a mouth that opens wider than in the source frame: (image, soft mask) or None.

        From the bank frame whose mouth is open most like the target's; without a bank (a
        portrait with closed lips) a synthetic interior: a dark cavity with a hint of upper teeth.
        """
        if opening_area(target) <= 1.15 * opening_area(source) + 4.0:
            return None
        size = crop.shape[0]
        if bank:
            jaw, donor, donor_landmarks = min(bank, key=lambda b: abs(b[0] - target_jaw))
            grid, mask = mouth_grid(donor_landmarks, target, size)
            image = self._warp_batch([donor], [grid])[0].astype(np.float32)
        else:
            mask = np.zeros((size, size), np.float32)
            ring = target[list(INNER_LIPS)]
            cv2.fillPoly(mask, [np.round(ring).astype(np.int32)], 1.0)
            top, bottom = ring[:, 1].min(), ring[:, 1].max()
            lips = crop[cv2.dilate(mask, np.ones((9, 9), np.uint8)) > mask].reshape(-1, 3).mean(axis=0)
            rows = np.clip((np.arange(size) - top) / max(bottom - top, 1.0), 0.0, 1.0)[:, None, None]
            teeth = np.array([205.0, 198.0, 188.0]) * (rows < 0.25)
            image = np.broadcast_to(np.where(rows < 0.25, teeth, lips * 0.28 * (1.2 - rows)), (size, size, 3))
        return image, cv2.GaussianBlur(mask, (0, 0), 1.5)

    def _mouth_bank(self, track: dict[str, Any], measured: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Up to _BANK_SIZE frames spread over the track's open-mouth range: (jaw_open, crop, crop landmarks)."""
        jaw = np.asarray(track["expression"])[:, 0]
        if len(jaw) == 0 or jaw.max() < 0.05:
            return []  # this person never opens the mouth on screen: nothing real to borrow
        wanted = sorted({int(i) for i in np.argsort(jaw)[-max(1, len(jaw) // 2):][:: max(1, len(jaw) // (2 * _BANK_SIZE))]})
        bank, position = [], 0
        for chunk_url in track["chunk_urls"]:
            chunk = read_rows(chunk_url, FRAME_CHUNK)
            for row in chunk:
                if position in wanted:
                    to_crop = _to_crop(row["affine"])
                    bank.append((float(jaw[position]), decode_rgb(row["image"]), _apply(to_crop, measured[position])))
                position += 1
        return bank

    def _warp_batch(self, crops: list[np.ndarray], grids: list[np.ndarray]) -> np.ndarray:
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().to(self._device)
        warped = sample(images, np.stack(grids))
        return warped.permute(0, 2, 3, 1).round().clamp(0, 255).byte().cpu().numpy()

    @staticmethod
    def _alpha(source: np.ndarray, target: np.ndarray, grid: np.ndarray) -> np.ndarray:
        """Where the crop changed: the hull of moved landmarks (both shapes) and wherever the warp
        moves pixels by more than half a pixel (the fading displacement around the face), feathered."""
        size = grid.shape[0]
        moved = np.linalg.norm(target - source, axis=1) > 0.05
        mask = np.zeros((size, size), np.float32)
        if moved.any():
            points = np.vstack([source[moved], target[moved]]).astype(np.int32)
            cv2.fillConvexPoly(mask, cv2.convexHull(points), 1.0)
            shift = grid - pixel_grid(size)
            mask[(shift * shift).sum(axis=-1) > 0.25] = 1.0  # moved by more than half a pixel
            mask = cv2.GaussianBlur(cv2.erode(mask, np.ones((3, 3), np.uint8)), (0, 0), _FEATHER / 2)
        return mask


def _lower_face(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The pasted region of a crop, every 4th pixel (enough for a flicker figure)."""
    return image[::4, ::4].astype(np.float32) * (alpha[::4, ::4, None] > 0.5)


class FlickerMeter:
    """Running mean of |I_t − (I_t−1 + I_t+1)/2| over the pasted region, in grey levels.

    Keeps two frames, so its memory does not grow with the track.
    """

    def __init__(self) -> None:
        self._previous: list[np.ndarray] = []
        self._total = 0.0
        self._count = 0

    def add(self, frame: np.ndarray) -> None:
        if len(self._previous) == 2:
            before, middle = self._previous
            support = (middle > 0).any(axis=-1)
            if support.any():
                second = np.abs(middle - (before + frame) / 2).mean(axis=-1)
                self._total += float(second[support].sum())
                self._count += int(support.sum())
        self._previous = [*self._previous[-1:], frame]

    @property
    def value(self) -> float:
        return self._total / self._count if self._count else 0.0
