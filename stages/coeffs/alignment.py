"""Forced alignment of a viseme sequence to speech: when each unit of the text is spoken.

The mouth model gives, for every 20 ms encoder state, a posterior over viseme classes. Knowing
the text, the aligner finds the monotonic path through the text's units (``phonetics``) that
best explains those posteriors (Viterbi): every unit lasts at least one state, optional units
(rests between words) may be skipped. Scores are log-posteriors divided by the class priors to
the power ``prior_weight`` (the usual hybrid-recogniser correction, so that frequent classes such
as rest do not swallow short ones).

The alignment's **score** is how much of the best unconstrained frame-by-frame explanation the
text's path keeps: exp(mean over states of (path log-posterior − best log-posterior)), in (0, 1].
Text that was really spoken scores high; text that does not match the audio cannot follow the
posteriors and scores low, which is how a wrong dub script is detected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dubline.stages.coeffs.phonetics import VisemeUnit
from dubline.stages.coeffs.visemes import VISEME_CLASSES
from dubline.stages.speech.features import STATE_RATE


@dataclass(frozen=True)
class AlignedUnit:
    viseme: str
    phonemes: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Alignment:
    units: tuple[AlignedUnit, ...]  # the spoken units (skipped rests left out), in time order
    score: float  # in (0, 1]; see the module docstring

    def segments(self) -> list[tuple[str, float, float]]:
        """(viseme, start_s, end_s) for ``visemes.target_curve``."""
        return [(u.viseme, u.start_s, u.end_s) for u in self.units]


def align(log_posteriors: np.ndarray, units: list[VisemeUnit], start_s: float = 0.0,
          log_priors: np.ndarray | None = None, prior_weight: float = 0.5) -> Alignment:
    """Viterbi alignment of ``units`` to N×C log-posteriors (``VISEME_CLASSES`` order, 50 per s).

    ``start_s`` is the time of the first state. Raises ValueError when the text has more
    non-optional units than there are states (it cannot have been said in that time).
    """
    states, classes = log_posteriors.shape
    if classes != len(VISEME_CLASSES):
        raise ValueError(f"expected {len(VISEME_CLASSES)} viseme classes, got {classes}")
    required = sum(not u.optional for u in units)
    if required > states:
        raise ValueError(f"{required} units to align but only {states} states ({states / STATE_RATE:.2f} s)")
    scores = log_posteriors - (prior_weight * log_priors if log_priors is not None else 0.0)
    column = np.array([VISEME_CLASSES.index(u.viseme) for u in units])
    optional = np.array([u.optional for u in units])
    count = len(units)
    # May the path jump from unit j-2 straight to j (skipping an optional j-1)?
    skip = np.zeros(count, dtype=bool)
    skip[2:] = optional[1:-1]
    best = np.full(count, -np.inf)
    best[0] = scores[0, column[0]]
    if count > 1 and optional[0]:
        best[1] = scores[0, column[1]]
    back = np.zeros((states, count), dtype=np.int8)  # 0 stay, 1 from j-1, 2 from j-2
    for t in range(1, states):
        stay, step, jump = best, np.full(count, -np.inf), np.full(count, -np.inf)
        step[1:] = best[:-1]
        jump[2:] = np.where(skip[2:], best[:-2], -np.inf)
        candidates = np.stack([stay, step, jump])
        back[t] = np.argmax(candidates, axis=0)
        best = candidates[back[t], np.arange(count)] + scores[t, column]
    end = count - 1 if not optional[-1] or best[-1] >= best[-2] else count - 2
    path = np.empty(states, dtype=np.int64)
    path[-1] = end
    for t in range(states - 1, 0, -1):
        path[t - 1] = path[t] - back[t, path[t]]
    taken = log_posteriors[np.arange(states), column[path]]
    score = float(np.exp(np.mean(taken - log_posteriors.max(axis=1))))
    aligned = []
    boundaries = np.flatnonzero(np.diff(path)) + 1
    for first, stop in zip(np.r_[0, boundaries], np.r_[boundaries, states]):
        unit = units[path[first]]
        aligned.append(AlignedUnit(unit.viseme, unit.phonemes, start_s + first / STATE_RATE, start_s + stop / STATE_RATE))
    return Alignment(tuple(aligned), score)
