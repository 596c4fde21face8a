"""The Ray runner's cluster features: metrics of the stage actors (the counts each job contributes,
their export from real actors to the node's Prometheus endpoint), autoscaler requests, and job time limits."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dubline.cluster.metrics import StageWork, stage_work
from dubline.cluster.policy import (
    POLICIES,
    TIMEOUT_SCALE_VAR,
    UNKNOWN_DURATION_S,
    StagePolicy,
    job_timeout_s,
    policy_for,
)
from dubline.cluster.ray_runner import RayRunner
from dubline.schemas.catalogue import OPTION_DEFAULTS
from dubline.schemas.manifests import SHOTS
from dubline.stages.base import Resources, Stage, StageJob, StageStats, TitleError
from dubline.stages.composite import CompositeStage
from dubline.stages.faces import FaceStage
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage

pytestmark = pytest.mark.timeout(300)


def stats(stage: str, rows_out: int = 1, seconds: float = 2.0, **metrics: float) -> StageStats:
    return StageStats(stage=stage, title_id="t", rows_in=1, rows_out=rows_out, seconds=seconds, metrics=metrics)


def test_the_stages_work_figures_become_frames_and_faces() -> None:
    assert stage_work(stats("faces", frames_processed=50, faces_detected=70)) == StageWork("faces", 50, 0, 2.0)
    assert stage_work(stats("faces", frames_processed=50)).seconds_per_frame == pytest.approx(0.04)
    assert stage_work(stats("any", frames_processed=60, faces_rendered=45)) == StageWork("any", 60, 45, 2.0)
    assert stage_work(stats("enhance", faces_rendered=80, crops_without_alpha=3)) == StageWork("enhance", 0, 80, 2.0)
    assert stage_work(stats("probe")) == StageWork("probe", 0, 0, 2.0)
    assert stage_work(stats("probe")).seconds_per_frame is None


def test_count_work_adds_up_over_a_job() -> None:
    stage = ProbeStage()
    stage.count_work(frames=10, faces=4)
    stage.count_work(frames=5)
    assert stage.take_metrics() == {"frames_processed": 15.0, "faces_rendered": 4.0}
    assert stage.take_metrics() == {}  # the next job starts from nothing


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
    assert face_stats.metrics["frames_processed"] == 60

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
    monkeypatch.setattr("dubline.cluster.ray_runner.request_resources", lambda bundles: requests.append(bundles))
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


# --- job time limits ------------------------------------------------------------------------------


class SleepsStage(Stage):
    """Writes its process id to ``pid_file``, then sleeps ``seconds`` (a decoder stuck on a bad file,
    as far as the runner can tell)."""

    name = "sleeps"
    version = "1"
    resources = Resources(cpus=0.5, memory_gb=0.1)
    output_schema = SHOTS
    defaults = {"seconds": 0.0, "pid_file": None}

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        Path(self.params["pid_file"]).write_text(str(os.getpid()))
        time.sleep(self.params["seconds"])
        return [{"title_id": row["title_id"], "shot_index": 0, "start_frame": 0, "end_frame": 1, "start_s": 0.0,
                 "end_s": 0.04} for row in rows]


def test_the_next_stage_s_worker_starts_while_a_job_runs_and_takes_its_job(ray_cluster, media, tmp_path) -> None:
    titles = str(tmp_path / "titles.parquet")
    runner = RayRunner()
    try:
        runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub",
                                                                "source_url": str(media["two_shots"])},)),
                   next_stage=ShotsStage)
        (started,) = [w.actor for w in runner._workers if w.pool[0] is ShotsStage]  # before any shots job
        runner.run(StageJob(ShotsStage, {}, str(tmp_path / "shots.parquet"), "t", input_url=titles))
        assert [w.actor for w in runner._workers if w.pool[0] is ShotsStage] == [started]  # it took the job

        def fails(stage, params):
            raise RuntimeError("no room today")

        runner.prepare = fails  # starting ahead is an optimisation: its failure fails no job, holds no worker
        again = runner.run(StageJob(ShotsStage, {}, str(tmp_path / "again.parquet"), "t", input_url=titles),
                           next_stage=FaceStage)
        assert again.rows_out == 2 and not any(w.busy for w in runner._workers)  # the two shots
    finally:
        runner.shutdown()


class OneCPUSleepsStage(SleepsStage):
    name = "sleeps_on_one_cpu"
    resources = Resources(cpus=1.0, memory_gb=0.1)


def test_the_next_stage_s_worker_starts_when_a_job_ends_and_leaves_room(ray_cluster, media, tmp_path) -> None:
    """On two CPUs, one held by another title's job: shots (1 CPU) does not fit beside a running
    probe (0.5), so it cannot start ahead when the probe starts; once the probe has finished, its
    idle worker makes room and shots' worker starts then, before any shots job asks for it."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[OneCPUSleepsStage.__module__])  # workers cannot import tests
    runner = RayRunner()
    pid_file = tmp_path / "pid"
    sleeper_errors: list[BaseException] = []

    def sleep() -> None:
        try:
            runner.run(StageJob(OneCPUSleepsStage, {"seconds": 12.0, "pid_file": str(pid_file)},
                                str(tmp_path / "sleeps.parquet"), "other", rows=({"title_id": "other"},)))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            sleeper_errors.append(exc)

    sleeper = threading.Thread(target=sleep)
    sleeper.start()
    try:
        while not pid_file.exists():
            time.sleep(0.05)
        runner.run(StageJob(ProbeStage, {}, str(tmp_path / "titles.parquet"), "t",
                            rows=({"title_id": "t", "mode": "dub", "source_url": str(media["two_shots"])},)),
                   next_stage=ShotsStage)
        assert sleeper.is_alive()  # the other title's job still holds its CPU
        assert sorted(w.pool[0].name for w in runner._workers) == ["shots", "sleeps_on_one_cpu"]
    finally:
        sleeper.join()
        runner.shutdown()
    assert sleeper_errors == []


