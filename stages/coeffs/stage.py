"""coeffs: driven motion coefficients per (shot, track, language).

The mouth comes from the dub audio (``model.SpeechToMouth``: Whisper's encoder and MouthNet), with
the bilabials of the dub's text shut where the text aligns to the audio — the studio's script
first, else Whisper's transcript; the model alone where neither aligns (``mouth``, ``timeline``).

Dub mode: each speaker is calibrated on the source footage (the model's mouth from the original
audio against the mouth measured on the speaker's track: amplitude, never timing); head pose,
blinks, brows and smile are the speaker's own, as measured. Avatar mode: the portrait's face gets
the predicted mouth and generated (or replayed) head motion and blinks. Either way mouth motion
fades to rest outside the dub's speech, and ``expression_scale`` scales it around the speaker's
resting mouth.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from schemas.manifest_io import read_rows
from schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, EXPRESSION_NAMES, FACE_TRACKS, TITLES
from stages.audio.features import SAMPLE_RATE
from stages.audio.fit import fit_samples
from stages.audio.script import ScriptCue
from stages.audio.whisper_models import BASE_PACKAGED
from stages.base import Resources, Stage, TitleError
from stages.coeffs.calibration import MOUTH_COLUMNS, Calibration, fit_calibration, measured_mouth
from stages.coeffs.model import WEIGHTS, SpeechToMouth
from stages.coeffs.motion import blinks_from_reference, generate_blinks, generate_pose, pose_from_reference, prosody
from stages.coeffs.mouth import DrivenMouth, DubText, drive_mouth, mouth_curve
from stages.coeffs.timeline import spans_from_script, spans_from_words
from stages.faces.landmarks import FaceLandmarker
from stages.faces.reference import reference_motion
from stages.media import read_audio

#: Coefficients whose measured motion follows the original speech: held at rest in a dub.
_SPEECH_COUPLED = [EXPRESSION_NAMES.index(n) for n in ("upper_lip_raise", "lower_lip_depress")]


def speech_mask(segments: list[dict[str, float]], frames: int, fps: float, ramp_frames: int = 3) -> np.ndarray:
    """T weights: 1 inside speech, 0 in silence, with linear ramps so the mouth eases to rest."""
    mask = np.zeros(frames)
    for segment in segments:
        mask[int(segment["start_s"] * fps) : int(np.ceil(segment["end_s"] * fps)) + 1] = 1.0
    kernel = np.ones(2 * ramp_frames + 1) / (2 * ramp_frames + 1)
    return np.convolve(np.pad(mask, ramp_frames, mode="edge"), kernel, mode="valid")


class CoeffsStage(Stage):
    """One row per (title, language) -> ``driven_coeffs`` rows, one per dubbable track.

    Input row keys: title_id, language, titles_url, faces_url, audio_url (the ``audio_tracks``
    manifest), options_json (``expression_scale``; in avatar mode also ``pose_style``, ``still``,
    ``ref_pose``, ``ref_blink``, ``yaw``, ``pitch``, ``roll``).
    """

    name = "coeffs"
    version = "3"
    resources = Resources(cpus=1.0, gpus=0.25, memory_gb=2.0)
    output_schema = DRIVEN_COEFFS
    #: min_alignment_score: below it a text is taken not to be what the audio says (see
    #: ``alignment``). Set on ``video/train`` clips: their own transcripts score 0.42-0.68,
    #: another clip's words at the same times 0.01-0.18.
    defaults = {"weights": str(WEIGHTS), "encoder_model": BASE_PACKAGED, "min_calibration_r": 0.3,
                "min_alignment_score": 0.3}

    def setup(self) -> None:
        self._speech = SpeechToMouth(self.params["weights"], self.params["encoder_model"])
        self._landmarker: FaceLandmarker | None = None  # only for reference videos, made on first use

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._drive(row)]

    def _drive(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        (title,) = read_rows(row["titles_url"], TITLES)
        (audio,) = read_rows(row["audio_url"], AUDIO_TRACKS)
        tracks = [t for t in read_rows(row["faces_url"], FACE_TRACKS) if t["dubbable"]]
        options = json.loads(row["options_json"])
        frames, fps = len(audio["loudness_db"]), title["fps"]
        samples = fit_samples(read_audio(audio["audio_url"], SAMPLE_RATE), frames, fps, SAMPLE_RATE)
        dub = self.dub_mouth(samples, audio, row["language"], fps, frames)
        mask = speech_mask(audio["speech_segments"], frames, fps)
        self.report(**{f"mouth_path_{dub.path.replace('-', '_')}": 1.0},
                    **({"alignment_score": dub.alignment.score} if dub.alignment else {}))
        if title["mode"] == "avatar":
            return [self._avatar(title, row["language"], samples, tracks, dub, mask, options)]
        return self._dub(title, row["language"], tracks, dub, mask, options)

    def dub_mouth(self, samples: np.ndarray, audio: dict[str, Any], language: str, fps: float, frames: int) -> DrivenMouth:
        """The dub's mouth (T×4): aligned to its script, else its transcript, else the model alone."""
        words = audio["words"] or []
        texts = []
        if audio["script"]:
            cues = [ScriptCue(c["start_s"], c["end_s"], c["text"]) for c in audio["script"]]
            texts.append(DubText("script-aligned", spans_from_script(cues, words, frames / fps), language))
        if words:
            texts.append(DubText("transcript-aligned", spans_from_words(words), audio["transcript_language"] or language))
        return drive_mouth(self._speech.analyse(samples), self._speech.log_priors, texts, fps, frames,
                           self.params["min_alignment_score"])

    def _dub(self, title, language, tracks, dub: DrivenMouth, mask, options) -> list[dict[str, Any]]:
        """Each track keeps its pose, blinks, brows and smile; its mouth follows the dub."""
        source_mouth = self._source_mouth(title) if tracks else None
        scale = float(options.get("expression_scale", 1.0))
        outputs, r_jaw, changes = [], [], []
        for track in tracks:
            frames = np.asarray(track["frame_index"])
            expression = np.asarray(track["expression"], dtype=np.float32)
            measured, rest = measured_mouth(expression)
            calibration = (
                fit_calibration(source_mouth[frames], measured, self.params["min_calibration_r"])
                if source_mouth is not None else Calibration.identity()
            )
            raw = dub.coefficients[frames]
            calibrated = calibration.apply(raw)
            driven = expression.copy()
            # Scaled after calibration, around the speaker's resting mouth: 0 keeps it at rest.
            driven[:, MOUTH_COLUMNS] = _at_rest_in_silence(calibrated * scale, mask[frames]) + rest
            driven[:, _SPEECH_COUPLED] = np.median(expression[:, _SPEECH_COUPLED], axis=0)
            r_jaw.append(calibration.r[0])
            changes.append(float(np.abs(calibrated[:, 0] - raw[:, 0]).mean()))
            if not calibration.trusted[0]:
                self.drop("tracks without a trusted jaw calibration")
            outputs.append(_row(title, language, track, track["frame_index"], driven, track["pose"], track["blink"], dub))
        if tracks:
            self.report(tracks_driven=len(tracks), calibration_jaw_r=float(np.mean(r_jaw)),
                        calibration_jaw_change=float(np.mean(changes)))
        return outputs

    def _avatar(self, title, language, samples, tracks, dub: DrivenMouth, mask, options) -> dict[str, Any]:
        """The portrait's face, talking: mouth from the audio, head motion and blinks generated
        (or replayed from reference videos), everything else as in the portrait."""
        if not tracks:
            raise TitleError(title["title_id"], "no usable face found in the portrait")
        track = max(tracks, key=lambda t: float(np.prod(np.ptp(np.asarray(t["bbox"])[0].reshape(2, 2), axis=0))))
        frames, fps = len(dub.coefficients), title["fps"]
        portrait = np.asarray(track["expression"], dtype=np.float32)[0]
        _, rest = measured_mouth(portrait[None])
        driven = np.tile(portrait, (frames, 1))
        driven[:, MOUTH_COLUMNS] = _at_rest_in_silence(dub.coefficients * float(options.get("expression_scale", 1.0)), mask) + rest
        base_pose = np.asarray(track["pose"], dtype=np.float64)[0]
        if options.get("ref_pose"):
            pose = pose_from_reference(self._reference(options["ref_pose"], fps)[0], frames, base_pose)
        else:
            pose = generate_pose(base_pose, prosody(samples, fps, frames), fps, options.get("pose_style", 0),
                                 still=options.get("still", False), yaw=options.get("yaw"),
                                 pitch=options.get("pitch"), roll=options.get("roll"))
        if options.get("ref_blink"):
            blink = blinks_from_reference(self._reference(options["ref_blink"], fps)[1], frames)
        else:
            blink = generate_blinks(frames, fps, seed=options.get("pose_style", 0))
        self.report(frames_generated=frames, pose_style=options.get("pose_style", 0))
        return _row(title, language, track, list(range(frames)), driven, pose, blink, dub)

    def _reference(self, url: str, fps: float) -> tuple[np.ndarray, np.ndarray]:
        if self._landmarker is None:
            self._landmarker = FaceLandmarker()
        return reference_motion(url, self._landmarker, fps)

    def _source_mouth(self, title: dict[str, Any]) -> np.ndarray | None:
        """The model's mouth (T×4) on the source's own audio (for calibration), or None without audio."""
        if not title["audio_streams"]:
            self.drop("titles without source audio (no calibration)")
            return None
        frames, fps = title["frame_count"], title["fps"]
        samples = fit_samples(read_audio(title["source_url"], SAMPLE_RATE), frames, fps, SAMPLE_RATE)
        return mouth_curve(self._speech.analyse(samples), None, fps, frames)


def _at_rest_in_silence(mouth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mouth coefficients T×4 faded to rest where ``mask`` (T) is 0; jaw_open never negative."""
    out = mouth * mask[:, None]
    out[:, 0] = np.maximum(out[:, 0], 0.0)
    return out


def _row(title, language, track, frame_index, expression, pose, blink, dub: DrivenMouth) -> dict[str, Any]:
    fps = title["fps"]
    first, last = frame_index[0] / fps, (frame_index[-1] + 1) / fps
    units = dub.alignment.units if dub.alignment else ()
    return {
        "title_id": title["title_id"],
        "language": language,
        "shot_index": track["shot_index"],
        "track_id": track["track_id"],
        "frame_index": list(frame_index),
        "expression": np.asarray(expression, dtype=np.float32),
        "pose": np.asarray(pose, dtype=np.float32),
        "blink": np.asarray(blink, dtype=np.float32),
        "mouth_path": dub.path,
        "mouth_path_note": dub.note,
        "alignment_score": dub.alignment.score if dub.alignment else None,
        "visemes": [{"viseme": u.viseme, "phonemes": u.phonemes, "start_s": u.start_s, "end_s": u.end_s}
                    for u in units if u.end_s > first and u.start_s < last],
    }
