"""Audio-stage speed: seconds of processing per minute of dub audio, by step.

    python benchmarks/audio_throughput.py ../shared/data/audio/*.wav [--minutes 2] [--whisper-model tiny.en-packaged]

The clips, joined, are looped to ``--minutes`` of audio for decoding, log-mel features on a 25 fps
clock, VAD and the audio->mouth model. Whisper runs on the joined clips once, not looped: repeated
text trips its compression-ratio fallback and would time a case real dubs do not have. Prints
seconds per minute of audio for each step, measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import wave
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--whisper-model", default=None)
    args = parser.parse_args()

    from stages.audio.features import SAMPLE_RATE, log_mel_frames
    from stages.audio.transcribe import Transcriber, speech_segments
    from stages.coeffs.model import MouthPredictor
    from stages.media import read_audio

    clip = np.concatenate([read_audio(str(path.resolve()), SAMPLE_RATE) for path in args.audio])
    samples = np.tile(clip, int(np.ceil(args.minutes * 60 * SAMPLE_RATE / len(clip))))[: int(args.minutes * 60 * SAMPLE_RATE)]
    minutes = len(samples) / SAMPLE_RATE / 60
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.wav")
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        started = time.perf_counter()
        decoded = read_audio(path, SAMPLE_RATE)
        timings["decode (PyAV, resample to 16 kHz)"] = time.perf_counter() - started
    frames = int(len(decoded) / SAMPLE_RATE * 25)
    started = time.perf_counter()
    features = log_mel_frames(decoded, 25.0, frames)
    timings["log-mel features (25 fps)"] = time.perf_counter() - started
    started = time.perf_counter()
    speech_segments(decoded)
    timings["VAD (Silero)"] = time.perf_counter() - started
    predictor = MouthPredictor(device="cpu")
    started = time.perf_counter()
    predictor.predict(features)
    timings["audio->mouth model"] = time.perf_counter() - started
    if args.whisper_model:
        transcriber = Transcriber(args.whisper_model)
        started = time.perf_counter()
        transcriber.transcribe(clip)
        timings[f"Whisper ({args.whisper_model}, int8)"] = (time.perf_counter() - started) * minutes / (len(clip) / SAMPLE_RATE / 60)

    names = ", ".join(p.name for p in args.audio)
    print(f"{minutes:.1f} min of audio ({names}, looped; Whisper on {len(clip) / SAMPLE_RATE:.0f} s of them); "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(f"{'step':<40}{'s per min of audio':>20}")
    for step, seconds in timings.items():
        print(f"{step:<40}{seconds / minutes:>20.3f}")
    print(f"{'total':<40}{sum(timings.values()) / minutes:>20.3f}")


if __name__ == "__main__":
    main()
