"""Geometry-aware warping of aligned face crops on the face mesh's own triangulation.

A warp is a *backward map*: for every output pixel of a box of the crop, the (x, y) to sample in
a source image. Inside a triangle of the target mesh it is the barycentric image of the pixel in
the same triangle of the source mesh. The lower face's map ends inside a bounded band around the
face (the neck follows a raised or lowered chin there), so every pixel farther out is copied
exactly. Maps are applied with ``cv2.remap`` on boxes, not whole crops: only the lower face moves.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

#: Inner-lip contour of MediaPipe's mesh, in order around the mouth opening.
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
#: Outer-lip contour, in order around the mouth.
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in crop pixels


#: Inner-lip vertex pairs facing each other across the mouth opening (upper, lower), corner to corner.
INNER_PAIRS = ((191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324))
_MOUTH_CORNERS = (78, 308)


def opening_triangles() -> np.ndarray:
    """F×3 vertex indices of a strip over the mouth opening, which MediaPipe's mesh leaves open.

    Each triangle joins facing upper and lower inner-lip points, so the strip never leaves the
    opening however thin or curved it is (a fan from the centroid of a closed, curved mouth
    reaches over the lips).
    """
    (right, left), pairs = _MOUTH_CORNERS, INNER_PAIRS
    strip = [(right, pairs[0][0], pairs[0][1]), (left, pairs[-1][1], pairs[-1][0])]
    for (upper, lower), (next_upper, next_lower) in zip(pairs, pairs[1:]):
        strip += [(upper, next_upper, next_lower), (upper, next_lower, lower)]
    return np.array(strip, dtype=np.int64)


@functools.cache
def mesh_triangles() -> np.ndarray:
    """F×3 vertex indices of the face mesh's triangles (from MediaPipe's tessellation edges).

    The mouth opening's strip comes first: where a closed mouth flattens it to a line, the lips
    drawn after it own those pixels.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    neighbours: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in FACEMESH_TESSELATION for c in neighbours[a] & neighbours[b]}
    return np.vstack([opening_triangles(), np.array(sorted(triangles), dtype=np.int64)])


def bounding_box(points: np.ndarray, margin: float, size: int) -> Box:
    """Integer box around points N×2 (px) grown by ``margin`` px, clipped to a size×size crop."""
    x0, y0 = np.floor(points.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) + margin).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(max(x1, 1), size), min(max(y1, 1), size)


def box_grid(box: Box) -> np.ndarray:
    """h×w×2 float32 (x, y) crop coordinates of every pixel of ``box``."""
    x0, y0, x1, y1 = box
    return np.stack(np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)), axis=-1)


def triangle_map(source: np.ndarray, target: np.ndarray, box: Box, grid: np.ndarray) -> np.ndarray:
    """Write the barycentric map of triangles into ``grid`` (in place); returns the covered mask.

    source, target: F×3×2 triangle corners (crop px); grid: the box's h×w×2 backward map. Where
    target triangles overlap (a fold), the later one wins.
    """
    x0, y0, x1, y1 = box
    ids = np.zeros((y1 - y0, x1 - x0), np.int32)
    corners = np.round((target - [x0, y0]) * 16).astype(np.int32)
    for i, triangle in enumerate(corners):
        cv2.fillConvexPoly(ids, triangle, i + 1, lineType=cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(ids)
    index = ids[ys, xs] - 1
    # Per triangle, the barycentric weights (wb, wc) and the mapped point are affine in the pixel:
    # one F×4×3 table, then a single product per pixel instead of the weights' arithmetic.
    to_weights = _barycentric_affine(target)
    to_source = np.einsum("fkd,fkj->fdj", source[:, 1:] - source[:, :1], to_weights)
    to_source[:, :, 2] += source[:, 0]
    pixels = np.stack([xs + x0, ys + y0, np.ones_like(xs)], axis=1).astype(np.float64)
    mapped = np.einsum("pij,pj->pi", np.concatenate([to_weights, to_source], axis=1)[index], pixels)
    wb, wc, points = mapped[:, 0], mapped[:, 1], mapped[:, 2:]
    # Rasterised pixel centres on an edge may lie just outside their triangle, and a sliver's table
    # (entries ~1/area) loses precision: their weights are taken pixel by pixel and clamped, so a
    # sliver triangle (a shut mouth's opening) never maps them far away.
    sliver = np.abs(_doubled_area(target)) < SLIVER_AREA
    (exact,) = np.nonzero((wb < 0) | (wc < 0) | (wb + wc > 1) | sliver[index])
    if len(exact):
        points[exact] = _clamped_barycentric(pixels[exact, :2], target[index[exact]], source[index[exact]])
    grid[ys, xs] = points
    return ids > 0


#: Twice a triangle's area (px²) below which its pixels are mapped one by one (``triangle_map``).
SLIVER_AREA = 1e-3


def _doubled_area(triangles: np.ndarray) -> np.ndarray:
    """F signed doubled areas (px²) of F×3×2 ``triangles``."""
    v0, v1 = triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    return v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]


