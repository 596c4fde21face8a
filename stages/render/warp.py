"""Geometry-aware warping of an aligned face crop, on the face mesh's own triangulation.

For every pixel of the output (target geometry) the backward map says where to sample the
source crop: inside a moved mesh triangle it is the barycentric image of the pixel in the same
triangle of the source mesh; everywhere else it is the pixel itself, so regions whose landmarks do
not move are copied exactly. The mouth opening is a hole in MediaPipe's mesh; it gets a fan of
triangles around the inner-lip polygon, mapped into a *bank* frame of the same track whose mouth
is open like the target's, so teeth and tongue are the person's own. Sampling is one batched
``torch.nn.functional.grid_sample`` call (CPU here, CUDA when available).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

#: Inner-lip contour of MediaPipe's mesh, in order around the mouth opening.
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)


@functools.cache
def mesh_triangles() -> np.ndarray:
    """F×3 vertex indices of the face mesh's triangles (from MediaPipe's tessellation edges)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    neighbours: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION for c in neighbours[a] & neighbours[b]}
    return np.array(sorted(triangles), dtype=np.int64)


@functools.cache
def pixel_grid(size: int) -> np.ndarray:
    """size×size×2 (x, y) of every pixel, float32; shared, read-only."""
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).astype(np.float32)
    grid.flags.writeable = False
    return grid


def _barycentric_map(target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise target triangles (F×3×2 px). Returns (pixel ys, xs, triangle index, weights P×3)."""
    ids = np.zeros((size, size), np.int32)
    for i, tri in enumerate(target):
        cv2.fillConvexPoly(ids, np.round(tri * 16).astype(np.int32), i + 1, lineType=cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(ids)
    index = ids[ys, xs] - 1
    a, b, c = target[index, 0], target[index, 1], target[index, 2]
    p = np.stack([xs, ys], axis=1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    wb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    wc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    return ys, xs, index, np.stack([1 - wb - wc, wb, wc], axis=1)


def backward_grid(source: np.ndarray, target: np.ndarray, size: int, moved: float = 0.05,
                  falloff: float = 0.08) -> np.ndarray:
    """size×size×2 source pixel (x, y) to sample for each target pixel.

    ``source`` and ``target`` are 478×2 crop-pixel landmarks. Only triangles with a vertex that
    moves more than ``moved`` px are remapped. Outside the face the displacement continues and
    fades over ``falloff`` × size px, so the neck follows a raised or lowered chin instead of
    leaving the filmed chin's edge behind as a fold.
    """
    identity = pixel_grid(size)
    grid = identity.copy()
    triangles = mesh_triangles()
    shift = np.linalg.norm(target - source, axis=1)
    active = triangles[(shift[triangles] > moved).any(axis=1)]
    if not len(active):
        return grid
    ys, xs, index, weights = _barycentric_map(target[active], size)
    grid[ys, xs] = np.einsum("pk,pkd->pd", weights, source[active[index]])
    face = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(face, cv2.convexHull(target.astype(np.int32)), 1.0)
    face[ys, xs] = 1.0
    outside = face == 0
    grid[outside] = identity[outside] + _spread_outwards(grid - identity, face, falloff * size)[outside]
    return grid


def _spread_outwards(displacement: np.ndarray, face: np.ndarray, sigma: float) -> np.ndarray:
    """The face's displacement continued outside it, fading with distance (size×size×2).

    Normalised convolution (zero where the face stays still), at a quarter of the resolution: the
    field is smooth out there, and a full-size blur this wide would cost more than the warp.
    """
    size, step = face.shape[0], 4
    small = (size // step, size // step)
    face_small = cv2.resize(face, small, interpolation=cv2.INTER_AREA)
    moved = cv2.resize(displacement * face[..., None], small, interpolation=cv2.INTER_AREA)
    spread = cv2.GaussianBlur(moved, (0, 0), sigma / step)
    weight = cv2.GaussianBlur(face_small, (0, 0), sigma / step)
    distance = cv2.distanceTransform((face_small < 0.5).astype(np.uint8), cv2.DIST_L2, 5) * step
    field = spread * (np.exp(-((distance / sigma) ** 2)) / np.maximum(weight, 1e-3))[..., None]
    return cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)


def mouth_fan(landmarks: np.ndarray) -> np.ndarray:
    """Triangles (K×3×2 px) filling the inner-lip polygon, fanned from its centroid."""
    ring = landmarks[list(INNER_LIPS)]
    centre = ring.mean(axis=0)
    return np.stack([np.stack([centre, ring[i], ring[(i + 1) % len(ring)]]) for i in range(len(ring))])


def mouth_grid(bank: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Backward map of the target's mouth opening into a bank frame's mouth opening.

    Returns (grid size×size×2, mask size×size float32 in [0, 1] covering the target opening).
    """
    grid = pixel_grid(size).copy()
    source_fan, target_fan = mouth_fan(bank), mouth_fan(target)
    ys, xs, index, weights = _barycentric_map(target_fan, size)
    grid[ys, xs] = np.einsum("pk,pkd->pd", weights, source_fan[index])
    mask = np.zeros((size, size), np.float32)
    mask[ys, xs] = 1.0
    return grid, mask


def sample(images: torch.Tensor, grids: np.ndarray) -> torch.Tensor:
    """Bilinear sampling: images B×3×S×S float, grids B×S×S×2 (source px) -> B×3×S×S."""
    size = images.shape[-1]
    normalised = torch.from_numpy(grids).to(images.device) * (2.0 / (size - 1)) - 1.0
    with torch.inference_mode():
        return torch.nn.functional.grid_sample(images, normalised, mode="bilinear", padding_mode="border", align_corners=True)
