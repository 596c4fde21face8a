"""The per-person mouth bank: which filmed frame lends its lips, teeth and mouth interior to
each output frame.

Candidates are a spread of the track's own frames in mouth-shape space (the track's measured
expression coefficients). Each output frame wants the candidate whose mouth shape is closest to
its *driven* coefficients, with the head turned alike; a Viterbi pass over the whole track adds a
cost to every change of donor, so donors hold for a while instead of flickering between near
ties, and each remaining change is cross-faded over a few frames, except into a shut target,
which takes its donor at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dubline.schemas.manifests import EXPRESSION_NAMES

#: Mouth-shape coefficients and the difference of each that counts as one unit of mismatch (IOD).
#: jaw_open matters most: the warp can widen or purse lips convincingly, but an opening it must
#: invent has no teeth. Upper/lower lip height are held at the speaker's median in a dub and only
#: refine the choice.
_SHAPE = {"jaw_open": 0.02, "lip_width": 0.05, "lip_pucker": 0.02, "lip_press": 0.03, "smile": 0.03,
          "upper_lip_raise": 0.08, "lower_lip_depress": 0.08}
_UNDER_OPEN = 3.0  # a donor less open than the target costs this many times more than one more open
#: A target this shut (jaw_open, IOD) wants shut lips: a more open donor costs ``_OVER_SHUT`` times
#: more there, since its teeth and dark mouth corners show through a closed warp, and the change to
#: it is not cross-faded (a closure lasts a frame or two in speech; a fade would miss it).
SHUT_JAW = 0.01
_OVER_SHUT = 3.0
_COLUMNS = [EXPRESSION_NAMES.index(name) for name in _SHAPE]
_SCALE = np.array(list(_SHAPE.values()))
_POSE_DEGREES = 8.0  # yaw/pitch difference that costs as much as one unit of shape mismatch
CANDIDATES = 32  # donor frames considered per track
SWITCH_COST = 3.0  # cost of changing donor, in squared units of mismatch (hysteresis)
CROSSFADE = 3  # frames over which a change of donor is blended


def shape_features(expression: np.ndarray) -> np.ndarray:
    """T×8 expression coefficients -> T×7 mouth-shape features in units of mismatch."""
    return np.asarray(expression, dtype=np.float64)[:, _COLUMNS] / _SCALE


def pick_candidates(expression: np.ndarray, count: int = CANDIDATES) -> np.ndarray:
    """Indices of up to ``count`` frames spread over the track's mouth shapes (farthest-point),
    steady frames first.

    Starts from the most closed of the steadier half of the frames, so closed lips are always on
    offer. Each farthest-point distance is weighted by the frame's steadiness,
    1 / (1 + (v / median v)²) with v its mouth-shape speed (units of mismatch per frame): a frame
    caught mid-movement is blurred and its landmarks, smoothed over time by the faces stage, trail
    its pixels, so its lips land beside the target's (on four ``video/train`` clips' 12
    cross-dubs, the driven jaw against the one measured on the rendered crops went from r 0.914
    to 0.943, lowest 0.822 to 0.898).
    """
    features = shape_features(expression)
    speed = np.abs(np.gradient(features, axis=0)).sum(axis=1) if len(features) > 2 else np.zeros(len(features))
    steadiness = 1.0 / (1.0 + (speed / max(float(np.median(speed)), 1e-9)) ** 2)
    chosen = [int(np.argmin(np.where(steadiness >= 0.5, features[:, 0], np.inf)))]
    distance = ((features - features[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < min(count, len(features)) and distance.max() > 0.25:
        chosen.append(int(np.argmax(distance * steadiness)))
        distance = np.minimum(distance, ((features - features[chosen[-1]]) ** 2).sum(axis=1))
    return np.array(sorted(chosen))


def shut_targets(expression: np.ndarray) -> np.ndarray:
    """T×8 expression coefficients -> T bool: the frames whose jaw_open is at most ``SHUT_JAW``."""
    return np.asarray(expression)[:, 0] <= SHUT_JAW


def choose_donors(target: np.ndarray, target_pose: np.ndarray, donors: np.ndarray, donor_pose: np.ndarray,
                  switch_cost: float = SWITCH_COST) -> np.ndarray:
    """Viterbi donor path: T indices into the D donors.

    target T×8 driven expression, target_pose T×6, donors D×8 measured expression of the donor
    frames, donor_pose D×6. Cost per frame: squared shape mismatch plus squared yaw/pitch
    difference; ``switch_cost`` per change of donor.
    """
    mismatch = shape_features(target)[:, None] - shape_features(donors)[None]  # T×D×7
    shut = shut_targets(target)[:, None]
    mismatch[..., 0] *= np.where(mismatch[..., 0] > 0, np.sqrt(_UNDER_OPEN), np.where(shut, np.sqrt(_OVER_SHUT), 1.0))
    unary = (mismatch**2).sum(axis=2)
    turn = (np.asarray(target_pose)[:, None, :2] - np.asarray(donor_pose)[None, :, :2]) / _POSE_DEGREES
    unary += (turn**2).sum(axis=2)
    frames, count = unary.shape
    total = unary[0].copy()
    back = np.zeros((frames, count), np.int64)
    for t in range(1, frames):
        best = int(np.argmin(total))
        stay = total
        move = total[best] + switch_cost
        back[t] = np.where(stay <= move, np.arange(count), best)
        total = np.minimum(stay, move) + unary[t]
    path = np.zeros(frames, np.int64)
    path[-1] = int(np.argmin(total))
    for t in range(frames - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


@dataclass(frozen=True)
class Blend:
    """The donors of one output frame: indices into the bank and their weights (sum 1)."""

    donors: tuple[int, ...]
    weights: tuple[float, ...]


def crossfades(path: np.ndarray, frames: int = CROSSFADE, crisp: np.ndarray | None = None) -> list[Blend]:
    """Per frame, the path's donor blended with the previous one for ``frames`` frames after a
    change; at ``crisp`` frames (T bool, e.g. shut targets) the path's donor alone."""
    blends, previous, since = [], int(path[0]), frames
    for t, donor in enumerate(path.tolist()):
        if t and donor != path[t - 1]:
            previous, since = int(path[t - 1]), 0
        since += 1
        fade = 1.0 if crisp is not None and crisp[t] else since / (frames + 1)
        blends.append(Blend((donor,), (1.0,)) if fade >= 1 else Blend((previous, donor), (1 - fade, fade)))
    return blends
