"""Reliability: a driver killed with SIGKILL half-way resumes without recomputing finished stages
and ends with the same outputs as an uninterrupted run; a Ray worker that dies in the middle of a
stage job is restarted and the job retried, on its own and inside a flow run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dubline.cluster.policy import POLICIES, policy_for
from dubline.flows.localize import localize_catalogue
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import SHOTS
from dubline.stages.base import Resources, Stage, StageJob
from tests.conftest import decoded

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("prefect_harness")]

REPO = Path(__file__).resolve().parents[1]
TITLES = ("ep1", "ep2", "ep3")


def done_markers(out: Path) -> Counter[str]:
    """Completion markers in a run folder, counted per stage."""
    return Counter(marker.relative_to(out / "manifests").parts[0] for marker in (out / "manifests").rglob("*.done"))


def kill_when(driver: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 180) -> None:
    """SIGKILL ``driver``'s process group as soon as ``ready()``; fails if it ends first or never gets there."""
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert driver.poll() is None, f"the driver ended before it was killed: {driver.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)


# --- a driver killed half-way ----------------------------------------------------------------


@pytest.fixture(scope="module")
def three_titles(media, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("three_titles")
    catalogue = folder / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([
        {"title_id": title_id, "video": str(media["one_shot"]), "language": "fr", "dub_audio": str(media["dub_fr"])}
        for title_id in TITLES
    ]))
    return catalogue


