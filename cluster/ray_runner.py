"""Run stage jobs on Ray actor pools, one pool per (stage, parameters).

Each actor is one worker of one stage: it builds the stage and calls ``setup()`` once, then runs
jobs and exports each job's frames, faces and seconds per frame as Ray metrics (cluster.metrics).
Pools grow on demand up to the stage's policy and to what the cluster's CPUs and GPUs allow
given each stage's declared resources; idle workers of other stages are retired to make room, so
a small cluster moves from stage to stage instead of deadlocking on actors that hold CPUs. Workers
are only started where they fit now, so Ray's autoscaler never sees them pending: while jobs wait
for room, the runner asks it for nodes explicitly (``request_resources``). While a job runs, the
worker of the title's next stage is started if it fits, and again when the job ends and no other
job of its stage runs (its idle worker may make room), so that starting its process and loading
its models overlap the work (a job that only passes its input on runs in the driver instead).

Every job has a time limit (``cluster.policy.job_timeout_s``: generous, scaled by the title's
duration as probed): a job still running then, e.g. a decoder stuck on a malicious file, has its
worker ended and fails its title with a message saying so; the other titles go on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import GetTimeoutError, RayTaskError

from dubline.cluster.metrics import StageMetrics, stage_work
from dubline.cluster.policy import TIMEOUT_SCALE_VAR, job_timeout_s, policy_for
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import TITLES
from dubline.stages.base import Stage, StageJob, StageStats, TitleError, run_job
from dubline.stages.sequential import SequentialRunner


class StageWorker:
    """Body of a stage actor (subclassed per stage so the dashboard shows the stage's name)."""

    def __init__(self, stage_cls: type[Stage], params: dict):
        if not ray.get_gpu_ids():
            # Ray leaves a node's GPUs visible to actors that asked for none; a stage that declares
            # no GPU (e.g. audio, whose Whisper takes CUDA when it sees it) must not use one.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._metrics = StageMetrics()
        # A setup error (e.g. unreadable weights) is raised from run(), like the sequential runner
        # does; raised here it would kill the actor, and Ray would restart it in vain.
        self._setup_error: Exception | None = None
        try:
            self._stage = stage_cls(**params)
            self._stage.setup()
        except Exception as exc:  # noqa: BLE001 - re-raised for every job
            self._setup_error = exc

    def run(self, job: StageJob) -> StageStats:
        if self._setup_error is not None:
            raise self._setup_error
        stats = run_job(self._stage, job, worker=self._name)
        try:
            self._metrics.record(stage_work(stats))
        except Exception as exc:  # noqa: BLE001 - a metrics problem must not fail a finished job
            logging.getLogger(__name__).warning("dubline metrics of %s not recorded: %s", stats.stage, exc)
        return stats


@dataclass
class _Worker:
    pool: tuple[type[Stage], str]
    actor: ray.actor.ActorHandle
    cpus: float
    gpus: float
    busy: bool = False


class RayRunner:
    """Executes ``StageJob``s on Ray; safe to call from many driver threads at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._workers: list[_Worker] = []
        self._actor_classes: dict[type[Stage], type] = {}
        self._token = uuid.uuid4().hex[:6]
        self._started = 0
        self._waiting: list[tuple[float, float]] = []  # (CPUs, GPUs) of workers waiting for room
        self._durations: dict[str, float | None] = {}  # title_id -> duration (s), see _title_duration
        self._durations_read: set[str] = set()
        self._driver = SequentialRunner()  # runs the jobs that pass through

    def run(self, job: StageJob, next_stage: type[Stage] | None = None) -> StageStats:
        """Run ``job`` on a worker of its stage; raises the stage's own exception, or TitleError
        when the job outlives its time limit (its worker is ended). A job that only passes its
        input on (``Stage.passes_through``) runs here in the driver: no worker is started for it,
        and it has neither a time limit nor worker metrics (it does no work).

        ``next_stage``: the stage that runs next on this title (default parameters); once this
        job has its worker, a worker of it is started if it fits (``prepare``), and again once the
        job has finished and no other job of its stage runs: its own worker, idle then, may make
        room (e.g. the dub audio's job ends while faces still runs, and coeffs loads its models
        on the CPU the audio job leaves).
        """
        if job.stage.passes_through(job.params):
            return self._driver.run(job)
        duration = self._title_duration(job)
        limit = job_timeout_s(job.stage.name, duration)
        worker = self._acquire(job)
        try:
            if next_stage is not None:
                self._prepare_ahead(next_stage)
            stats = ray.get(worker.actor.run.remote(job), timeout=limit)
        except RayTaskError as exc:
            # Re-raise the stage's own exception (e.g. TitleError) without Ray's wrapping.
            raise exc.cause from None
        except ray.exceptions.RayActorError:
            self._discard(worker)  # retries exhausted: the worker is gone for good
            raise
        except GetTimeoutError:
            self._discard(worker)
            ray.kill(worker.actor)  # a stuck decoder cannot be interrupted: end its process
            length = "of unknown length" if duration is None else f"of {duration:.0f} s"
            raise TitleError(job.title_id, f"the {job.stage.name} job did not finish within its time limit of "
                                           f"{limit:.0f} s (for a title {length}) and was stopped; "
                                           f"{TIMEOUT_SCALE_VAR} (--job-timeout-scale) multiplies the limit, "
                                           f"0 removes it") from None
        finally:
            self._release(worker)
        if next_stage is not None and not self._busy(worker.pool):
            self._prepare_ahead(next_stage)
        return stats

    def _prepare_ahead(self, stage: type[Stage]) -> None:
        try:
            self.prepare(stage, {})
        except Exception as exc:  # noqa: BLE001 - starting ahead is an optimisation, never a job's failure
            logging.getLogger(__name__).warning("dubline: %s worker not started ahead: %s", stage.name, exc)

    def _busy(self, pool: tuple[type[Stage], str]) -> bool:
        with self._cond:
            return any(w.busy for w in self._workers if w.pool == pool)

    def prepare(self, stage: type[Stage], params: dict[str, Any]) -> None:
        """Start a worker of ``stage`` (with ``params``) now if its pool has none and one fits
        beside the busy workers, so that starting its process and loading its models overlap the
        job running now. Idle workers of other stages are retired to make room, as for a job (a
        single title's stages follow each other, and the previous stage's worker is what is
        idle). Does nothing while jobs wait for room, when it does not fit, or when the stage's
        jobs pass through."""
        if stage.passes_through(params):
            return
        key = (stage, json.dumps(params, sort_keys=True, default=str))
        with self._cond:
            if self._waiting or any(w.pool == key for w in self._workers):
                return
            cpus, gpus = self._request(stage)
            if not self._fits(cpus, gpus):
                self._retire_idle(cpus, gpus)
            if self._fits(cpus, gpus):
                self._start(key, stage, params, cpus, gpus, policy_for(stage.name).max_retries)

    def _title_duration(self, job: StageJob) -> float | None:
        """The title's duration (s) from its ``titles`` manifest (the job's input or a row's
        ``titles_url``), remembered per title for jobs that name no such manifest (render,
        enhance); None when unknown, or for a still image (its length is the dub's)."""
        url = job.input_url if job.stage.input_schema is TITLES else next(
            (row["titles_url"] for row in job.rows if row.get("titles_url")), None)
        if url is not None and url not in self._durations_read:
            self._durations_read.add(url)
            try:
                titles = read_rows(url, TITLES)
            except Exception:  # noqa: BLE001 - unreadable here: the job itself will say why
                titles = []
            if titles:
                self._durations[job.title_id] = (None if any(t["still"] for t in titles)
                                                 else max(float(t["duration_s"]) for t in titles))
        return self._durations.get(job.title_id)

    def shutdown(self) -> None:
        self._driver.shutdown()
        with self._cond:
            for worker in self._workers:
                ray.kill(worker.actor)
            self._workers.clear()

    def _request(self, stage: type[Stage]) -> tuple[float, float]:
        """CPUs and GPUs one worker asks Ray for, capped to what the cluster has."""
        total = ray.cluster_resources()
        cpus = min(stage.resources.cpus, total.get("CPU", 1.0))
        gpus = min(stage.resources.gpus, total.get("GPU", 0.0))  # no GPU: the stage runs on CPU
        return cpus, gpus

    def _fits(self, cpus: float, gpus: float) -> bool:
        total = ray.cluster_resources()
        used_cpu = sum(w.cpus for w in self._workers)
        used_gpu = sum(w.gpus for w in self._workers)
        eps = 1e-6
        return used_cpu + cpus <= total.get("CPU", 0) + eps and used_gpu + gpus <= total.get("GPU", 0) + eps

    def _acquire(self, job: StageJob) -> _Worker:
        key = (job.stage, json.dumps(job.params, sort_keys=True, default=str))
        policy = policy_for(job.stage.name)
        waiting: tuple[float, float] | None = None
        with self._cond:
            try:
                while True:
                    pool = [w for w in self._workers if w.pool == key]
                    idle = next((w for w in pool if not w.busy), None)
                    if idle is not None:
                        idle.busy = True
                        return idle
                    if len(pool) < policy.max_workers:
                        cpus, gpus = self._request(job.stage)
                        if not self._fits(cpus, gpus):
                            self._retire_idle(cpus, gpus)
                        if self._fits(cpus, gpus):
                            worker = self._start(key, job.stage, job.params, cpus, gpus, policy.max_retries)
                            worker.busy = True
                            return worker
                        if waiting is None:
                            waiting = (cpus, gpus)
                            self._waiting.append(waiting)
                            self._ask_autoscaler()
                    self._cond.wait(timeout=1.0)
            finally:
                if waiting is not None:
                    self._waiting.remove(waiting)
                    self._ask_autoscaler()

    def _ask_autoscaler(self) -> None:
        """While workers wait for room, ask for a cluster that fits them beside the running ones;
        withdraw the request once none waits, so the autoscaler may release idle nodes again.
        (Without an autoscaler the request is recorded and has no effect.)"""
        shapes = [(w.cpus, w.gpus) for w in self._workers] + self._waiting if self._waiting else []
        request_resources(bundles=[{"CPU": c, **({"GPU": g} if g else {})} for c, g in shapes])

    def _retire_idle(self, cpus: float, gpus: float) -> None:
        for worker in [w for w in self._workers if not w.busy]:
            if self._fits(cpus, gpus):
                return
            ray.kill(worker.actor)
            self._workers.remove(worker)

    def _start(self, key, stage: type[Stage], params: dict[str, Any], cpus: float, gpus: float,
               retries: int) -> _Worker:
        actor_class = self._actor_classes.get(stage)
        if actor_class is None:
            named = type(f"{stage.__name__}Worker", (StageWorker,), {})
            actor_class = self._actor_classes[stage] = ray.remote(named)
        actor = actor_class.options(
            name=f"dubline-{stage.name}-{self._token}-{self._started}",
            num_cpus=cpus,
            num_gpus=gpus,
            memory=int(stage.resources.memory_gb * 2**30),
            max_restarts=retries,
            max_task_retries=retries,
        ).remote(stage, params)
        self._started += 1
        worker = _Worker(pool=key, actor=actor, cpus=cpus, gpus=gpus)
        self._workers.append(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            worker.busy = False
            self._cond.notify_all()

    def _discard(self, worker: _Worker) -> None:
        with self._cond:
            if worker in self._workers:
                self._workers.remove(worker)
