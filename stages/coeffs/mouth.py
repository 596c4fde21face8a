"""The mouth a dub drives, on the video's frame clock: the network's prediction, with the aligned
text's bilabials shut.

The network's mouth coefficients (``model.SpeechToMouth``) carry the shape of the speech; where
the dub's text aligns to its audio (``timeline``), every p/b/m closes the lips on the video frame
nearest its centre (a closure shorter than a frame would never be seen) and the lips ease back
around it. Measured on real clips of ``video/train``, the network alone follows a filmed mouth
better than viseme targets laid on aligned phones, and the closures add to it (model card).

Texts are tried in the order given (the studio's script, then Whisper's transcript); the first
whose alignment scores at least ``min_score`` is used, else the model runs alone, and
``DrivenMouth.note`` says why each text was passed over.

A mouth shows before its sound: the coeffs stage hears the dub ``MOUTH_LEAD_S`` early
(``heard_early``, ``timed_early``), so every frame shows the mouth of the sound that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from dubline.stages.coeffs.alignment import Alignment
from dubline.stages.coeffs.phonetics import espeak_voice
from dubline.stages.coeffs.timeline import TextSpan, align_spans
from dubline.stages.coeffs.visemes import MOUTH_COEFFS, VISEMES
from dubline.stages.speech.features import STATE_RATE, on_frame_clock

if TYPE_CHECKING:  # the model module imports PyTorch, which the flow's driver does not need
    from dubline.stages.coeffs.model import SpeechAnalysis

#: Temporal smoothing of the network's mouth (s): real mouths are smoother than 20 ms steps.
_SMOOTH_S = 0.04
_JAW, _PRESS = MOUTH_COEFFS.index("jaw_open"), MOUTH_COEFFS.index("lip_press")

#: How long before its sound a mouth shape shows (s). Lips and jaw move before the sound they
#: shape (a mouth opens before phonation starts), and filmed footage shows it: on the six
#: ``video/train`` clips the filmed mouth leads the mouth MouthNet predicts from the clip's own
#: sound by -40, +40, +40, +120, +200 and +280 ms (median 80 ms; ``benchmarks/mouth_lead.py``).
#: MouthNet itself has no lead (trained on acoustic phone times and lag-corrected footage).
#: Picture before sound is also the side viewers tolerate: ITU-R BT.1359 puts the detection
#: threshold at 125 ms of sound lag against 45 ms of sound lead.
MOUTH_LEAD_S = 0.08

#: Names of the ways a dub's mouth was made, for manifests and reports.
PATHS = ("script-aligned", "transcript-aligned", "model-only")


@dataclass(frozen=True)
class DubText:
    """A text of the dub to align: where it came from, its stretches and its language (BCP-47)."""

    path: str  # "script-aligned" or "transcript-aligned"
    spans: list[TextSpan]
    language: str


@dataclass(frozen=True)
class DrivenMouth:
    """A dub's mouth on the frame clock and how it was made."""

    coefficients: np.ndarray  # T×4 ``MOUTH_COEFFS``
    path: str  # one of ``PATHS``
    alignment: Alignment | None  # the aligned text's visemes (None on the model-only path)
    note: str  # why this path ("" when the first choice ran)


def heard_early(samples: np.ndarray, sample_rate: int, lead_s: float = MOUTH_LEAD_S) -> np.ndarray:
    """Mono ``samples`` advanced by ``lead_s`` seconds (the same length, silence at the end): the
    audio as the mouth must follow it, sample t being what sounds at t + ``lead_s``."""
    shift = min(len(samples), round(lead_s * sample_rate))
    return np.concatenate([samples[shift:], np.zeros(shift, dtype=samples.dtype)])


def timed_early(audio: dict[str, Any], lead_s: float = MOUTH_LEAD_S) -> dict[str, Any]:
    """An ``audio_tracks`` row with its speech segments, words and timed script cues ``lead_s``
    earlier (clipped at 0), on the clock of ``heard_early``'s samples."""
    def early(items: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if items is None:
            return None
        return [{**item, **{key: max(0.0, item[key] - lead_s) for key in ("start_s", "end_s") if item.get(key) is not None}}
                for item in items]

    return {**audio, "speech_segments": early(audio["speech_segments"]), "words": early(audio["words"]),
            "script": early(audio["script"])}


def mouth_curve(analysis: SpeechAnalysis, alignment: Alignment | None, fps: float, frames: int) -> np.ndarray:
    """T×4 mouth coefficients: the network's, smoothed, with the alignment's bilabials shut."""
    smooth = gaussian_filter1d(analysis.mouth, _SMOOTH_S * STATE_RATE, axis=0, mode="nearest")
    mouth = on_frame_clock(smooth, fps, frames)
    if alignment is None:
        return mouth
    closed = np.zeros(frames)
    times = np.arange(frames)
    for unit in alignment.units:
        if unit.viseme != "bilabial":
            continue
        centre = (unit.start_s + unit.end_s) / 2 * fps - 0.5  # frame t shows [t, t + 1) / fps
        nearest = int(np.clip(round(centre), 0, frames - 1))
        width = max(0.6, (unit.end_s - unit.start_s) * fps / 2)
        closed = np.maximum(closed, np.exp(-0.5 * ((times - nearest) / width) ** 2))
    mouth[:, _JAW] *= 1.0 - closed
    mouth[:, _PRESS] += closed * (VISEMES["bilabial"][_PRESS] - mouth[:, _PRESS])
    return mouth


def drive_mouth(analysis: SpeechAnalysis, log_priors: np.ndarray, texts: list[DubText], fps: float, frames: int,
                min_score: float) -> DrivenMouth:
    """The dub's mouth from the first text that aligns with a score of at least ``min_score``,
    else from the model alone."""
    notes = []
    for text in texts:
        what = text.path.removesuffix("-aligned")
        if not text.spans:  # a transcript of unsure words only, or a script timed past the audio
            notes.append("no transcript words sure enough to align" if what == "transcript"
                         else f"no {what} text within the audio")
            continue
        voice = espeak_voice(text.language)
        if voice is None:
            notes.append(f"no phonetic rules for language {text.language!r} ({what} not aligned)")
            continue
        try:
            alignment = align_spans(analysis, text.spans, voice, log_priors)
        except ValueError as exc:
            notes.append(f"{what} not aligned: {exc}")
            continue
        if alignment.score >= min_score:
            return DrivenMouth(mouth_curve(analysis, alignment, fps, frames), text.path, alignment, "; ".join(notes))
        notes.append(f"the {what} does not match the audio (alignment score {alignment.score:.2f} < {min_score:.2f})")
    if not texts:
        notes.append("no script and no transcript")
    return DrivenMouth(mouth_curve(analysis, None, fps, frames), "model-only", None, "; ".join(notes))