def test_killed_driver_resumes_without_recomputing_and_matches_an_uninterrupted_run(three_titles, tmp_path):
    from prefect.settings import PREFECT_API_URL

    reference = localize_catalogue(catalogue=str(three_titles), out=str(tmp_path / "reference"), executor="local")
    assert {t["status"] for t in reference["titles"].values()} == {"done"}
    total = sum(done_markers(tmp_path / "reference").values())

    # The CLI in its own process group (its Prefect tasks run in threads of that process), against
    # this session's Prefect API; SIGKILL once some but not all stage outputs are complete.
    out = tmp_path / "killed"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    driver = subprocess.Popen(
        [str(Path(sys.executable).with_name("dubline")), "run", str(three_titles), "--out", str(out),
         "--executor", "local", "--quiet"],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    kill_when(driver, lambda: (out / "manifests").exists() and sum(done_markers(out).values()) >= total // 2)
    assert driver.returncode == -signal.SIGKILL
    before = done_markers(out)
    assert 0 < sum(before.values()) < total, before
    state = json.loads((out / "run.json").read_text())
    assert state["invocations"][-1]["finished"] is None  # it never got to close its record

    resumed = localize_catalogue(catalogue=str(three_titles), out=str(out), executor="local")

    # Exactly what had a completion marker was reused; everything else ran once.
    invocation = resumed["invocation"]
    assert invocation["stages_skipped"] == dict(before)
    assert invocation["stages_executed"] == dict(done_markers(tmp_path / "reference") - before)
    assert invocation["stages_failed"] == {}
    assert done_markers(out) == done_markers(tmp_path / "reference")
    state = json.loads((out / "run.json").read_text())
    assert len(state["invocations"]) == 2 and state["invocations"][-1]["stages_skipped"] == dict(before)

    # The same outputs as the uninterrupted run: every decoded frame and audio sample.
    for title_id in TITLES:
        assert resumed["titles"][title_id]["status"] == "done"
        got, want = resumed["titles"][title_id]["outputs"]["fr"], reference["titles"][title_id]["outputs"]["fr"]
        (got_frames, got_audio), (want_frames, want_audio) = decoded(got), decoded(want)
        assert len(got_frames) == len(want_frames) == 30
        assert all(np.array_equal(a, b) for a, b in zip(got_frames, want_frames))
        assert np.array_equal(got_audio, want_audio)
        # Same encoder settings on the same frames: the files themselves are identical too.
        assert Path(got).read_bytes() == Path(want).read_bytes()


#: The CLI with render in frame ranges of 0.4 s (three ranges of the 1.2 s clip), face crops in
#: chunks of 8 frames (so that each range has chunks of its own) and 1.5 s of sleep after each
#: render job, so that the test can kill it between two ranges.
_RANGED_CLI = """
import dataclasses, sys, time
from dubline.cluster import policy
from dubline.stages.faces import FaceStage
from dubline.stages.render import RenderStage
policy.POLICIES["render"] = dataclasses.replace(policy.POLICIES["render"], range_s=0.4)
FaceStage.defaults = {**FaceStage.defaults, "chunk_frames": 8}
render = RenderStage.process_batch
RenderStage.process_batch = lambda self, rows: (render(self, rows), time.sleep(1.5))[0]
from dubline.flows.cli import main
sys.argv[0] = "dubline"
main()
"""


def test_driver_killed_between_render_ranges_resumes_only_the_unfinished_ranges(media, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from dubline.stages.faces import FaceStage

    monkeypatch.setattr(FaceStage, "defaults", {**FaceStage.defaults, "chunk_frames": 8})
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "ep", "video": str(media["one_shot"]), "language": "fr",
                                          "dub_audio": str(media["dub_fr"])}]))
    whole = localize_catalogue(catalogue=str(catalogue), out=str(tmp_path / "whole"), executor="local")

    out = tmp_path / "killed"
    renders = out / "manifests" / "render" / "ep"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    driver = subprocess.Popen(
        [sys.executable, "-c", _RANGED_CLI, "run", str(catalogue), "--out", str(out), "--executor", "local", "--quiet"],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    kill_when(driver, lambda: renders.exists() and bool(list(renders.glob("*.done"))))
    assert len(list(renders.glob("*.done"))) == 1, "killed after the first of three ranges"

    monkeypatch.setitem(POLICIES, "render", dataclasses.replace(POLICIES["render"], range_s=0.4))
    resumed = localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
    invocation = resumed["invocation"]
    assert invocation["stages_skipped"]["render"] == 1 and invocation["stages_executed"]["render"] == 2
    state = json.loads((out / "run.json").read_text())
    assert state["titles"]["ep"]["languages"]["fr"]["stages"]["render"]["ranges"] == 3
    log = Path(state["invocations"][-1]["log"]).read_text()
    ranges = [line.split("render ep [fr] ", 1)[1] for line in log.splitlines() if "render ep [fr] range" in line]
    assert sorted(r.split(")")[1].split()[0] for r in ranges) == ["done", "done", "reused"], ranges
    # Ranges joined after a kill: the video a single render job makes, byte for byte.
    got, want = resumed["titles"]["ep"]["outputs"]["fr"], whole["titles"]["ep"]["outputs"]["fr"]
    assert Path(got).read_bytes() == Path(want).read_bytes()


# --- a Ray worker that dies in a stage job ----------------------------------------------------


class DiesOnceStage(Stage):
    """Kills its own worker process (``os._exit``) the first time it runs a job, as a crash or
    an OOM kill would; the marker file remembers that it happened and in which process."""

    name = "dies_once"
    version = "1"
    resources = Resources(cpus=0.5, memory_gb=0.1)
    output_schema = SHOTS
    defaults = {"marker": None}

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        marker = Path(self.params["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return [{"title_id": row["title_id"], "shot_index": 0, "start_frame": 0, "end_frame": 10,
                 "start_s": 0.0, "end_s": 0.4} for row in rows]


def test_ray_worker_that_dies_in_a_job_is_restarted_and_the_job_retried(ray_cluster, tmp_path):
    from ray import cloudpickle

    from dubline.cluster.ray_runner import RayRunner

    assert policy_for(DiesOnceStage.name).max_retries >= 1
    # Ray workers cannot import this test module: ship the stage class itself.
    cloudpickle.register_pickle_by_value(sys.modules[DiesOnceStage.__module__])
    marker = tmp_path / "died"
    runner = RayRunner()
    try:
        stats = runner.run(StageJob(DiesOnceStage, {"marker": str(marker)}, str(tmp_path / "out.parquet"), "t",
                                    rows=({"title_id": "t"},)))
    finally:
        runner.shutdown()
    assert marker.exists(), "the first attempt ran and died"
    assert stats.rows_out == 1 and read_rows(str(tmp_path / "out.parquet"), SHOTS)[0]["title_id"] == "t"
    first_pid, retry_pid = int(marker.read_text()), int(stats.worker.rsplit(":", 1)[1])
    assert retry_pid != first_pid, "the retry ran in a new worker process"


def _kill_first_worker_running(task: str, started: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first of this process's own descendants that runs ``task`` (Ray names a worker
    process after the actor method it runs); only processes this test session started."""
    import psutil

    me = psutil.Process()
    started.set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for process in me.children(recursive=True):
            try:
                title = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if task in title:
                process.kill()
                killed.append(process.pid)
                return
        time.sleep(0.01)


def test_ray_worker_killed_during_a_flow_stage_is_retried_and_the_run_completes(ray_cluster, media, tmp_path):
    pytest.importorskip("psutil")
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "clip", "video": str(media["one_shot"]), "language": "fr",
                                          "dub_audio": str(media["dub_fr"])}]))
    started, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker_running, args=("FaceStageWorker.run", started, killed),
                              daemon=True)
    killer.start()
    started.wait()
    summary = localize_catalogue(catalogue=str(catalogue), out=str(tmp_path / "run"))
    killer.join(timeout=5)
    assert killed, "the faces worker was never seen running"
    assert summary["titles"]["clip"]["status"] == "done"
    assert summary["invocation"]["stages_failed"] == {}
    faces = json.loads((tmp_path / "run" / "run.json").read_text())["titles"]["clip"]["stages"]["faces"]
    assert faces["rows_out"] >= 1 and int(faces["worker"].rsplit(":", 1)[1]) != killed[0]
