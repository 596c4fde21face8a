"""Audio features on the video's frame clock: what the audio->expression model listens to."""

from __future__ import annotations

import librosa
import numpy as np

SAMPLE_RATE = 16_000
N_MELS = 80
_HOP = 160  # 10 ms
_WINDOW = 400  # 25 ms


def log_mel_frames(samples: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """Mono 16 kHz float samples -> T×80 log-mel (dB, 0 dB = full scale), one row per video frame.

    Each row averages the 10 ms mel frames that fall in that video frame's interval, so the
    feature rate follows any frame rate exactly; audio shorter than the picture reads as silence.
    """
    mel = librosa.feature.melspectrogram(
        y=samples.astype(np.float32), sr=SAMPLE_RATE, n_fft=512, hop_length=_HOP, win_length=_WINDOW,
        n_mels=N_MELS, fmin=55, fmax=7600, center=True,
    )
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T  # mel frames × 80
    floor = -100.0
    edges = np.round(np.arange(frames + 1) / fps * (SAMPLE_RATE / _HOP)).astype(int)
    out = np.full((frames, N_MELS), floor, dtype=np.float32)
    for t, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        chunk = log_mel[a : max(a + 1, b)]
        if len(chunk):
            out[t] = np.maximum(chunk.mean(axis=0), floor)
    return out
