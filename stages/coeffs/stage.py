"""coeffs: driven motion coefficients per (shot, track, language).

The mouth comes from the dub audio (``model.SpeechToMouth``: Whisper's encoder and MouthNet), with
the bilabials of the dub's text shut where the text aligns to the audio — the studio's script
first, else Whisper's transcript; the model alone where neither aligns (``mouth``, ``timeline``).

Dub mode: each speaker is calibrated on the source footage (the model's mouth from the original
audio against the mouth measured on the speaker's track: amplitude, never timing); head pose,
blinks, brows and smile are the speaker's own, as measured. Avatar mode: the portrait's largest
face gets the predicted mouth and generated (or replayed) head motion and blinks. Either way mouth
motion fades to rest outside the dub's speech, and ``expression_scale`` scales it around the
speaker's resting mouth.

Who speaks when (dub mode, ``speakers``): active speaker detection on the source says which face
speaks at every frame; each turn of the dub drives the face that spoke then (dub lines follow
the original's timing), off-screen speech drives nobody, and a face keeps its filmed mouth
exactly wherever it is neither given a turn nor speaking in the source (``driven_weight`` 0: the
render stage leaves those frames alone). Per-speaker dub stems (``dub_speakers``) drive the face
bound to their speaker, by the operator's ``speaker_binding`` or else by the detector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dubline.schemas.catalogue import SPEAKER_NONE, SpeakerBinding, read_speaker_binding
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, EXPRESSION_NAMES, FACE_TRACKS, TITLES
from dubline.stages.base import Resources, Stage, TitleError
from dubline.stages.coeffs import WEIGHTS
from dubline.stages.job_rows import JobRow, Upstream
from dubline.stages.coeffs.calibration import MOUTH_COLUMNS, Calibration, fit_calibration, measured_mouth
from dubline.stages.coeffs.motion import blinks_from_reference, generate_blinks, generate_pose, pose_from_reference, prosody
from dubline.stages.coeffs.mouth import DrivenMouth, DubText, drive_mouth, heard_early, mouth_curve, timed_early
from dubline.stages.coeffs.reference import reference_motion
from dubline.stages.coeffs.speakers import (ActiveSpeakers, FaceMouth, Turn, bind_stems, detect, driven_weight, dub_turns,
                                    frame_mask, stem_turns)
from dubline.stages.coeffs.timeline import spans_from_script, spans_from_words
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.media import read_audio
from dubline.stages.speech.features import SAMPLE_RATE
from dubline.stages.speech.fit import fit_samples
from dubline.stages.speech.script import ScriptCue
from dubline.stages.speech.transcribe import speech_segments
from dubline.stages.speech.whisper_models import BASE_PACKAGED

if TYPE_CHECKING:  # PyTorch: loaded by the stage's workers (``setup``), never by the flow's driver
    from dubline.stages.coeffs.model import SpeechToMouth

#: Coefficients whose measured motion follows the original speech: held at rest in a dub.
_SPEECH_COUPLED = [EXPRESSION_NAMES.index(n) for n in ("upper_lip_raise", "lower_lip_depress")]


#: Dropped-item reason of a driven track whose jaw scale could not be calibrated on its filmed
#: mouth (the model's scale is used): worth a look, so the run summary repeats it, in words that
#: say what it means.
UNTRUSTED_CALIBRATION = ("tracks without a trusted jaw calibration (the filmed mouth did not follow the original "
                         "audio well enough to measure how wide this speaker opens; the model's own scale is used)")


def speech_mask(segments: list[dict[str, float]], frames: int, fps: float, ramp_frames: int = 3) -> np.ndarray:
    """T weights: 1 inside speech, 0 in silence, with linear ramps so the mouth eases to rest."""
    mask = np.zeros(frames, bool)
    for segment in segments:
        mask[int(segment["start_s"] * fps) : int(np.ceil(segment["end_s"] * fps)) + 1] = True
    return _eased(mask, ramp_frames)


class CoeffsJob(JobRow):
    options: ClassVar[tuple[str, ...]] = ("expression_scale", "dub_speakers", "speaker_binding", "pose_style", "still",
                                          "ref_pose", "ref_blink", "yaw", "pitch", "roll")
    option_files: ClassVar[tuple[str, ...]] = ("dub_speakers", "speaker_binding", "ref_pose", "ref_blink")

    language: str
    titles_url: Upstream
    faces_url: Upstream
    audio_url: Upstream  # the ``audio_tracks`` manifest
    options_json: str

class CoeffsStage(Stage):
    """One row per (title, language) -> ``driven_coeffs`` rows, one per dubbable track.

    Its job row is a ``CoeffsJob`` (the avatar-only options: ``pose_style``, ``still``,
    ``ref_pose``, ``ref_blink``, ``yaw``, ``pitch``, ``roll``). Raises TitleError for a speaker binding or stem that cannot be read, or a binding that names a
    face track the title does not have.
    """

    name = "coeffs"
    # 4: who speaks when; 5: tracks lined up with the audio, a face alone on screen judged on its
    # whole track; 6: unsure transcript words not aligned; 7: calibration by a gain, no offset;
    # 8: MouthNet on Whisper layers 3 and 6; 9: the encoder in bfloat16 on CPUs that have it;
    # 10: a reference video's head motion smoothed without lag; 11: the mouth shown MOUTH_LEAD_S before its sound;
    # 12: MouthNet on each 30 s encoder window of audio longer than 30 s
    version = "12"
    resources = Resources(cpus=1.0, gpus=0.25, memory_gb=2.0)
    output_schema = DRIVEN_COEFFS
    job_row = CoeffsJob
    #: min_alignment_score: below it a text is taken not to be what the audio says (see
    #: ``alignment``). Set on ``video/train`` clips: their own transcripts score 0.42-0.68,
    #: another clip's words at the same times 0.01-0.18.
    #: min_word_probability: transcript words Whisper is less sure of are not aligned (see
    #: ``timeline.spans_from_words``). Set on ``video/train`` clips (benchmarks/word_probability.py):
    #: 0-7 % of their words fall under 0.3 and the aligned jaw r moves by at most 0.008.
    defaults = {"weights": str(WEIGHTS), "encoder_model": BASE_PACKAGED, "min_calibration_r": 0.3,
                "min_alignment_score": 0.3, "min_word_probability": 0.3}

    def setup(self) -> None:
        from dubline.stages.coeffs.model import SpeechToMouth

        self._speech = SpeechToMouth(self.params["weights"], self.params["encoder_model"])
        self._landmarker: FaceLandmarker | None = None  # only for reference videos, made on first use

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._drive(row)]

    def _drive(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        (title,) = read_rows(row["titles_url"], TITLES)
        (audio,) = read_rows(row["audio_url"], AUDIO_TRACKS)
        audio = timed_early(audio)
        faces = read_rows(row["faces_url"], FACE_TRACKS, without=("landmarks",))
        tracks = [t for t in faces if t["dubbable"]]
        options = json.loads(row["options_json"])
        frames, fps = len(audio["loudness_db"]), title["fps"]
        samples = _mouth_clock_samples(audio["audio_url"], frames, fps)
        dub = self.dub_mouth(samples, audio, row["language"], fps, frames)
        mask = speech_mask(audio["speech_segments"], frames, fps)
        self.report(**{f"mouth_path_{dub.path.replace('-', '_')}": 1.0},
                    **({"alignment_score": dub.alignment.score} if dub.alignment else {}))
        if title["mode"] == "avatar":
            return [self._avatar(title, row["language"], samples, tracks, dub, mask, options)]
        mix = Voice(None, dub, mask, _frame_spans(audio["speech_segments"], frames, fps))
        return self._dub(title, row["language"], faces, mix, audio, options)

    def dub_mouth(self, samples: np.ndarray, audio: dict[str, Any], language: str, fps: float, frames: int) -> DrivenMouth:
        """The dub's mouth (T×4): aligned to its script, else its transcript, else the model alone."""
        words = audio["words"] or []
        texts = []
        if audio["script"]:
            cues = [ScriptCue(c["start_s"], c["end_s"], c["text"]) for c in audio["script"]]
            texts.append(DubText("script-aligned", spans_from_script(cues, words, frames / fps), language))
        if words:
            texts.append(DubText("transcript-aligned", spans_from_words(words, self.params["min_word_probability"]),
                                 audio["transcript_language"] or language))
        return drive_mouth(self._speech.analyse(samples), self._speech.log_priors, texts, fps, frames,
                           self.params["min_alignment_score"])

    def _stems(self, audio: dict[str, Any], language: str, options: dict[str, Any], fps: float,
               frames: int) -> list[Voice]:
        """The per-speaker dub stems of ``options["dub_speakers"]`` (none: the mix is used)."""
        voices = []
        for speaker, url in sorted((options.get("dub_speakers") or {}).items()):
            try:
                samples = _mouth_clock_samples(url, frames, fps)
            except (OSError, ValueError) as exc:
                raise TitleError(audio["title_id"], f"[{language}] dub stem of speaker {speaker} ({url}) is not "
                                 f"readable audio ({exc})") from exc
            segments = [{"start_s": a, "end_s": b} for a, b in speech_segments(samples)]
            # The mix's words and timed script cues said in this speaker's speech are this stem's text.
            heard = frame_mask([(s["start_s"], s["end_s"]) for s in segments], frames, fps)
            own = {**audio, "words": _said_in(audio["words"], heard, fps), "script": _said_in(audio["script"], heard, fps)}
            voices.append(Voice(speaker, self.dub_mouth(samples, own, language, fps, frames),
                                speech_mask(segments, frames, fps),
                                _frame_spans(segments, frames, fps)))
        return voices

    def _dub(self, title, language, faces, mix: Voice, audio: dict[str, Any], options) -> list[dict[str, Any]]:
        """Each dub turn drives the face that speaks then in the source (``speakers``); every other
        frame of every face keeps its filmed mouth exactly. Pose, blinks, brows and smile are always
        the speaker's own."""
        tracks = [t for t in faces if t["dubbable"]]
        if not tracks:
            return []
        fps, frames = title["fps"], len(mix.mask)
        source = self._source(title, frames)
        binding = read_binding(options, title["title_id"], faces)
        stems = self._stems(audio, language, options, fps, frames)
        if source is None:
            # Without the source's audio nobody can be told apart: every face is driven by the mix.
            self.drop("titles without source audio: every face driven by the mix (no active speaker detection)")
            turns = [Turn(t["frame_index"][0], t["frame_index"][-1] + 1, t["track_id"], "") for t in tracks]
            return self._drive_tracks(title, language, tracks, {None: mix}, turns, None, None, options)
        source_mouth, source_speech = source
        mouths = [_face_mouth(t) for t in faces]
        nobody = frozenset(b.track for b in binding if b.speaker == SPEAKER_NONE)
        bound: dict[int, dict[int, str]] = {}  # shots where the binding names speakers: {shot: {track: speaker}}
        for b in binding:
            if b.speaker != SPEAKER_NONE:
                bound.setdefault(b.shot, {})[b.track] = b.speaker
        # In such a shot only the faces bound to a speaker may speak; faces bound to none never do.
        excluded = nobody | frozenset(t["track_id"] for t in faces if t["shot_index"] in bound
                                      and t["track_id"] not in bound[t["shot_index"]])
        # Without stems, a shot whose binding names one speaking face gives that face every turn.
        forced = {} if stems else {shot: next(iter(named)) for shot, named in bound.items() if len(named) == 1}
        speakers = detect(source_mouth[:, 0], source_speech, mouths, fps, excluded, forced)
        if stems:
            candidates = [m for m in mouths if m.track_id not in nobody]
            stem_binding = bind_stems({v.speaker: v.mask > 0 for v in stems}, speakers, candidates, bound)
            turns = stem_turns({v.speaker: v.spans for v in stems}, stem_binding, mouths, frames)
        else:
            turns = dub_turns(mix.spans, speakers, fps)
        self._count_turns(turns, faces)
        outputs = self._drive_tracks(title, language, tracks, {v.speaker: v for v in stems} or {None: mix}, turns,
                                     speakers, source_mouth, options)
        for track, row in zip(tracks, outputs):
            if not np.any(row["driven_weight"] > 0):
                self.drop(f"tracks left as filmed: {_left_as_filmed(track, nobody, bound, bool(stems))}")
        return outputs

    def _drive_tracks(self, title, language, tracks, voices: dict[str | None, Voice], turns: list[Turn],
                      speakers: ActiveSpeakers | None, source_mouth: np.ndarray | None, options) -> list[dict[str, Any]]:
        """Rows of every dubbable track, and the stage figures of the driven ones."""
        outputs, r_jaw = [], []
        for track in tracks:
            row, calibration = self._drive_track(title, language, track, voices, turns, speakers, source_mouth, options)
            outputs.append(row)
            if np.any(row["driven_weight"] > 0):
                r_jaw.append(calibration.r[0])
                if not calibration.trusted[0]:
                    self.drop(UNTRUSTED_CALIBRATION)
        self.report(tracks_driven=len(r_jaw), tracks_left_as_filmed=len(outputs) - len(r_jaw),
                    frames_driven=sum(int(np.count_nonzero(r["driven_weight"] > 0)) for r in outputs),
                    **({"calibration_jaw_r": float(np.mean(r_jaw))} if r_jaw else {}))
        return outputs

    def _count_turns(self, turns: list[Turn], faces: list[dict[str, Any]]) -> None:
        """Stage stats: dub segments (turns) given to a face, and those given to nobody, by reason."""
        dubbable = {t["track_id"]: t for t in faces}
        assigned = 0
        for turn in turns:
            face = dubbable.get(turn.track_id)
            if face is not None and face["dubbable"]:
                assigned += 1
            elif face is not None:
                self.drop(f"dub segments unassigned: the speaker's face is not dubbable ({face['skip_reason'].split(' (')[0]})")
            else:
                self.drop(f"dub segments unassigned: {turn.reason}")
        self.report(segments_assigned=assigned, segments_unassigned=len(turns) - assigned)

    def _drive_track(self, title, language, track, voices, turns: list[Turn], speakers: ActiveSpeakers | None,
                     source_mouth: np.ndarray | None, options) -> tuple[dict[str, Any], Calibration]:
        """One face: driven by its own turns' voice where it has turns, at rest where it speaks in
        the source without one, exactly as filmed elsewhere (``driven_weight`` 0)."""
        frames = np.asarray(track["frame_index"])
        first, fps = int(frames[0]), title["fps"]
        expression = np.asarray(track["expression"], dtype=np.float32)
        own = [t for t in turns if t.track_id == track["track_id"]]
        voice = voices[own[0].voice] if own else next(iter(voices.values()))
        turn_mask = np.zeros(len(frames), bool)
        for turn in own:
            turn_mask[max(0, turn.start - first) : max(0, turn.stop - first)] = True
        if speakers is None:
            speaking, probability = np.zeros(len(frames), bool), None
        else:
            also = speakers.also_speaking[track["track_id"]]
            speaking = ((speakers.labels[frames] == track["track_id"]) | also) & speakers.speech[frames]
            probability = speakers.probability[track["track_id"]]
            if voice.speaker is None:  # the mix's words where this face speaks at once with the labelled one
                turn_mask |= also & (voice.mask[frames] > 0)
        weight = driven_weight(turn_mask, speaking, fps)
        measured, rest = measured_mouth(expression)
        # Calibrated where this face speaks in the source (a listener's mouth says nothing of its voice).
        fit_on = speaking if speaking.sum() >= 2 * fps else np.ones(len(frames), bool)
        calibration = (fit_calibration(source_mouth[frames][fit_on], measured[fit_on], self.params["min_calibration_r"])
                       if source_mouth is not None else Calibration.identity())
        scale = float(options.get("expression_scale", 1.0))
        calibrated = calibration.apply(voice.mouth.coefficients[frames])
        talking = voice.mask[frames] * _eased(turn_mask)
        driven = expression.copy()
        # Scaled after calibration, around the speaker's resting mouth: 0 keeps it at rest.
        driven[:, MOUTH_COLUMNS] = _at_rest_in_silence(calibrated * scale, talking) + rest
        driven[:, _SPEECH_COUPLED] = np.median(expression[:, _SPEECH_COUPLED], axis=0)
        blended = np.where(weight[:, None] > 0, weight[:, None] * driven + (1 - weight[:, None]) * expression, expression)
        row = _row(title, language, track, track["frame_index"], blended, track["pose"], track["blink"], voice.mouth,
                   probability, weight, voice.speaker if own else None)
        return row, calibration

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
        self.count_work(frames=frames)
        self.report(frames_generated=frames, pose_style=options.get("pose_style", 0))
        # The portrait's largest face talks on every frame (the head moves even in silence).
        return _row(title, language, track, list(range(frames)), driven, pose, blink, dub, None, np.ones(frames), None)

    def _reference(self, url: str, fps: float) -> tuple[np.ndarray, np.ndarray]:
        if self._landmarker is None:
            self._landmarker = FaceLandmarker()
        return reference_motion(url, self._landmarker, fps)

    def _source(self, title: dict[str, Any], frames: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The source's own audio on the frame clock: the model's mouth (T×4; for calibration and
        active speaker detection) and voice activity (T bool); None without audio."""
        if not title["audio_streams"]:
            return None
        return own_audio_mouth(self._speech, title["source_url"], title["fps"], frames)


def own_audio_mouth(speech: SpeechToMouth, url: str, fps: float, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The mouth ``speech`` predicts from the audio of ``url`` (T×4 ``MOUTH_COEFFS`` on its frame
    clock of ``frames`` at ``fps``) and that audio's voice activity (T bool, Silero VAD), both
    ``MOUTH_LEAD_S`` early (the mouth a frame shows is that of the sound that follows it)."""
    samples = _mouth_clock_samples(url, frames, fps)
    return mouth_curve(speech.analyse(samples), None, fps, frames), frame_mask(speech_segments(samples), frames, fps)


@dataclass(frozen=True)
class Voice:
    """A dub track that drives faces: the mix (speaker None) or one speaker's stem."""

    speaker: str | None
    mouth: DrivenMouth
    mask: np.ndarray  # T weights: 1 in the track's speech, 0 in silence, eased between
    spans: list[tuple[int, int]]  # its speech segments, [start, stop) frames


def _mouth_clock_samples(url: str, frames: int, fps: float) -> np.ndarray:
    """The audio of ``url`` at ``SAMPLE_RATE``, fitted to the picture's ``frames`` and heard
    ``MOUTH_LEAD_S`` early: the clock every mouth of this stage is made on."""
    return heard_early(fit_samples(read_audio(url, SAMPLE_RATE), frames, fps, SAMPLE_RATE), SAMPLE_RATE)


def _frame_spans(segments: list[dict[str, float]], frames: int, fps: float) -> list[tuple[int, int]]:
    """Speech segments (s) -> [start, stop) frame spans within the title."""
    spans = [(max(0, int(s["start_s"] * fps)), min(frames, int(np.ceil(s["end_s"] * fps)))) for s in segments]
    return [(a, b) for a, b in spans if b > a]


def _said_in(items: list[dict[str, Any]] | None, heard: np.ndarray, fps: float) -> list[dict[str, Any]]:
    """Words or timed script cues whose middle falls on a frame of ``heard`` (T bool)."""
    def middle(item: dict[str, Any]) -> int:
        return min(len(heard) - 1, max(0, int((item["start_s"] + item["end_s"]) / 2 * fps)))

    return [i for i in items or [] if i["start_s"] is not None and i["end_s"] is not None and heard[middle(i)]]


def _face_mouth(track: dict[str, Any]) -> FaceMouth:
    boxes = np.asarray(track["bbox"])
    return FaceMouth(track["track_id"], track["shot_index"], int(track["frame_index"][0]),
                     np.asarray(track["expression"])[:, 0], boxes[:, 3] - boxes[:, 1])


def _eased(mask: np.ndarray, ramp_frames: int = 3) -> np.ndarray:
    """T bool -> T weights in [0, 1] with linear ramps of about ``ramp_frames`` at its edges."""
    kernel = np.ones(2 * ramp_frames + 1) / (2 * ramp_frames + 1)
    return np.convolve(np.pad(mask.astype(float), ramp_frames, mode="edge"), kernel, mode="valid")


def read_binding(options: dict[str, Any], title_id: str, faces: list[dict[str, Any]]) -> list[SpeakerBinding]:
    """The title's speaker binding (``speaker_binding`` option; none: []). Raises TitleError for a
    binding that cannot be read or names a face track the title does not have."""
    if not options.get("speaker_binding"):
        return []
    try:
        binding = read_speaker_binding(options["speaker_binding"])
    except ValueError as exc:
        raise TitleError(title_id, str(exc)) from exc
    tracks = {(t["shot_index"], t["track_id"]) for t in faces}
    for b in binding:
        if (b.shot, b.track) not in tracks:
            in_shot = sorted(track for shot, track in tracks if shot == b.shot)
            raise TitleError(title_id, f"speaker binding {options['speaker_binding']}: shot {b.shot} has no face track "
                             f"{b.track} (its tracks: {', '.join(map(str, in_shot)) or 'none'}; see dubline inspect)")
    return binding


def _left_as_filmed(track: dict[str, Any], nobody: frozenset[int],
                    bound: dict[int, dict[int, str]], stems: bool) -> str:
    """Why a dubbable face was never driven."""
    if track["track_id"] in nobody:
        return "bound to nobody (speaker binding)"
    shot = bound.get(track["shot_index"])
    if shot is not None and track["track_id"] not in shot:
        return "not in the speaker binding of its shot"
    if stems and shot:
        return f"its speaker's stem ({shot[track['track_id']]}) has no speech while it is on screen"
    return "listener (not speaking in the source while the dub speaks)"


def _at_rest_in_silence(mouth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mouth coefficients T×4 faded to rest where ``mask`` (T) is 0; jaw_open never negative."""
    out = mouth * mask[:, None]
    out[:, 0] = np.maximum(out[:, 0], 0.0)
    return out


def _row(title, language, track, frame_index, expression, pose, blink, dub: DrivenMouth,
         probability: np.ndarray | None, weight: np.ndarray, speaker: str | None) -> dict[str, Any]:
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
        "speaker_probability": None if probability is None else np.asarray(probability, dtype=np.float32),
        "driven_weight": np.asarray(weight, dtype=np.float32),
        "speaker": speaker,
    }
