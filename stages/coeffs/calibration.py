"""Per-speaker calibration (dub mode): adapt the audio->mouth model to one speaker.

On the source footage the model's prediction from the original audio is compared with the mouth the
faces stage measured on the speaker's track, and each mouth coefficient gets a gain that gives the
prediction the speaker's own root-mean-square size about zero (how wide this speaker opens, how far
the lips move from rest). The gain scales about zero, which is the closed mouth for jaw_open and
the resting mouth for the others, so a calibrated mouth still closes and rests where the model's
does: an additive offset would lift the mouth off closed in speech and open it with a step at every
speech onset (on the 30 cross-dubs of ``dubline bench lipsync`` over ``video/eval``, the driven
jaw's r against the new voice's filmed mouth was 0.456 with a fitted offset, 0.486 without). A
least-squares slope would shrink by r and flatten the mouth when the fit is loose; matching only
the spread (standard deviation) would keep small openings smaller than the renderer shows (on four
``video/train`` clips' 12 cross-dubs, r_B 0.42 and lowest self-check 0.52 against 0.45 and 0.75
with the root-mean-square gain). A weak relation (r below ``min_r``) is not trusted: that
coefficient stays uncorrected, and the report says so. The gain never changes r, so calibration
cannot make the timing worse than uncalibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dubline.schemas.manifests import EXPRESSION_NAMES
from dubline.stages.coeffs.visemes import MOUTH_COEFFS

MOUTH_COLUMNS = [EXPRESSION_NAMES.index(name) for name in MOUTH_COEFFS]


def measured_mouth(expression: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T×8 measured expression -> (T×4 mouth in the model's convention, 4 resting values).

    jaw_open stays absolute; the other coefficients become offsets from their track median.
    """
    mouth = expression[:, MOUTH_COLUMNS].astype(np.float64)
    rest = np.median(mouth, axis=0)
    rest[0] = 0.0
    return (mouth - rest).astype(np.float32), rest.astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    gain: np.ndarray  # 4
    r: np.ndarray  # 4, Pearson r of the fit on the source footage (0 when not fitted)
    trusted: np.ndarray  # 4 bool

    def apply(self, predicted: np.ndarray) -> np.ndarray:
        """T×4 predicted mouth -> T×4 in this speaker's size (zero stays zero)."""
        return predicted * self.gain

    @classmethod
    def identity(cls) -> Calibration:
        n = len(MOUTH_COEFFS)
        return cls(np.ones(n), np.zeros(n), np.zeros(n, dtype=bool))


def fit_calibration(predicted: np.ndarray, measured: np.ndarray, min_r: float = 0.3,
                    gain_range: tuple[float, float] = (0.25, 4.0)) -> Calibration:
    """Per-coefficient gain (clipped to ``gain_range``) that gives predicted (T×4) the root-mean-square
    of measured (T×4) about zero, both in the model's convention (``measured_mouth``)."""
    n = predicted.shape[1]
    gain, r = np.ones(n), np.zeros(n)
    trusted = np.zeros(n, dtype=bool)
    for k in range(n):
        p, m = predicted[:, k].astype(np.float64), measured[:, k].astype(np.float64)
        if len(p) < 10 or p.std() < 1e-6 or m.std() < 1e-6:
            continue
        r[k] = np.corrcoef(p, m)[0, 1]
        if r[k] >= min_r:
            gain[k] = np.clip(np.sqrt(np.mean(m * m) / np.mean(p * p)), *gain_range)
            trusted[k] = True
    return Calibration(gain, r, trusted)
