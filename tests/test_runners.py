"""The Ray runner and the sequential runner write the same manifests."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from dubline.cluster.ray_runner import RayRunner
from dubline.schemas.catalogue import OPTION_DEFAULTS
from dubline.stages.base import StageJob, TitleError
from dubline.stages.composite import CompositeStage
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage

pytestmark = pytest.mark.timeout(180)


def run_pipeline(runner, folder, source, dub):
    folder.mkdir()
    titles, shots, outputs = (str(folder / f"{n}.parquet") for n in ("titles", "shots", "outputs"))
    stats = [
        runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(source)},))),
        runner.run(StageJob(ShotsStage, {}, shots, "t", input_url=titles)),
    ]
    row = {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(dub),
           "output_url": str(folder / "t.fr.mp4"), "options_json": json.dumps(OPTION_DEFAULTS)}
    stats.append(runner.run(StageJob(CompositeStage, {}, outputs, "t", rows=(row,))))
    return [pq.read_table(p) for p in (titles, shots, outputs)], stats


def test_ray_and_sequential_runners_write_the_same_manifests(ray_cluster, media, tmp_path):
    ray_runner = RayRunner()
    try:
        (ray_titles, ray_shots, ray_out), ray_stats = run_pipeline(ray_runner, tmp_path / "ray", media["two_shots"], media["dub_fr"])
    finally:
        ray_runner.shutdown()
    (seq_titles, seq_shots, seq_out), seq_stats = run_pipeline(SequentialRunner(), tmp_path / "seq", media["two_shots"], media["dub_fr"])

    assert ray_titles.equals(seq_titles) and ray_titles.schema.metadata == seq_titles.schema.metadata
    assert ray_shots.equals(seq_shots) and ray_shots.num_rows == 2
    assert ray_out.drop(["video_url"]).equals(seq_out.drop(["video_url"]))
    assert [s.rows_out for s in ray_stats] == [s.rows_out for s in seq_stats] == [1, 2, 1]
    # The Ray jobs ran in worker processes, not in this one.
    assert all(s.worker != seq_stats[0].worker for s in ray_stats)


def test_ray_runner_returns_the_stage_error_unwrapped(ray_cluster, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    runner = RayRunner()
    try:
        with pytest.raises(TitleError, match="bad: source .* is not a readable video"):
            runner.run(StageJob(ProbeStage, {}, str(tmp_path / "t.parquet"), "bad",
                                rows=({"title_id": "bad", "mode": "dub", "source_url": str(bad)},)))
    finally:
        runner.shutdown()
