"""How sure Whisper is of real speech's words, and what leaving the unsure ones out of the
alignment does to the mouth: per clip, the share of words under each probability floor and the
driven jaw's r against the clip's own filmed mouth (best within ±2 frames, own audio).

    python benchmarks/word_probability.py ../shared/data/video/train --floors 0,0.2,0.35,0.5

Sets the coeffs stage's ``min_word_probability`` (on ``video/train`` only); run it on
``video/eval`` to measure. Needs ``.[train]`` (pocketsphinx, for the clips' loader).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", type=Path, help="folder of talking-head clips")
    parser.add_argument("--floors", default="0,0.3", help="comma-separated word probability floors")
    args = parser.parse_args()
    floors = [float(x) for x in args.floors.split(",")]

    from dubline.stages.coeffs.mouth import DubText, drive_mouth
    from dubline.stages.coeffs.model import SpeechToMouth
    from dubline.stages.coeffs.stage import speech_mask
    from dubline.stages.coeffs.timeline import spans_from_words
    from dubline.stages.coeffs.training.encode import encode_all
    from dubline.stages.coeffs.training.real_clips import load_clip
    from dubline.stages.coeffs.training.train import CLIP_LANGUAGES, MIN_ALIGNMENT_SCORE, best_lag_r
    from dubline.stages.speech.transcribe import Transcriber, speech_segments
    from dubline.stages.speech.whisper_models import BASE_PACKAGED

    transcriber = Transcriber(BASE_PACKAGED)
    speech = SpeechToMouth(device="cpu")
    encoder = speech.encoder
    print("clip | words | " + " | ".join(f"p < {f}" for f in floors if f > 0) + " | model only r | "
          + " | ".join(f"aligned r (floor {f})" for f in floors))
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(args.clips.glob("*.mp4")):
            language = CLIP_LANGUAGES.get(path.stem, "en")
            clip = load_clip(path, Path(tmp) / path.stem, language, transcriber)
            # The loader keeps no probabilities: the same (deterministic) transcript again, with them.
            words = [{"word": w.word, "start_s": w.start_s, "end_s": w.end_s, "probability": w.probability}
                     for w in transcriber.transcribe(clip.example.audio, language=language).words]
            probability = np.array([w["probability"] for w in words])
            (states,) = encode_all(encoder, [clip.example.audio])
            analysis = speech.analyse_states(states.astype(np.float32))
            frames, fps = len(clip.mouth), clip.fps
            mask = speech_mask([{"start_s": a, "end_s": b} for a, b in speech_segments(clip.example.audio)], frames, fps)

            def jaw_r(texts: list[DubText]) -> str:
                driven = drive_mouth(analysis, speech.log_priors, texts, fps, frames, MIN_ALIGNMENT_SCORE)
                r = best_lag_r(np.maximum(driven.coefficients[:, 0] * mask, 0.0), clip.mouth[:, 0])
                return f"{r:.3f}" + ("" if driven.path != "model-only" or not texts else " (model only ran)")

            aligned = [jaw_r([DubText("transcript-aligned", spans_from_words(words, f), language)]) for f in floors]
            shares = [f"{np.mean(probability < f):.0%}" for f in floors if f > 0]
            print(f"{path.stem} | {len(words)} | " + " | ".join(shares) + f" | {jaw_r([])} | " + " | ".join(aligned),
                  flush=True)


if __name__ == "__main__":
    main()
