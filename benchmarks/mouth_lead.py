"""How far a filmed mouth leads its own sound, per clip: the evidence for ``MOUTH_LEAD_S``.

    python benchmarks/mouth_lead.py ../shared/data/video/train [more clips or folders]

For each clip the largest face's mouth opening is measured on every frame (the face mesh, as the
report measures it), and MouthNet predicts the mouth from the clip's own audio, at rest outside
its voice activity, with no lead. Prints, per clip, the lag (frames and ms, within ±8 frames) at
which the prediction follows the filmed mouth best (> 0: the picture shows the mouth before the
sound), r there and at 0, then the median over the clips. Run it on the training clips only: the
evaluation clips are for measuring, not for choosing the lead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

_MAX_LAG = 8  # frames


def clip_lead(clip: Path) -> tuple[float, int, float, float]:
    """(fps, lead in frames, r at it, r at 0) of one clip."""
    from dubline.flows.bench import _dense, picture
    from dubline.stages.coeffs.model import WEIGHTS, SpeechToMouth
    from dubline.stages.coeffs.mouth import mouth_curve
    from dubline.stages.coeffs.speakers import frame_mask
    from dubline.stages.face_model.landmarks import FaceLandmarker
    from dubline.stages.media import read_audio
    from dubline.stages.lipsync.mouth import best_lag, measure_mouths
    from dubline.stages.speech.features import SAMPLE_RATE
    from dubline.stages.speech.fit import fit_samples
    from dubline.stages.speech.transcribe import speech_segments
    from dubline.stages.speech.whisper_models import BASE_PACKAGED

    clock = picture(str(clip))
    filmed = _dense(measure_mouths(FaceLandmarker(), str(clip))[0], clock.frames)
    samples = fit_samples(read_audio(str(clip), SAMPLE_RATE), clock.frames, clock.fps, SAMPLE_RATE)
    predicted = mouth_curve(SpeechToMouth(WEIGHTS, BASE_PACKAGED).analyse(samples), None, clock.fps, clock.frames)
    heard = frame_mask(speech_segments(samples), clock.frames, clock.fps)
    r, lead = best_lag(predicted[:, 0] * heard, filmed, _MAX_LAG)
    r_zero, _ = best_lag(predicted[:, 0] * heard, filmed, 0)
    return clock.fps, lead, r, r_zero


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="+", type=Path, help="video files or folders of .mp4 clips")
    args = parser.parse_args()
    clips = [c for path in args.clips for c in (sorted(path.glob("*.mp4")) if path.is_dir() else [path])]
    leads_ms = []
    for clip in clips:
        fps, lead, r, r_zero = clip_lead(clip)
        leads_ms.append(1000 * lead / fps)
        print(f"{clip.stem}: {fps:.2f} fps, filmed mouth leads its sound by {lead:+d} frames ({leads_ms[-1]:+.0f} ms), "
              f"r {r:.2f} there, {r_zero:.2f} at 0", flush=True)
    print(f"median over {len(clips)} clips: {np.median(leads_ms):+.0f} ms")


if __name__ == "__main__":
    main()
