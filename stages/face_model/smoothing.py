"""One-Euro filtering of landmark tracks: removes jitter at rest, follows fast motion.

Casiez et al., "1€ Filter" (CHI 2012): a low-pass whose cutoff rises with the signal's speed, so
still faces are smoothed hard and moving mouths are barely delayed. Tracks are filtered offline,
so ``one_euro_zero_phase`` runs it both ways: the causal filter trails a fast head move by a
frame or more, and a mouth pasted at the trailing landmarks leaves the filmed lip beside it.
"""

from __future__ import annotations

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(signal: np.ndarray, fps: float, min_cutoff: float = 3.0, beta: float = 0.02, d_cutoff: float = 1.0) -> np.ndarray:
    """Filter T×... along time. Units: cutoffs in Hz; ``beta`` per (signal unit / s)."""
    dt = 1.0 / fps
    out = np.empty_like(signal, dtype=np.float64)
    out[0] = signal[0]
    speed = np.zeros_like(signal[0], dtype=np.float64)
    for t in range(1, len(signal)):
        raw_speed = (signal[t] - out[t - 1]) / dt
        speed += _alpha(d_cutoff, dt) * (raw_speed - speed)
        alpha = _alpha(min_cutoff + beta * np.abs(speed), dt)
        out[t] = out[t - 1] + alpha * (signal[t] - out[t - 1])
    return out


def one_euro_zero_phase(signal: np.ndarray, fps: float, min_cutoff: float = 3.0, beta: float = 0.02,
                        d_cutoff: float = 1.0) -> np.ndarray:
    """``one_euro`` run forwards and backwards in time and averaged: the two passes' delays
    cancel, so a fast move is followed without lag (T×..., same units as ``one_euro``).

    On the six ``video/train`` clips (``benchmarks/smoothing_lag.py``) the lips' distance to the
    raw mesh went from 0.046–0.069 to 0.024–0.036 IOD at the 95th percentile and from
    0.062–0.187 to 0.038–0.071 on the worst frame, with 2–10 % less jitter than one pass.
    """
    forward = one_euro(signal, fps, min_cutoff, beta, d_cutoff)
    backward = one_euro(signal[::-1], fps, min_cutoff, beta, d_cutoff)[::-1]
    return (forward + backward) / 2


def jitter(track: np.ndarray) -> float:
    """Jitter of a T×N×D landmark track: RMS second difference (px per frame²)."""
    if len(track) < 3:
        return 0.0
    return float(np.sqrt((np.diff(track, n=2, axis=0) ** 2).sum(axis=-1).mean()))


def lag_frames(raw: np.ndarray, smoothed: np.ndarray, max_lag: int = 3) -> int:
    """Delay (frames) of ``smoothed`` behind ``raw`` for 1-D signals: the lag of peak correlation."""
    raw, smoothed = raw - raw.mean(), smoothed - smoothed.mean()
    if len(raw) <= 2 * max_lag or not raw.any():
        return 0
    scores = [np.dot(raw[: len(raw) - lag], smoothed[lag:]) for lag in range(max_lag + 1)]
    return int(np.argmax(scores))
