"""The mouth layer: a donor frame's lips, teeth and interior warped onto the target lower face
and blended into the current frame with its skin and light.

All work is on a box of the crop around the target mouth. The donor is warped on the mesh
triangles of a region around the lips and a strip over the mouth opening (the mesh has a hole
there), so its inner-lip contour lands exactly on the target's: a closed target gets the donor's
lips pressed together along their own line, never the current frame's teeth in between. Its
colour is matched to the current frame on a ring of skin around the lips (a smooth, low-frequency
correction, so a slightly different light on the donor frame leaves no seam).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dubline.schemas.manifests import MESH_POINTS
from dubline.stages.face_model import geometry
from dubline.stages.render.warp import INNER_LIPS, OUTER_LIPS, Box, bounding_box, box_grid, mesh_triangles, remap, triangle_map

#: Half-axes (IOD) of the ellipse around the mouth centre whose mesh vertices carry the donor.
_REGION_AXES = (0.62, 0.34)
_LIP_GROWTH = 0.05  # IOD the opaque part of the mask extends beyond the outer lips
_FEATHER = 0.05  # IOD of soft edge around it
_LIGHT_SIGMA = 0.2  # IOD: scale of the colour correction (the light varies slowly over a face)


def mouth_region(mean_shape: np.ndarray) -> np.ndarray:
    """Vertex indices of the mouth region (lips, interior edge, the skin around) of a canonical
    mesh (``mean_shape`` 478·3, IOD units)."""
    mesh = mean_shape.reshape(-1, 3)
    centre = mesh[[geometry.UPPER_LIP_INNER, geometry.LOWER_LIP_INNER]].mean(axis=0)
    dx, dy = (mesh[:, :2] - centre[:2]).T / np.array(_REGION_AXES)[:, None]
    return np.flatnonzero(dx**2 + dy**2 <= 1.0)


def region_triangles(region: np.ndarray) -> np.ndarray:
    """Mesh triangles (F×3 vertex indices, the mouth opening's included) with all three corners in
    ``region``."""
    inside = np.zeros(MESH_POINTS, bool)
    inside[region] = True
    triangles = mesh_triangles()
    return triangles[inside[triangles].all(axis=1)]


@dataclass(frozen=True)
class Donor:
    """A filmed frame lending its mouth: its crop, landmarks in that crop (478×2 px) and opening."""

    image: np.ndarray  # S×S×3 uint8
    landmarks: np.ndarray
    gap: float  # inner-lip gap, IOD


def inner_gap(landmarks: np.ndarray) -> float:
    """Inner-lip gap (px) between the midpoints of the upper and lower inner lip."""
    return float(np.linalg.norm(landmarks[geometry.LOWER_LIP_INNER] - landmarks[geometry.UPPER_LIP_INNER]))


def iod(landmarks: np.ndarray) -> float:
    """Inter-ocular distance (px) of 478×2 landmarks."""
    right, left = geometry.eye_centres(landmarks[None])
    return float(np.linalg.norm(left - right))


def mouth_box(target: np.ndarray, region: np.ndarray, size: int) -> Box:
    return bounding_box(target[region], 2, size)


def warp_donor(donor: Donor, target: np.ndarray, triangles: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The donor's mouth on the target geometry: (image h×w×3 float32, covered mask h×w bool)."""
    grid = box_grid(box)
    covered = triangle_map(donor.landmarks[triangles], target[triangles], box, grid)
    return remap(donor.image, grid).astype(np.float32), covered


def lip_mask(target: np.ndarray, box: Box, scale: float, covered: np.ndarray) -> np.ndarray:
    """h×w float32 in [0, 1]: 1 over the lips grown by ``_LIP_GROWTH`` IOD, feathered outwards,
    and 0 wherever the donor does not reach (``covered``); ``scale`` is the IOD in px."""
    x0, y0, x1, y1 = box
    solid = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(solid, [np.round(target[list(OUTER_LIPS)] - [x0, y0]).astype(np.int32)], 1)
    grow = max(int(round(_LIP_GROWTH * scale)), 1)
    solid = cv2.dilate(solid, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    feather = max(_FEATHER * scale, 1.0)
    reach = cv2.erode(covered.astype(np.uint8), np.ones((3, 3), np.uint8))
    # Distance to the donor's edge bounds the mask, so it reaches 0 before the donor runs out.
    edge = np.clip(cv2.distanceTransform(reach, cv2.DIST_L2, 5) / feather, 0.0, 1.0)
    soft = np.clip(1.0 - cv2.distanceTransform(1 - solid, cv2.DIST_L2, 5) / feather, 0.0, 1.0)
    return (soft * soft * (3 - 2 * soft) * edge).astype(np.float32)  # smoothstep: no visible rim


def match_light(donor: np.ndarray, base: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Donor image shifted by the smooth colour difference to ``base`` on the mask's soft ring.

    A normalised Gaussian (σ ``_LIGHT_SIGMA`` IOD; ``scale`` = IOD px) of the difference
    measured where the mask is partial carries the correction inwards over the lips; with no ring
    (a tiny box) the donor is returned as it is.
    """
    ring = ((mask > 0.05) & (mask < 0.95)).astype(np.float32)
    if ring.sum() < 10:
        return donor
    difference = (base.astype(np.float32) - donor) * ring[..., None]
    mean = difference.sum(axis=(0, 1)) / ring.sum()
    sigma = max(_LIGHT_SIGMA * scale, 1.0)
    prior = 0.02  # weight of the ring-wide mean, so the correction is defined far from the ring
    field = (cv2.GaussianBlur(difference, (0, 0), sigma) + prior * mean) / (cv2.GaussianBlur(ring, (0, 0), sigma) + prior)[..., None]
    return donor + field


_SEAM = 0.08  # IOD each side of a closed mouth's lip line repainted when closing an open donor
#: Target openings (IOD) at or below which the seam is repainted fully, and from which not at all:
#: the band spans a mouth this open, so repainting a partly open target shut it (on four
#: ``video/train`` clips' 12 cross-dubs, driven jaw vs rendered r 0.900 -> 0.914 without that).
_SEAM_SHUT, _SEAM_OPEN = 0.01, 0.04


def close_seam(image: np.ndarray, target: np.ndarray, box: Box, scale: float, amount: float) -> np.ndarray:
    """Repaint the lip line of a mouth closed from an open donor (image h×w×3 float32).

    The face mesh puts the inner-lip contour of an open mouth on the edge of the teeth as often
    as on the lips, so a closed warp of it keeps a band of teeth and shadow along the line. Within
    ``_SEAM`` IOD of the target's inner contour the lips are filled in from the lips either side
    (a normalised blur) and a soft, darker seam is drawn; ``amount`` (0..1) is how much to.
    """
    x0, y0, x1, y1 = box
    shape = (y1 - y0, x1 - x0)
    ring = np.round((target[list(INNER_LIPS)] - [x0, y0]) * 16).astype(np.int32)
    half = max(_SEAM * scale, 1.5)
    band = np.zeros(shape, np.uint8)
    cv2.polylines(band, [ring], True, 1, thickness=max(int(round(2 * half)), 2), lineType=cv2.LINE_8, shift=4)
    lips = np.zeros(shape, np.uint8)
    cv2.fillPoly(lips, [np.round(target[list(OUTER_LIPS)] - [x0, y0]).astype(np.int32)], 1)
    valid = ((lips > 0) & (band == 0)).astype(np.float32)
    if valid.sum() < 10:
        return image
    fill = cv2.GaussianBlur(image * valid[..., None], (0, 0), half) / np.maximum(cv2.GaussianBlur(valid, (0, 0), half), 1e-3)[..., None]
    line = np.zeros(shape, np.float32)
    cv2.polylines(line, [ring], True, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=4)
    fill *= 1.0 - 0.4 * cv2.GaussianBlur(line, (0, 0), max(0.012 * scale, 0.7))[..., None] / max(line.max(), 1e-6)
    weight = amount * cv2.GaussianBlur(band.astype(np.float32), (0, 0), half / 3)[..., None]
    return image * (1 - weight) + fill * weight


def synthetic_interior(target: np.ndarray, box: Box, lips: np.ndarray, skin: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A mouth interior drawn for an opening no filmed frame shows: (image h×w×3, mask h×w).

    target: 478×2 crop px; lips, skin: mean RGB of the lips and of the skin around them; scale:
    IOD px. Dark cavity shaded towards the back, upper teeth under the upper lip following its
    curve (fading into shadow at the corners), lower teeth and a tongue as the jaw drops.
    """
    x0, y0, x1, y1 = box
    height, width = y1 - y0, x1 - x0
    mask = np.zeros((height, width), np.float32)
    ring = target[list(INNER_LIPS)] - [x0, y0]
    cv2.fillPoly(mask, [np.round(ring * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
    upper = ring[:11]  # INNER_LIPS runs along the upper lip from corner 78 to corner 308 first
    lower = np.vstack([ring[10:], ring[:1]])
    xs = np.arange(width, dtype=np.float32)
    order_u, order_l = np.argsort(upper[:, 0]), np.argsort(lower[:, 0])
    top = np.interp(xs, upper[order_u, 0], upper[order_u, 1])
    bottom = np.interp(xs, lower[order_l, 0], lower[order_l, 1])
    gap = np.maximum(bottom - top, 0.0)
    left, right = upper[:, 0].min(), upper[:, 0].max()
    across = np.clip((xs - left) / max(right - left, 1.0), 0.0, 1.0)
    middle = np.clip(1.0 - np.abs(2 * across - 1) ** 2.5, 0.0, 1.0)  # 1 in the middle, 0 at the corners
    ys = np.arange(height, dtype=np.float32)[:, None]
    depth = np.clip((ys - top) / np.maximum(gap, 1.0), 0.0, 1.0)  # 0 at the upper lip, 1 at the lower
    opening = float(gap.max()) / scale  # IOD
    bright = float(np.clip(skin.mean() / 160.0, 0.7, 1.25))
    # Dark red-brown, lit from the front: brightest just under the upper teeth, darkest at the back.
    cavity = np.array([72.0, 30.0, 28.0]) * bright * (0.45 + 0.55 * np.cos(np.pi * depth))[..., None]
    image = np.broadcast_to(cavity, (height, width, 3)).astype(np.float32).copy()
    teeth = np.array([226.0, 212.0, 190.0]) * bright  # ivory: pure grey reads as blue beside red lips
    upper_teeth = (ys - top < min(0.42 * gap.max(), 0.075 * scale) * middle) & (ys >= top - 1)
    shade = (0.45 + 0.55 * middle)[None, :, None] * (1.0 - 0.25 * depth[..., None])
    image = np.where(upper_teeth[..., None], teeth * shade, image)
    if opening > 0.1:
        lower_height = (0.35 * (opening - 0.1) / 0.1) * min(0.3 * gap.max(), 0.05 * scale) * middle
        lower_teeth = (bottom - ys < lower_height) & (ys <= bottom + 1)
        image = np.where(lower_teeth[..., None], teeth * 0.8 * shade, image)
        tongue = np.exp(-(((xs - (left + right) / 2) / (0.3 * (right - left) + 1)) ** 2))[None, :] * np.clip((depth - 0.55) / 0.45, 0, 1)
        image = image * (1 - 0.6 * tongue[..., None]) + 0.6 * tongue[..., None] * np.clip(lips * 0.55, 0, 255)
    softness = max(0.012 * scale, 0.6)
    return cv2.GaussianBlur(image, (0, 0), softness), cv2.GaussianBlur(mask, (0, 0), softness)


def lip_colours(image: np.ndarray, target: np.ndarray, box: Box, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of the lips (between outer and inner contour) and of a skin ring around them."""
    x0, y0, x1, y1 = box
    outer = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(outer, [np.round(target[list(OUTER_LIPS)] - [x0, y0]).astype(np.int32)], 1)
    inner = np.zeros_like(outer)
    cv2.fillPoly(inner, [np.round(target[list(INNER_LIPS)] - [x0, y0]).astype(np.int32)], 1)
    grow = max(int(0.08 * scale), 2)
    skin = cv2.dilate(outer, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > outer
    lips = (outer > inner)
    mean = lambda where: image[where].reshape(-1, 3).mean(axis=0) if where.any() else image.reshape(-1, 3).mean(axis=0)
    return mean(lips), mean(skin)


def mouth_layer(base: np.ndarray, donors: list[tuple[Donor, float]], target: np.ndarray, triangles: np.ndarray,
                box: Box, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The new mouth over ``base`` (the current frame warped to the target, box h×w×3 uint8).

    donors: (donor, weight) pairs, weights summing to 1 (a cross-fade); target: 478×2 crop px;
    scale: IOD px. Returns (mouth image h×w×3 float32, mask h×w in [0, 1]). Where the target
    opens wider than the donors do, the opening is drawn (``synthetic_interior``) instead.
    """
    wanted = inner_gap(target) / scale
    drawn = None
    image, reach = np.zeros((box[3] - box[1], box[2] - box[0], 3), np.float32), None
    for donor, weight in donors:
        warped, covered = warp_donor(donor, target, triangles, box)
        # A donor's own teeth and interior stretch well up to ~1.6× their height; a donor far
        # less open shows a stretched sliver of lip line: draw the opening instead, in proportion.
        stretch = wanted / max(donor.gap, 0.005)
        missing = float(np.clip(stretch - 1.6, 0.0, 1.0) * np.clip((wanted - 0.04) / 0.04, 0.0, 1.0))
        if missing > 0:
            if drawn is None:
                drawn = synthetic_interior(target, box, *lip_colours(warped, target, box, scale), scale)
            inside = drawn[1][..., None] * missing
            warped = warped * (1 - inside) + drawn[0] * inside
        closing = float(np.clip((donor.gap - wanted - 0.03) / 0.05, 0.0, 1.0)
                        * np.clip((_SEAM_OPEN - wanted) / (_SEAM_OPEN - _SEAM_SHUT), 0.0, 1.0))
        if closing > 0:
            warped = close_seam(warped, target, box, scale, closing)
        image += weight * warped
        reach = covered if reach is None else reach & covered
    mask = lip_mask(target, box, scale, reach)
    return match_light(image, base, mask, scale), mask
