"""The Ray runner's cluster features: metrics of the stage actors (the counts each job contributes,
their export from real actors to the node's Prometheus endpoint) and autoscaler requests."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import pytest

from cluster.metrics import StageWork, stage_work
from cluster.ray_runner import RayRunner
from schemas import storage
from schemas.catalogue import OPTION_DEFAULTS
from schemas.manifest_io import write_manifest
from schemas.manifests import OUTPUTS, RENDERED_TRACKS
from stages.base import StageJob, StageStats
from stages.composite import CompositeStage
from stages.faces import FaceStage
from stages.probe import ProbeStage
from stages.shots import ShotsStage

pytestmark = pytest.mark.timeout(300)


def stats(stage: str, rows_out: int = 1, seconds: float = 2.0, **metrics: float) -> StageStats:
    return StageStats(stage=stage, title_id="t", rows_in=1, rows_out=rows_out, seconds=seconds, metrics=metrics)


def test_reported_figures_become_frames_and_faces() -> None:
    assert stage_work(stats("faces", frames=50, faces_detected=70), "unused") == StageWork("faces", 50, 0, 2.0)
    assert stage_work(stats("faces", frames=50), "unused").seconds_per_frame == pytest.approx(0.04)
    assert stage_work(stats("coeffs", frames_generated=125), "unused") == StageWork("coeffs", 125, 0, 2.0)
    assert stage_work(stats("enhance", crops_enhanced=80, crops_without_alpha=3), "unused") == StageWork("enhance", 0, 80, 2.0)
    assert stage_work(stats("probe"), "unused") == StageWork("probe", 0, 0, 2.0)
    assert stage_work(stats("probe"), "unused").seconds_per_frame is None


def test_render_and_composite_counts_come_from_their_manifests() -> None:
    folder = f"memory://dubline-tests/{uuid.uuid4().hex}"
    try:
        rendered = storage.join(folder, "render.parquet")
        tracks = [{"title_id": "t", "language": "fr", "shot_index": 0, "track_id": i, "frame_index": frames,
                   "chunk_urls": ["c"]} for i, frames in enumerate([list(range(0, 10)), list(range(5, 15))])]
        write_manifest(tracks, RENDERED_TRACKS, rendered)
        # two faces on frames 5..9: 15 frames carry a rendered face, 20 crops were rendered
        assert stage_work(stats("render", rows_out=2, seconds=3.0), rendered) == StageWork("render", 15, 20, 3.0)

        outputs = storage.join(folder, "outputs.parquet")
        write_manifest([{"title_id": "t", "language": "fr", "video_url": "t.fr.mp4", "width": 64, "height": 64,
                         "fps": 25.0, "frame_count": 60, "duration_s": 2.4, "video_codec": "h264", "audio_codec": "aac",
                         "audio_source_s": 2.4, "audio_fit": "exact", "faces_dubbed": 45}], OUTPUTS, outputs)
        assert stage_work(stats("composite"), outputs) == StageWork("composite", 60, 45, 2.0)
        # a render job without dubbable faces writes no rows and has nothing to count
        assert stage_work(stats("render", rows_out=0), storage.join(folder, "absent.parquet")) == StageWork("render", 0, 0, 2.0)
    finally:
        storage.remove(folder)


def exported(node: dict, metric: str, stage: str) -> float:
    """Sum over workers of ``metric`` for ``stage`` on ``node``'s Prometheus endpoint."""
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(metric + "{") and f'stage="{stage}"' in line)


def test_stage_actors_export_their_metrics(ray_cluster, media, tmp_path) -> None:
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    frames_metric = "ray_dubline_frames_processed_total"
    before = {stage: exported(node, frames_metric, stage) for stage in ("faces", "composite")}
    titles, shots, faces, outputs = (str(tmp_path / f"{n}.parquet") for n in ("titles", "shots", "faces", "outputs"))
    runner = RayRunner()
    try:
        runner.run(StageJob(ProbeStage, {}, titles, "t",
                            rows=({"title_id": "t", "mode": "dub", "source_url": str(media["two_shots"])},)))
        runner.run(StageJob(ShotsStage, {}, shots, "t", input_url=titles))
        face_stats = runner.run(StageJob(FaceStage, {}, faces, "t", rows=(
            {"title_id": "t", "titles_url": titles, "shots_url": shots, "chunks_url": str(tmp_path / "faces.chunks")},)))
        runner.run(StageJob(CompositeStage, {}, outputs, "t", rows=(
            {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(media["dub_fr"]),
             "output_url": str(tmp_path / "t.fr.mp4"), "options_json": json.dumps(OPTION_DEFAULTS)},)))
    finally:
        runner.shutdown()
    assert face_stats.metrics["frames"] == 60

    expected = {"faces": 60, "composite": 60}  # two 1.2 s shots at 25 fps
    deadline = time.monotonic() + 90  # actors push metrics to the node's agent every few seconds
    while True:
        grown = {stage: exported(node, frames_metric, stage) - before[stage] for stage in expected}
        if all(grown[s] >= expected[s] for s in expected) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert grown == expected
    assert exported(node, "ray_dubline_seconds_per_frame_count", "faces") >= 1


def test_waiting_jobs_ask_the_autoscaler_for_room(ray_cluster, media, tmp_path, monkeypatch) -> None:
    import ray

    assert ray.cluster_resources()["CPU"] == 2
    requests: list[list[dict]] = []
    monkeypatch.setattr("cluster.ray_runner.request_resources", lambda bundles: requests.append(bundles))
    titles = str(tmp_path / "titles.parquet")
    runner = RayRunner()
    try:
        runner.run(StageJob(ProbeStage, {}, titles, "t",
                            rows=({"title_id": "t", "mode": "dub", "source_url": str(media["two_shots"])},)))
        # three 1-CPU shots workers wanted at once on 2 CPUs: the third waits for room
        jobs = [threading.Thread(target=runner.run, args=(StageJob(ShotsStage, {}, str(tmp_path / f"shots{i}.parquet"),
                                                                    "t", input_url=titles),)) for i in range(3)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(timeout=120)
    finally:
        runner.shutdown()
    assert all((tmp_path / f"shots{i}.parquet").exists() for i in range(3))
    # asked for room for all three while one waited, then withdrew the request
    assert requests == [[{"CPU": 1.0}] * 3, []]


def test_workers_without_a_gpu_share_see_no_gpu(ray_cluster, media, tmp_path) -> None:
    import os

    import ray

    runner = RayRunner()
    try:
        runner.run(StageJob(ProbeStage, {}, str(tmp_path / "titles.parquet"), "t",
                            rows=({"title_id": "t", "mode": "dub", "source_url": str(media["two_shots"])},)))
        (worker,) = runner._workers
        visible = ray.get(worker.actor.__ray_call__.remote(lambda self: os.environ.get("CUDA_VISIBLE_DEVICES")))
    finally:
        runner.shutdown()
    assert visible == ""
