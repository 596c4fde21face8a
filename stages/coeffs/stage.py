"""coeffs: driven motion coefficients per (shot, track, language).

Dub mode: the mouth comes from the dub audio through the audio->mouth model, calibrated per
speaker on the source footage; head pose, blinks, brows and smile are the speaker's own, as
measured. Mouth motion fades to rest outside the dub's speech segments.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from schemas.manifest_io import read_rows
from schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, EXPRESSION_NAMES, FACE_TRACKS, TITLES
from stages.audio.features import SAMPLE_RATE, log_mel_frames
from stages.base import Resources, Stage
from stages.coeffs.calibration import MOUTH_COLUMNS, Calibration, fit_calibration, measured_mouth
from stages.coeffs.model import WEIGHTS, MouthPredictor
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
    manifest), options_json (``expression_scale``).
    """

    name = "coeffs"
    version = "2"
    resources = Resources(cpus=1.0, gpus=0.25, memory_gb=1.0)
    output_schema = DRIVEN_COEFFS
    defaults = {"weights": str(WEIGHTS), "min_calibration_r": 0.3}

    def setup(self) -> None:
        self._predictor = MouthPredictor(self.params["weights"])

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._drive(row)]

    def _drive(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        (title,) = read_rows(row["titles_url"], TITLES)
        (audio,) = read_rows(row["audio_url"], AUDIO_TRACKS)
        tracks = [t for t in read_rows(row["faces_url"], FACE_TRACKS) if t["dubbable"]]
        scale = float(json.loads(row["options_json"]).get("expression_scale", 1.0))
        dub_mouth = self._predictor.predict(np.asarray(audio["features"], dtype=np.float32))
        mask = speech_mask(audio["speech_segments"], title["frame_count"], title["fps"])
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
            mouth = calibration.apply(raw) * scale * mask[frames, None]
            mouth[:, 0] = np.maximum(mouth[:, 0], 0.0)
            driven = expression.copy()
            driven[:, MOUTH_COLUMNS] = mouth + rest
            driven[:, _SPEECH_COUPLED] = np.median(expression[:, _SPEECH_COUPLED], axis=0)
            r_jaw.append(calibration.r[0])
            changes.append(float(np.abs(calibration.apply(raw)[:, 0] - raw[:, 0]).mean()))
            if not calibration.trusted[0]:
                self.drop("tracks without a trusted jaw calibration")
            outputs.append({
                "title_id": title["title_id"],
                "language": row["language"],
                "shot_index": track["shot_index"],
                "track_id": track["track_id"],
                "frame_index": track["frame_index"],
                "expression": driven,
                "pose": np.asarray(track["pose"], dtype=np.float32),
                "blink": np.asarray(track["blink"], dtype=np.float32),
            })
        if tracks:
            self.report(
                tracks_driven=len(tracks),
                calibration_jaw_r=float(np.mean(r_jaw)),
                calibration_jaw_change=float(np.mean(changes)),
                expression_scale=scale,
            )
        return outputs

    def _source_prediction(self, title: dict[str, Any]) -> np.ndarray | None:
        """Model output on the source's own audio (for calibration), or None without audio."""
        if not title["audio_streams"]:
            self.drop("titles without source audio (no calibration)")
            return None
        samples = read_audio(title["source_url"], SAMPLE_RATE)
        return self._predictor.predict(log_mel_frames(samples, title["fps"], title["frame_count"]))
