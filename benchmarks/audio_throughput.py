"""Speed of the audio -> mouth path: seconds of processing per minute of dub audio, by step.

    python benchmarks/audio_throughput.py ../shared/data/audio/*.wav [--minutes 2] [--whisper-model base-packaged]

The clips, joined, are looped to ``--minutes`` of audio for decoding, loudness on a 25 fps
clock, VAD, the Whisper encoder and MouthNet (the coeffs stage runs them twice per dub: on the dub
and on the source, for calibration) and the forced alignment of the transcript. Whisper's
transcription runs on the joined clips once, not looped: repeated text trips its
compression-ratio fallback and would time a case real dubs do not have. Prints seconds per minute
of audio for each step, measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--whisper-model", default="base-packaged")
    parser.add_argument("--language", default="en", help="language of the clips, for transcription and alignment")
    args = parser.parse_args()

    from dubline.stages.coeffs.model import SpeechToMouth
    from dubline.stages.coeffs.mouth import DubText, drive_mouth
    from dubline.stages.coeffs.timeline import spans_from_words
    from dubline.stages.media import read_audio
    from dubline.stages.speech.features import SAMPLE_RATE, loudness_db
    from dubline.stages.speech.transcribe import Transcriber, speech_segments

    started = time.perf_counter()
    clip = np.concatenate([read_audio(str(path.resolve()), SAMPLE_RATE) for path in args.audio])
    decode_s = time.perf_counter() - started
    samples = np.tile(clip, int(np.ceil(args.minutes * 60 * SAMPLE_RATE / len(clip))))[: int(args.minutes * 60 * SAMPLE_RATE)]
    minutes, clip_minutes = len(samples) / SAMPLE_RATE / 60, len(clip) / SAMPLE_RATE / 60
    timings: dict[str, float] = {"decode (PyAV, resample to 16 kHz)": decode_s * minutes / clip_minutes}
    frames = int(len(samples) / SAMPLE_RATE * 25)

    def timed(step: str, work, scale: float = 1.0):
        began = time.perf_counter()
        result = work()
        timings[step] = (time.perf_counter() - began) * scale
        return result

    timed("loudness (25 fps)", lambda: loudness_db(samples, 25.0, frames))
    timed("VAD (Silero)", lambda: speech_segments(samples))
    speech = SpeechToMouth(device="cpu")
    states = timed("Whisper encoder (base, int8)", lambda: speech.encoder.encode(samples))
    analysis = timed("MouthNet", lambda: speech.analyse_states(states))
    transcriber = Transcriber(args.whisper_model)
    transcript = timed(f"Whisper transcription ({args.whisper_model}, int8)",
                       lambda: transcriber.transcribe(clip, language=args.language), minutes / clip_minutes)
    # The transcript of the joined clips, repeated over the looped audio at its own times.
    words = [{"word": w.word, "start_s": w.start_s + k * len(clip) / SAMPLE_RATE, "end_s": w.end_s + k * len(clip) / SAMPLE_RATE}
             for k in range(int(np.ceil(minutes / clip_minutes))) for w in transcript.words]
    words = [w for w in words if w["end_s"] <= len(samples) / SAMPLE_RATE]
    driven = timed("forced alignment + mouth curve", lambda: drive_mouth(
        analysis, speech.log_priors, [DubText("transcript-aligned", spans_from_words(words), args.language)], 25.0, frames, 0.5))

    names = ", ".join(p.name for p in args.audio)
    print(f"{minutes:.1f} min of audio ({names}, looped; transcription on {len(clip) / SAMPLE_RATE:.0f} s of them); "
          f"{platform.machine()}, {os.cpu_count()} cores; mouth path: {driven.path}")
    print(f"{'step':<48}{'s per min of audio':>20}")
    for step, seconds in timings.items():
        print(f"{step:<48}{seconds / minutes:>20.3f}")
    print(f"{'total':<48}{sum(timings.values()) / minutes:>20.3f}")


if __name__ == "__main__":
    main()