class PassesThroughStage(SleepsStage):
    """SleepsStage whose jobs pass through unless given ``seconds`` (as enhance does without weights)."""

    name = "passes_through"

    @classmethod
    def passes_through(cls, params: dict[str, Any]) -> bool:
        return not params.get("seconds")


def test_a_job_that_passes_through_runs_in_the_driver_without_starting_a_worker(ray_cluster, tmp_path) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[PassesThroughStage.__module__])  # workers cannot import tests
    runner = RayRunner()
    pid_file = tmp_path / "pid"
    row = ({"title_id": "t"},)
    try:
        runner.run(StageJob(PassesThroughStage, {"pid_file": str(pid_file)}, str(tmp_path / "a.parquet"), "t", rows=row))
        assert int(pid_file.read_text()) == os.getpid() and runner._workers == []
        runner.run(StageJob(PassesThroughStage, {"pid_file": str(pid_file), "seconds": 0.01},
                            str(tmp_path / "b.parquet"), "t", rows=row))
        assert int(pid_file.read_text()) != os.getpid() and len(runner._workers) == 1
    finally:
        runner.shutdown()
    from dubline.stages.enhance import EnhanceStage

    assert EnhanceStage.passes_through({}) and not EnhanceStage.passes_through({"weights": "gfpgan.pth"})


def test_job_time_limits_grow_with_the_title_and_can_be_scaled_or_turned_off(monkeypatch) -> None:
    faces = policy_for("faces")
    assert job_timeout_s("faces", 600.0) == faces.timeout_base_s + 600 * faces.timeout_per_media_s == 37_800
    assert job_timeout_s("enhance", 10.0) == 1800 + 10 * 600
    assert job_timeout_s("probe", None) == 1800  # before any duration is known: the base alone
    assert job_timeout_s("render", None) == 1800 + 60 * UNKNOWN_DURATION_S
    monkeypatch.setenv(TIMEOUT_SCALE_VAR, "2.5")
    assert job_timeout_s("faces", 600.0) == 2.5 * 37_800
    monkeypatch.setenv(TIMEOUT_SCALE_VAR, "0")
    assert job_timeout_s("faces", 600.0) is None
    monkeypatch.setenv(TIMEOUT_SCALE_VAR, "-1")
    with pytest.raises(ValueError, match="DUBLINE_JOB_TIMEOUT_SCALE='-1' is not a number >= 0"):
        job_timeout_s("faces", 600.0)


def test_a_job_past_its_time_limit_fails_its_title_and_its_worker_is_ended(ray_cluster, media, tmp_path,
                                                                           monkeypatch) -> None:
    import psutil
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[SleepsStage.__module__])  # workers cannot import tests
    # 1 s plus 2 s per second of the title: 5.8 s for the 2.4 s clip
    monkeypatch.setitem(POLICIES, "sleeps", StagePolicy(timeout_base_s=1.0, timeout_per_media_s=2.0))
    monkeypatch.delenv(TIMEOUT_SCALE_VAR, raising=False)
    titles = str(tmp_path / "titles.parquet")
    SequentialRunner().run(StageJob(ProbeStage, {}, titles, "t",
                                    rows=({"title_id": "t", "mode": "dub", "source_url": str(media["two_shots"])},)))

    def job(seconds: float, name: str) -> StageJob:
        return StageJob(SleepsStage, {"seconds": seconds, "pid_file": str(tmp_path / f"{name}.pid")},
                        str(tmp_path / f"{name}.parquet"), "t", rows=({"title_id": "t", "titles_url": titles},))

    runner = RayRunner()
    try:
        assert runner.run(job(4.0, "within")).rows_out == 1  # longer than the base alone: the duration counts
        started = time.monotonic()
        with pytest.raises(TitleError) as stopped:
            runner.run(job(120.0, "stuck"))
        waited = time.monotonic() - started
        pools = [w.pool[1] for w in runner._workers]
        after = runner.run(job(0.0, "after"))  # the runner goes on, with a new worker
    finally:
        runner.shutdown()
    assert 5.8 <= waited < 30
    assert str(stopped.value) == ("t: the sleeps job did not finish within its time limit of 6 s (for a title of 2 s) "
                                  "and was stopped; DUBLINE_JOB_TIMEOUT_SCALE (--job-timeout-scale) multiplies the "
                                  "limit, 0 removes it")
    assert not any("120.0" in pool for pool in pools)  # the stuck worker left its pool
    assert after.rows_out == 1 and not (tmp_path / "stuck.parquet").exists()
    stuck_pid = int((tmp_path / "stuck.pid").read_text())
    assert stuck_pid != int((tmp_path / "after.pid").read_text())
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(stuck_pid).wait(timeout=30)  # its process was ended (raises TimeoutExpired if not)


def test_a_ray_session_starts_the_probe_worker_before_any_title_asks(ray_cluster, tmp_path) -> None:
    """Every title starts with probe: its worker (default background) starts with the session."""
    from dubline.flows import tasks

    with tasks.open_session(str(tmp_path / "run"), "ray") as session:
        (worker,) = session.runner._workers
        assert worker.pool == (ProbeStage, json.dumps({"background": OPTION_DEFAULTS["background"]}, sort_keys=True))
