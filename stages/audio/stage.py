"""audio: analyse one dub track of one title on the title's frame clock.

Decodes any format FFmpeg reads (any rate, any channel layout) to 16 kHz mono, applies the
dub-length policy (``stages.speech.fit``), measures loudness per video frame, finds speech with
Silero VAD, reads the dub script when the catalogue gives one, and — with a Whisper model (by
default the multilingual base model shipped in PyPI packages) — transcribes with word times in
the dub's language, writes SRT and WebVTT subtitles beside the output video, and checks the spoken
language against the catalogue's (a mismatch is reported, never fatal). The script and the
transcript are what the coeffs stage aligns the mouth's visemes to.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import av
import numpy as np

from dubline.schemas import storage
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import AUDIO_TRACKS, TITLES
from dubline.stages.audio.subtitles import to_srt, to_vtt
from dubline.stages.base import Resources, Stage, TitleError
from dubline.stages.job_rows import JobRow, Content, Upstream
from dubline.stages.media import audio_duration, media_error, read_audio
from dubline.stages.speech.features import SAMPLE_RATE, loudness_db
from dubline.stages.speech.fit import fit_policy, fit_samples
from dubline.stages.speech.script import read_script_cues
from dubline.stages.speech.transcribe import Transcriber, language_matches, speech_segments, whisper_language
from dubline.stages.speech.whisper_models import BASE_PACKAGED


#: The longest audio an avatar title takes (s): its picture lasts as long as the audio.
MAX_AVATAR_AUDIO_S = 2 * 3600.0
#: Language-detection probability above which Whisper's language beats the catalogue's for the transcript.
_SURE = 0.8


#: Dropped-item reasons worth a look, repeated by the run summary.
LANGUAGE_MISMATCH = "dub language differs from the catalogue"
SILENT_DUB = "silent dub audio"


class AudioJob(JobRow):
    options: ClassVar[tuple[str, ...]] = ("audio_tolerance_s",)

    language: str
    dub_audio_url: Content
    dub_script_url: Content | None = None  # the flow has checked that it reads
    titles_url: Upstream
    options_json: str
    subtitles_url: str  # URL prefix; ".srt" and ".vtt" are appended

class AudioStage(Stage):
    """One row per (title, language) -> one ``audio_tracks`` row (+ subtitles).

    Its job row is an ``AudioJob``.
    """

    name = "audio"
    version = "3"  # 3: an English-only model leaves the language unchecked
    resources = Resources(cpus=1.0, memory_gb=2.0)
    output_schema = AUDIO_TRACKS
    job_row = AudioJob
    published = ("srt_url", "vtt_url")
    #: A model name or local CTranslate2 model folder (see ``whisper_models``); None: no transcript.
    defaults = {"whisper_model": BASE_PACKAGED}

    def setup(self) -> None:
        model = self.params["whisper_model"]
        self._transcriber = Transcriber(model) if model else None

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._analyse(row) for row in rows]

    def _analyse(self, row: dict[str, Any]) -> dict[str, Any]:
        title_id, language = row["title_id"], row["language"]
        options = json.loads(row["options_json"])
        (title,) = read_rows(row["titles_url"], TITLES)
        avatar = title["mode"] == "avatar"
        # Read no more than could be used: a dub longer than this is refused anyway.
        longest = MAX_AVATAR_AUDIO_S if avatar else title["duration_s"] + options["audio_tolerance_s"] + 1.0
        samples = self._decode(title_id, language, row["dub_audio_url"], longest)
        audio_s = len(samples) / SAMPLE_RATE
        if audio_s > longest:
            self._refuse_long(title_id, language, row["dub_audio_url"], title, options["audio_tolerance_s"], longest)
        if avatar:  # a portrait has no length of its own: the audio sets it
            frames, audio_fit = max(1, round(audio_s * title["fps"])), "exact"
        else:
            frames = title["frame_count"]
            try:
                audio_fit = fit_policy(audio_s, title["duration_s"], title["fps"], options["audio_tolerance_s"])
            except ValueError as exc:
                raise TitleError(title_id, f"[{language}] {row['dub_audio_url']}: {exc}") from exc
        fitted = fit_samples(samples, frames, title["fps"], SAMPLE_RATE)
        if len(samples) > len(fitted):  # speech in the cut tail is lost: the run summary says how much
            cut = speech_segments(samples[len(fitted):])
            self.report(dub_speech_cut_s=sum(end - start for start, end in cut))
        out = {
            "title_id": title_id,
            "language": language,
            "audio_url": row["dub_audio_url"],
            "audio_hash": storage.fingerprint(row["dub_audio_url"]),
            "sample_rate": SAMPLE_RATE,
            "duration_s": audio_s,
            "audio_fit": audio_fit,
            "fps": title["fps"],
            "loudness_db": loudness_db(fitted, title["fps"], frames),
            "speech_segments": [{"start_s": a, "end_s": b} for a, b in speech_segments(fitted)],
            "script_url": row.get("dub_script_url"),
            "script": ([{"start_s": c.start_s, "end_s": c.end_s, "text": c.text} for c in read_script_cues(row["dub_script_url"])]
                       if row.get("dub_script_url") else None),
        }
        if self._transcriber is None:
            self.drop("no Whisper model configured (no subtitles)")
        elif self._transcriber.english_only and not language_matches(language, "en"):
            # An English-only model would write English gibberish for this dub: better none.
            self.drop("Whisper model is English-only (no subtitles for other languages)")
        else:
            out.update(self._transcribe(fitted, title_id, language, row["subtitles_url"]))
        return out

    def _decode(self, title_id: str, language: str, url: str, longest_s: float) -> np.ndarray:
        try:
            if storage.size(url) == 0:
                raise TitleError(title_id, f"[{language}] dub audio {url} is not readable audio: the file is empty (0 bytes)")
            samples = read_audio(url, SAMPLE_RATE, max_seconds=longest_s)
        except FileNotFoundError as exc:
            raise TitleError(title_id, f"[{language}] dub audio not found: {url}") from exc
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            reason = media_error(exc, url)
            raise TitleError(title_id, f"[{language}] dub audio {url} is not readable audio ({reason})") from exc
        if len(samples) == 0:
            raise TitleError(title_id, f"[{language}] dub audio {url} is empty")
        if not np.isfinite(samples).all():
            raise TitleError(title_id, f"[{language}] dub audio {url} decodes to NaN or infinite samples")
        if np.abs(samples).max() < 1e-4:
            self.drop(SILENT_DUB)  # legal (a mute title), but worth a line in the report
        return samples

    @staticmethod
    def _refuse_long(title_id: str, language: str, url: str, title: dict[str, Any], tolerance_s: float,
                     longest_s: float) -> None:
        """Raise TitleError for dub audio longer than ``longest_s``, with its length as its header says."""
        if title["mode"] == "dub":
            try:
                declared = audio_duration(url)
            except (av.error.FFmpegError, ValueError, OSError):
                declared = None
            try:
                if declared is not None:
                    fit_policy(declared, title["duration_s"], title["fps"], tolerance_s)
            except ValueError as exc:  # the usual refusal, with the real length
                raise TitleError(title_id, f"[{language}] {url}: {exc}") from exc
        raise TitleError(title_id, f"[{language}] dub audio {url} is longer than {longest_s:.2f} s "
                         + (f"(an avatar's audio may last {MAX_AVATAR_AUDIO_S:.0f} s)" if title["mode"] == "avatar"
                            else "(reading stopped there), though its header says otherwise"))

    def _transcribe(self, samples: np.ndarray, title_id: str, language: str, subtitles_url: str) -> dict[str, Any]:
        """Transcript in the catalogue's language, unless Whisper is sure the dub speaks another
        (a wrong track): then in the language it hears, so that the text matches the audio."""
        if self._transcriber.english_only:  # it hears every language as English: no check is made
            detected, probability, matches = None, None, None
            self.drop("dub language not checked (English-only Whisper model)")
        else:
            detected, probability = self._transcriber.detect_language(samples)
            matches = language_matches(language, detected)
        spoken = whisper_language(language, self._transcriber)
        if matches is False and probability >= _SURE or spoken is None:
            spoken = detected
        transcript = self._transcriber.transcribe(samples, language=spoken)
        for suffix, text in ((".srt", to_srt(transcript.segments)), (".vtt", to_vtt(transcript.segments))):
            try:
                storage.write_text(subtitles_url + suffix, text)
            except OSError as exc:  # the outputs location: a file where a folder goes, a full disk...
                raise TitleError(title_id, f"[{language}] cannot write {subtitles_url + suffix} "
                                           f"({exc.strerror or exc})") from exc
        if matches is False:
            self.drop(LANGUAGE_MISMATCH)
        return {
            "transcript": transcript.text,
            "words": [
                {"word": w.word, "start_s": w.start_s, "end_s": w.end_s, "probability": w.probability}
                for w in transcript.words
            ],
            "transcript_language": transcript.language,
            "detected_language": detected,
            "language_probability": probability,
            "language_matches": matches,
            "srt_url": subtitles_url + ".srt",
            "vtt_url": subtitles_url + ".vtt",
        }