def _barycentric_affine(triangles: np.ndarray) -> np.ndarray:
    """F×2×3 affine maps from a point (x, y, 1) to its barycentric weights (wb, wc) in each of the
    F×3×2 ``triangles`` (wa = 1 − wb − wc); a degenerate triangle's area is taken as 1e-9."""
    a = triangles[:, 0]
    v0, v1 = triangles[:, 1] - a, triangles[:, 2] - a
    den = _doubled_area(triangles)
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    linear = np.stack([np.stack([v1[:, 1], -v1[:, 0]], axis=1), np.stack([-v0[:, 1], v0[:, 0]], axis=1)], axis=1)
    linear /= den[:, None, None]
    return np.concatenate([linear, -(linear @ a[:, :, None])], axis=2)


def _clamped_barycentric(points: np.ndarray, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """P×2 ``points`` (px) carried from their P×3×2 ``targets`` triangles into the ``sources``
    ones by barycentric weights clamped to [0, 1] and renormalised (a point outside its triangle
    goes to the nearest corner or edge; a degenerate triangle's area is taken as 1e-9)."""
    a = targets[:, 0]
    v0, v1, v2 = targets[:, 1] - a, targets[:, 2] - a, points - a
    den = _doubled_area(targets)
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    wb = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    wc = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    weights = np.clip(np.stack([1 - wb - wc, wb, wc], axis=1), 0.0, 1.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("pk,pkd->pd", weights, sources)


def lower_face_grid(source: np.ndarray, target: np.ndarray, moving: np.ndarray, band: float,
                    size: int) -> tuple[Box, np.ndarray]:
    """(box, backward map h×w×2 in crop px) that moves the face from ``source`` to ``target``.

    ``source``, ``target``: 478×2 crop-px landmarks; ``moving``: 478 bool, the points allowed to
    move (the lower face). Triangles with a moved corner are remapped. Outside the face the
    displacement continues and falls linearly to zero at ``band`` px beyond the hull of the
    moving points of both shapes, so the neck follows the chin (no fold at the filmed chin's edge)
    while nothing farther out changes. Where the target chin is higher than the filmed one the
    band starts at the filmed chin: the fall-off is never steeper than the chin's own move.
    The box holds every pixel that may change; ``size`` is the crop's side.
    """
    triangles = mesh_triangles()
    moved = np.linalg.norm(target - source, axis=1) > 0.05
    active = triangles[moved[triangles].any(axis=1)]
    corners = np.vstack([source[active].reshape(-1, 2), target[active].reshape(-1, 2)]) if len(active) else target
    box = bounding_box(corners, band + 2, size)
    grid = box_grid(box)
    if not len(active):
        return box, grid
    identity = grid.copy()
    covered = triangle_map(source[active], target[active], box, grid)
    x0, y0, x1, y1 = box
    offset = np.array([x0, y0])
    # The face: moved triangles and the still ones (not its convex hull, which reaches past the
    # chin's curve and would carry a zero displacement outwards from there).
    face = np.zeros(covered.shape, np.uint8)
    still = triangles[~moved[triangles].any(axis=1)]
    cv2.fillPoly(face, list(np.round(target[still] - offset).astype(np.int32)), 1)
    face[covered] = 1
    reach = np.zeros(covered.shape, np.uint8)
    cv2.fillConvexPoly(reach, cv2.convexHull(np.round(np.vstack([source[moving], target[moving]]) - offset).astype(np.int32)), 1)
    to_face = cv2.distanceTransform(1 - face, cv2.DIST_L2, 5)
    grown = (cv2.distanceTransform(1 - reach, cv2.DIST_L2, 5) < band).astype(np.uint8)
    to_edge = cv2.distanceTransform(grown, cv2.DIST_L2, 5)  # inside the grown reach: distance to its edge
    outside = (face == 0) & (to_edge > 0)
    if outside.any():
        grid[outside] = identity[outside] + _edge_shift(grid - identity, face, band)[outside] * (
            to_edge / np.maximum(to_edge + to_face, 1e-6))[outside, None]
    return box, grid


def _edge_shift(shift: np.ndarray, face: np.ndarray, band: float) -> np.ndarray:
    """The displacement of the nearest face pixel, for every pixel of the box (h×w×2).

    Nearest, not a blur of the face's displacement: a blur mixes in the face's smaller moves
    further in, lags behind the chin, and leaves the filmed chin's edge as a second contour.
    A light blur afterwards smooths the seams between nearest-pixel cells.
    """
    _, labels = cv2.distanceTransformWithLabels(1 - face, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(face)
    table = np.zeros((labels.max() + 1, 2), np.float32)
    table[labels[ys, xs]] = shift[ys, xs]
    nearest = table[labels]
    return cv2.GaussianBlur(nearest, (0, 0), max(band / 3, 0.5))


def remap(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear sampling of ``image`` (H×W×C) at ``grid`` (h×w×2 px) -> h×w×C, edges replicated."""
    return cv2.remap(image, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
