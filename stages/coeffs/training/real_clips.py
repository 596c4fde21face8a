"""Training and validation examples from real talking-head clips: the clip's own audio as input,
the mouth that the faces stage measures on its speaker as target."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas.manifest_io import read_rows
from schemas.manifests import FACE_TRACKS, TITLES
from stages.audio.features import SAMPLE_RATE, log_mel_frames
from stages.base import StageJob
from stages.coeffs.training.corpus import Example
from stages.coeffs.calibration import measured_mouth
from stages.faces import FaceStage
from stages.media import read_audio
from stages.probe import ProbeStage
from stages.sequential import SequentialRunner
from stages.shots import ShotsStage


def clip_example(clip: Path, work: Path) -> Example:
    """Run probe, shots and faces on ``clip`` (in ``work``); the longest track is the speaker."""
    work.mkdir(parents=True, exist_ok=True)
    runner = SequentialRunner()
    titles, shots, faces = (str(work / f"{n}.parquet") for n in ("titles", "shots", "faces"))
    runner.run(StageJob(ProbeStage, {}, titles, clip.stem, rows=({"title_id": clip.stem, "mode": "dub", "source_url": str(clip)},)))
    runner.run(StageJob(ShotsStage, {}, shots, clip.stem, input_url=titles))
    row = {"title_id": clip.stem, "titles_url": titles, "shots_url": shots, "chunks_url": str(work / "chunks")}
    runner.run(StageJob(FaceStage, {"crop_size": 64}, faces, clip.stem, rows=(row,)))
    (title,) = read_rows(titles, TITLES)
    track = max(read_rows(faces, FACE_TRACKS), key=lambda t: len(t["frame_index"]))
    frames = np.asarray(track["frame_index"])
    features = log_mel_frames(read_audio(str(clip), SAMPLE_RATE), title["fps"], title["frame_count"])[frames]
    return Example(
        features=features,
        targets=measured_mouth(np.asarray(track["expression"]))[0],
        source=f"clip:{clip.stem}",
        language="en",
        fps=title["fps"],
        bilabial_frames=np.zeros(0, dtype=int),
        silent=np.zeros(len(frames), dtype=bool),
    )
