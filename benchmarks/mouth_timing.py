"""MouthNet's own timing: does the mouth it predicts come early or late against the sound?

    python benchmarks/mouth_timing.py [--max-lag 4] [--per-voice 4]

Speech whose phoneme times are known exactly (espeak-ng, the model card's held-out voice of each
language, never trained on) is run through the model alone (no text), and its jaw_open on a
25 fps clock is compared with the jaw targets laid on those phoneme times. Prints per language
the lag (frames, > 0: the predicted mouth is late) at which they agree best, its r, and r at
lag 0. On real clips a lag also holds the footage's own audio/picture offset (see
``dubline bench lipsync``'s footage offset); here there is none.
"""

from __future__ import annotations

import argparse

import numpy as np

_FPS = 25.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-lag", type=int, default=4, help="frames searched either way")
    parser.add_argument("--per-voice", type=int, default=4, help="sentences per language")
    args = parser.parse_args()

    from dubline.stages.coeffs.model import WEIGHTS, SpeechToMouth
    from dubline.stages.coeffs.mouth import drive_mouth
    from dubline.stages.coeffs.training.corpus import HELD_OUT_VOICES, espeak_examples
    from dubline.stages.coeffs.training.encode import encode_all
    from dubline.stages.lipsync.mouth import best_lag
    from dubline.stages.speech.whisper_models import BASE_PACKAGED

    speech = SpeechToMouth(WEIGHTS, BASE_PACKAGED)
    encoder = speech.encoder
    gap = np.full(10, np.nan)  # sentences laid end to end never correlate across their seams
    predicted_all, target_all = [], []
    print("| language | voice | best lag (frames) | r at it | r at lag 0 |\n|---|---|---|---|---|")
    for language, voice in HELD_OUT_VOICES.items():
        examples = espeak_examples([language], {language: [voice]}, args.per_voice, seed=1, augment=False)
        predicted, target = [], []
        for example, states in zip(examples, encode_all(encoder, [e.audio for e in examples])):
            analysis = speech.analyse_states(states.astype(np.float32))
            mouth = drive_mouth(analysis, speech.log_priors, [], _FPS, example.steps(_FPS), min_score=1.0)
            predicted += [mouth.coefficients[:, 0], gap]
            target += [example.targets(_FPS)[:, 0], gap]
        predicted_all += predicted
        target_all += target
        r, lag = best_lag(np.concatenate(predicted), np.concatenate(target), args.max_lag)
        at_zero, _ = best_lag(np.concatenate(predicted), np.concatenate(target), 0)
        print(f"| {language} | {voice} | {lag:+d} | {r:.3f} | {at_zero:.3f} |", flush=True)
    r, lag = best_lag(np.concatenate(predicted_all), np.concatenate(target_all), args.max_lag)
    print(f"| **all** | | **{lag:+d}** | {r:.3f} | |")


if __name__ == "__main__":
    main()
