"""Audio on the video's frame clock: the sample rate every stage works at, and loudness per frame."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
_FLOOR_DB = -100.0


def loudness_db(samples: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """Mono 16 kHz float samples -> T float32 RMS level of each video frame's interval, in dB
    relative to full scale (floored at -100 dB; frames past the end of the audio read as silence)."""
    edges = np.round(np.arange(frames + 1) / fps * SAMPLE_RATE).astype(int)
    energy = np.concatenate([[0.0], np.cumsum(np.asarray(samples, dtype=np.float64) ** 2)])
    stops = np.clip(np.maximum(edges[1:], edges[:-1] + 1), 0, len(samples))
    starts = np.clip(edges[:-1], 0, len(samples))
    mean_square = (energy[stops] - energy[starts]) / np.maximum(stops - starts, 1)
    return np.maximum(10 * np.log10(np.maximum(mean_square, 1e-12)), _FLOOR_DB).astype(np.float32)
