"""Real talking-head clips for training and measuring: the clip's own audio, its phone timeline
when it is English, and the mouth the faces stage measures on its speaker.

The phone timeline is a forced alignment of Whisper's transcript with pocketsphinx 5.1.1 (its
wheel ships an English acoustic model and dictionary; a training-time tool, in the ``train``
extra), stretch by stretch of the transcript. Other languages get no timeline: their clips serve
to measure only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import FACE_TRACKS, TITLES
from dubline.stages.base import StageJob
from dubline.stages.coeffs.calibration import measured_mouth
from dubline.stages.coeffs.training.corpus import Example, Segment
from dubline.stages.coeffs.visemes import arpabet_viseme
from dubline.stages.faces import FaceStage
from dubline.stages.media import read_audio
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage
from dubline.stages.speech.features import SAMPLE_RATE
from dubline.stages.speech.transcribe import Transcriber

_MARGIN_S = 0.3  # audio kept around each transcript stretch for its alignment


@dataclass
class RealClip:
    example: Example  # the clip's audio; segments from the forced alignment ([] when not English)
    words: list[dict]  # Whisper's transcript words: word, start_s, end_s
    mouth: np.ndarray  # frames×4 measured mouth (``calibration.measured_mouth``), NaN where no face
    fps: float


def load_clip(clip: Path, work: Path, language: str, transcriber: Transcriber) -> RealClip:
    """Probe, shots and faces on ``clip`` (in ``work``; the longest track is the speaker), its
    transcript in ``language`` and, for English, its phone timeline."""
    work.mkdir(parents=True, exist_ok=True)
    runner = SequentialRunner()
    titles, shots, faces = (str(work / f"{n}.parquet") for n in ("titles", "shots", "faces"))
    runner.run(StageJob(ProbeStage, {}, titles, clip.stem, rows=({"title_id": clip.stem, "mode": "dub", "source_url": str(clip)},)))
    runner.run(StageJob(ShotsStage, {}, shots, clip.stem, input_url=titles))
    row = {"title_id": clip.stem, "titles_url": titles, "shots_url": shots, "chunks_url": str(work / "chunks")}
    runner.run(StageJob(FaceStage, {"crop_size": 64}, faces, clip.stem, rows=(row,)))
    (title,) = read_rows(titles, TITLES)
    track = max(read_rows(faces, FACE_TRACKS), key=lambda t: len(t["frame_index"]))
    mouth = np.full((title["frame_count"], 4), np.nan, np.float32)
    mouth[np.asarray(track["frame_index"])] = measured_mouth(np.asarray(track["expression"]))[0]
    audio = read_audio(str(clip), SAMPLE_RATE)
    transcript = transcriber.transcribe(audio, language=language)
    words = [{"word": w.word, "start_s": w.start_s, "end_s": w.end_s} for w in transcript.words]
    segments = phone_timeline(audio, transcript.segments) if language.startswith("en") else []
    return RealClip(Example(audio, segments, f"clip:{clip.stem}", language.split("-")[0]), words, mouth, title["fps"])


def phone_timeline(audio: np.ndarray, stretches) -> list[Segment]:
    """Viseme segments of English speech from pocketsphinx's forced alignment of each transcript
    stretch (``transcribe.Segment``s); a stretch that pocketsphinx cannot align is left out."""
    import pocketsphinx

    segments: list[Segment] = []
    for stretch in stretches:
        start = max(0.0, stretch.start_s - _MARGIN_S)
        piece = audio[int(start * SAMPLE_RATE) : int((stretch.end_s + _MARGIN_S) * SAMPLE_RATE)]
        decoder = pocketsphinx.Decoder(bestpath=False, loglevel="FATAL")
        words = [w for w in re.sub(r"[^a-z' ]", " ", stretch.text.lower()).split() if decoder.lookup_word(w)]
        if not words:
            continue
        pcm = (np.clip(piece, -1, 1) * 32767).astype(np.int16).tobytes()
        try:
            decoder.set_align_text(" ".join(words))
            _decode(decoder, pcm)  # the words first,
            decoder.set_alignment()
            _decode(decoder, pcm)  # then the phones within them
        except RuntimeError:
            continue
        segments += [(arpabet_viseme(p.name), start + p.start / 100, start + (p.start + p.duration) / 100)
                     for p in decoder.get_alignment().phones()]
    return segments


def _decode(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
