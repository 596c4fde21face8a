"""How dub audio is fitted to the picture: the length policy every stage applies the same way."""

from __future__ import annotations

import numpy as np


def fit_policy(audio_s: float, picture_s: float, fps: float, tolerance_s: float) -> str:
    """How dub audio of ``audio_s`` seconds is fitted to a picture of ``picture_s`` seconds.

    Within one frame: "exact". Shorter: "padded" with silence at the end. Longer: "trimmed" at the
    end. A difference above ``tolerance_s`` is refused: it means the wrong audio or a wrong cut.
    """
    difference = audio_s - picture_s
    if abs(difference) > tolerance_s:
        raise ValueError(
            f"dub audio is {audio_s:.2f} s but the picture is {picture_s:.2f} s: "
            f"{abs(difference):.2f} s {'shorter' if difference < 0 else 'longer'}, more than the tolerance of "
            f"{tolerance_s:.2f} s (catalogue option audio_tolerance_s, dubline dub --audio-tolerance)"
        )
    if abs(difference) < 1.0 / fps:
        return "exact"
    return "padded" if difference < 0 else "trimmed"


def fit_samples(samples: np.ndarray, frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """Pad with silence or cut ``samples`` to exactly the picture's duration."""
    length = round(frames / fps * sample_rate)
    if len(samples) >= length:
        return samples[:length]
    return np.concatenate([samples, np.zeros(length - len(samples), dtype=samples.dtype)])
