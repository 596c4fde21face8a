"""coeffs: driven motion coefficients per (shot, track, language).

Dub mode: the mouth comes from the dub audio through the audio->mouth model, calibrated per
speaker on the source footage; head pose, blinks, brows and smile are the speaker's own, as
measured. Avatar mode: the portrait's face gets the predicted mouth and generated (or replayed)
head motion and blinks. Either way mouth motion fades to rest outside the dub's speech.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from schemas.manifest_io import read_rows
from schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, EXPRESSION_NAMES, FACE_TRACKS, TITLES
from stages.audio.features import SAMPLE_RATE, log_mel_frames
from stages.audio.fit import fit_samples
from stages.base import Resources, Stage, TitleError
from stages.coeffs.calibration import MOUTH_COLUMNS, Calibration, fit_calibration, measured_mouth
from stages.coeffs.model import WEIGHTS, MouthPredictor
from stages.coeffs.motion import blinks_from_reference, generate_blinks, generate_pose, pose_from_reference, prosody
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
    version = "2"
    resources = Resources(cpus=1.0, gpus=0.25, memory_gb=1.0)
    output_schema = DRIVEN_COEFFS
    defaults = {"weights": str(WEIGHTS), "min_calibration_r": 0.3}

    def setup(self) -> None:
        self._predictor = MouthPredictor(self.params["weights"])
        self._landmarker: FaceLandmarker | None = None  # only for reference videos, made on first use

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._drive(row)]

    def _drive(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        (title,) = read_rows(row["titles_url"], TITLES)
        (audio,) = read_rows(row["audio_url"], AUDIO_TRACKS)
        tracks = [t for t in read_rows(row["faces_url"], FACE_TRACKS) if t["dubbable"]]
        options = json.loads(row["options_json"])
        mouth = self._predictor.predict(np.asarray(audio["features"], dtype=np.float32))
        mask = speech_mask(audio["speech_segments"], len(mouth), title["fps"])
        mouth = mouth * float(options.get("expression_scale", 1.0))
        if title["mode"] == "avatar":
            return [self._avatar(title, row["language"], audio, tracks, mouth, mask, options)]
        return self._dub(title, row["language"], tracks, mouth, mask, options)

    def _dub(self, title, language, tracks, dub_mouth, mask, options) -> list[dict[str, Any]]:
        """Each track keeps its pose, blinks, brows and smile; its mouth follows the dub."""
        source_mouth = self._source_prediction(title) if tracks else None
        outputs, r_jaw, changes = [], [], []
        for track in tracks:
            frames = np.asarray(track["frame_index"])
            expression = np.asarray(track["expression"], dtype=np.float32)
            measured, rest = measured_mouth(expression)
            calibration = (
                fit_calibration(source_mouth[frames], measured, self.params["min_calibration_r"])
                if source_mouth is not None else Calibration.identity()
            )
            raw = dub_mouth[frames]
            driven = expression.copy()
            driven[:, MOUTH_COLUMNS] = _at_rest_in_silence(calibration.apply(raw), mask[frames]) + rest
            driven[:, _SPEECH_COUPLED] = np.median(expression[:, _SPEECH_COUPLED], axis=0)
            r_jaw.append(calibration.r[0])
            changes.append(float(np.abs(calibration.apply(raw)[:, 0] - raw[:, 0]).mean()))
            if not calibration.trusted[0]:
                self.drop("tracks without a trusted jaw calibration")
            outputs.append(_row(title, language, track, track["frame_index"], driven, track["pose"], track["blink"]))
        if tracks:
            self.report(tracks_driven=len(tracks), calibration_jaw_r=float(np.mean(r_jaw)),
                        calibration_jaw_change=float(np.mean(changes)))
        return outputs

    def _avatar(self, title, language, audio, tracks, mouth, mask, options) -> dict[str, Any]:
        """The portrait's face, talking: mouth from the audio, head motion and blinks generated
        (or replayed from reference videos), everything else as in the portrait."""
        if not tracks:
            raise TitleError(title["title_id"], "no usable face found in the portrait")
        track = max(tracks, key=lambda t: float(np.prod(np.ptp(np.asarray(t["bbox"])[0].reshape(2, 2), axis=0))))
        frames, fps = len(mouth), title["fps"]
        portrait = np.asarray(track["expression"], dtype=np.float32)[0]
        _, rest = measured_mouth(portrait[None])
        driven = np.tile(portrait, (frames, 1))
        driven[:, MOUTH_COLUMNS] = _at_rest_in_silence(mouth, mask) + rest
        base_pose = np.asarray(track["pose"], dtype=np.float64)[0]
        if options.get("ref_pose"):
            pose = pose_from_reference(self._reference(options["ref_pose"], fps)[0], frames, base_pose)
        else:
            samples = fit_samples(read_audio(audio["audio_url"], SAMPLE_RATE), frames, fps, SAMPLE_RATE)
            pose = generate_pose(base_pose, prosody(samples, fps, frames), fps, options.get("pose_style", 0),
                                 still=options.get("still", False), yaw=options.get("yaw"),
                                 pitch=options.get("pitch"), roll=options.get("roll"))
        if options.get("ref_blink"):
            blink = blinks_from_reference(self._reference(options["ref_blink"], fps)[1], frames)
        else:
            blink = generate_blinks(frames, fps, seed=options.get("pose_style", 0))
        self.report(frames_generated=frames, pose_style=options.get("pose_style", 0))
        return _row(title, language, track, list(range(frames)), driven, pose, blink)

    def _reference(self, url: str, fps: float) -> tuple[np.ndarray, np.ndarray]:
        if self._landmarker is None:
            self._landmarker = FaceLandmarker()
        return reference_motion(url, self._landmarker, fps)

    def _source_prediction(self, title: dict[str, Any]) -> np.ndarray | None:
        """Model output on the source's own audio (for calibration), or None without audio."""
        if not title["audio_streams"]:
            self.drop("titles without source audio (no calibration)")
            return None
        samples = read_audio(title["source_url"], SAMPLE_RATE)
        return self._predictor.predict(log_mel_frames(samples, title["fps"], title["frame_count"]))


def _at_rest_in_silence(mouth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mouth coefficients T×4 faded to rest where ``mask`` (T) is 0; jaw_open never negative."""
    out = mouth * mask[:, None]
    out[:, 0] = np.maximum(out[:, 0], 0.0)
    return out


def _row(title, language, track, frame_index, expression, pose, blink) -> dict[str, Any]:
    return {
        "title_id": title["title_id"],
        "language": language,
        "shot_index": track["shot_index"],
        "track_id": track["track_id"],
        "frame_index": list(frame_index),
        "expression": np.asarray(expression, dtype=np.float32),
        "pose": np.asarray(pose, dtype=np.float32),
        "blink": np.asarray(blink, dtype=np.float32),
    }
