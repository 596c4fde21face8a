"""Per-speaker calibration (dub mode): adapt the audio->mouth model to one speaker.

On the source footage the model's prediction from the original audio is compared with the mouth
the faces stage measured on the speaker's track, and each mouth coefficient gets an affine
correction ``gain · predicted + offset`` that gives the prediction the speaker's own mean and
spread. (A least-squares slope would shrink by r and flatten the mouth when the fit is loose.)
A weak relation (r below ``min_r``) is not trusted: that coefficient stays uncorrected, and the
report says so.
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
    offset: np.ndarray  # 4
    r: np.ndarray  # 4, Pearson r of the fit on the source footage (0 when not fitted)
    trusted: np.ndarray  # 4 bool

    def apply(self, predicted: np.ndarray) -> np.ndarray:
        return predicted * self.gain + self.offset

    @classmethod
    def identity(cls) -> Calibration:
        n = len(MOUTH_COEFFS)
        return cls(np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool))


def fit_calibration(predicted: np.ndarray, measured: np.ndarray, min_r: float = 0.3,
                    gain_range: tuple[float, float] = (0.25, 4.0)) -> Calibration:
    """Per-coefficient affine map of predicted (T×4) onto the measured (T×4) mean and spread."""
    n = predicted.shape[1]
    gain, offset, r = np.ones(n), np.zeros(n), np.zeros(n)
    trusted = np.zeros(n, dtype=bool)
    for k in range(n):
        p, m = predicted[:, k].astype(np.float64), measured[:, k].astype(np.float64)
        if len(p) < 10 or p.std() < 1e-6 or m.std() < 1e-6:
            continue
        r[k] = np.corrcoef(p, m)[0, 1]
        if r[k] >= min_r:
            slope = np.clip(m.std() / p.std(), *gain_range)
            gain[k], offset[k], trusted[k] = slope, m.mean() - slope * p.mean(), True
    return Calibration(gain, offset, r, trusted)
