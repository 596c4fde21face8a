"""Audio on the video's frame clock: the sample rate every stage works at, loudness per frame, and
per-frame means of speech-encoder states."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
STATE_RATE = 50  # speech-encoder states per second (one per 20 ms; ``speech_encoder``)
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


def on_frame_clock(states: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """Encoder states (N×D at 50 per s) -> frames×D, each video frame the mean of its 20 ms states.

    Frames past the end of the states repeat the last state (the audio was padded with silence).
    """
    edges = np.round(np.arange(frames + 1) / fps * STATE_RATE).astype(int)
    edges = np.clip(edges, 0, len(states) - 1)
    cumulative = np.vstack([np.zeros((1, states.shape[1])), np.cumsum(states, axis=0, dtype=np.float64)])
    stops = np.maximum(edges[1:], edges[:-1] + 1)
    return ((cumulative[stops] - cumulative[edges[:-1]]) / (stops - edges[:-1])[:, None]).astype(np.float32)
