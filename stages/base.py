"""The stage contract every dubline stage follows, and the unit of work runners execute.

A stage declares its name, version, resources and batch size; loads models in ``setup()`` (once
per worker, never in ``__init__``); and maps input rows to output rows in ``process_batch``. It
knows nothing of Ray or Prefect: ``stages.sequential`` runs it in-process, ``cluster`` on Ray.
"""

from __future__ import annotations

import abc
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError

from dubline.schemas.manifest_io import read_rows, write_rows
from dubline.schemas.manifests import ManifestSchema
from dubline.stages.job_rows import JobRow


class TitleError(Exception):
    """Bad input for one title. The message names the title and the problem."""

    def __init__(self, title_id: str, problem: str):
        super().__init__(f"{title_id}: {problem}")
        self.title_id = title_id
        self.problem = problem

    def __reduce__(self):  # keep both fields when Ray ships the exception back to the driver
        return (TitleError, (self.title_id, self.problem))


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs. Fractions are allowed (several workers per core/GPU)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 1.0


#: The work figures every stage that touches video adds to through ``Stage.count_work``: the same
#: units for all stages, counted by the cluster's metrics (``dubline_frames_processed``,
#: ``dubline_faces_rendered`` in the Ray dashboard) without knowing any stage.
FRAMES_PROCESSED, FACES_RENDERED = "frames_processed", "faces_rendered"


class Stage(abc.ABC):
    """A step of the pipeline over manifest rows."""

    name: ClassVar[str]
    #: Bump when the output for the same input and parameters changes: it is part of the output key.
    version: ClassVar[str]
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 1
    input_schema: ClassVar[ManifestSchema | None] = None
    #: The typed row of a job given inline rows (``stages.job_rows``): validated by ``run_job``,
    #: and what the output's cache key is derived from. None for a stage that reads a manifest.
    job_row: ClassVar[type[JobRow] | None] = None
    #: Parameters naming a file (e.g. model weights) that enter the output key by content.
    param_files: ClassVar[tuple[str, ...]] = ()
    #: Output columns holding URLs of files the stage writes outside the run's keyed manifests, at
    #: places a later job with another key may overwrite (the video, subtitles, report): a reused
    #: output is checked against them.
    published: ClassVar[tuple[str, ...]] = ()
    output_schema: ClassVar[ManifestSchema]
    #: Parameter names and defaults; a stage is constructed with a subset of these.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Names of figures (``report``) that count things, so add up over a title's frame ranges
    #: (``join_metrics``); the work counts always do.
    counted_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameters {sorted(unknown)}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self._dropped: Counter[str] = Counter()
        self._metrics: dict[str, float] = {}

    @classmethod
    def passes_through(cls, params: dict[str, Any]) -> bool:
        """Whether a job with these parameters only passes its input on (e.g. enhance without
        weights): a runner may run it where it is instead of starting a worker for it."""
        return False

    def setup(self) -> None:
        """Load models and other per-worker state. Called once per worker before any batch."""

    @abc.abstractmethod
    def process_batch(self, rows: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        """Map input rows to output rows of ``output_schema``: a list, or a generator where holding
        them all would cost memory that grows with the title (they are written as they come)."""

    def drop(self, reason: str, count: int = 1) -> None:
        """Count items this stage left out, by reason (reported in the stage stats)."""
        self._dropped[reason] += count

    def take_dropped(self) -> dict[str, int]:
        dropped, self._dropped = dict(self._dropped), Counter()
        return dropped

    def report(self, **metrics: float) -> None:
        """Record figures of the current job (e.g. jitter, fps) for the stage stats."""
        self._metrics.update({name: float(value) for name, value in metrics.items()})

    def count_work(self, frames: int = 0, faces: int = 0) -> None:
        """Add to the current job's work: video ``frames`` processed (decoded and analysed,
        generated, encoded) and ``faces``, face crops (faces × frames) rendered, enhanced or
        pasted back. Kept in the stage stats as ``FRAMES_PROCESSED`` and ``FACES_RENDERED``."""
        for name, value in ((FRAMES_PROCESSED, frames), (FACES_RENDERED, faces)):
            if value:
                self._metrics[name] = self._metrics.get(name, 0.0) + float(value)

    def take_metrics(self) -> dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics


def join_metrics(parts: list[dict[str, float]], counted: tuple[str, ...] = ()) -> dict[str, float]:
    """One job's figures from those of the jobs over its title's frame ranges: counts (the work
    counts and ``counted``) add up, ``*_max`` and ``*_min`` figures take the extreme, the others
    are means weighted by each range's face crops (``FACES_RENDERED``; equal weights without)."""
    weights = {id(p): p.get(FACES_RENDERED, 1.0) for p in parts}
    joined: dict[str, float] = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        having = [p for p in parts if name in p]
        values = [p[name] for p in having]
        if name in (FRAMES_PROCESSED, FACES_RENDERED, *counted):
            joined[name] = float(sum(values))
        elif name.endswith("_max"):
            joined[name] = float(max(values))
        elif name.endswith("_min"):
            joined[name] = float(min(values))
        else:
            total = sum(weights[id(p)] for p in having)
            joined[name] = (float(sum(weights[id(p)] * p[name] for p in having) / total) if total
                            else float(sum(values) / len(values)))
    return joined


def join_track_rows(parts: list[list[dict[str, Any]]], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """One job's per-track rows from those of the jobs over its title's frame ranges (in range
    order): each track's list ``columns`` concatenated, the other fields from its first range,
    tracks sorted by ``track_id`` (as one job writes them)."""
    joined: dict[int, dict[str, Any]] = {}
    for row in (row for part in parts for row in part):
        track = joined.setdefault(row["track_id"], {**row, **{name: [] for name in columns}})
        for name in columns:  # the lists are the join's own (made above): extended in place
            track[name].extend(row[name])
    return sorted(joined.values(), key=lambda row: row["track_id"])


@dataclass(frozen=True)
class StageJob:
    """One stage over one title's rows: inline ``rows`` or an ``input_url`` manifest."""

    stage: type[Stage]
    params: dict[str, Any]
    output_url: str
    title_id: str
    rows: tuple[dict[str, Any], ...] = ()
    input_url: str | None = None


@dataclass
class StageStats:
    stage: str
    title_id: str
    rows_in: int
    rows_out: int
    seconds: float
    dropped: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_job(stage: Stage, job: StageJob, worker: str = "") -> StageStats:
    """Run ``job`` on an already set-up ``stage``: read input, process in batches, write output.

    Shared by every runner so that the sequential and Ray runners write identical manifests.
    """
    started = time.perf_counter()
    stage.take_dropped(), stage.take_metrics()  # nothing left over from a job of this worker that failed
    rows = list(job.rows)
    if stage.job_row is not None:  # only what the row type declares reaches the stage
        try:
            rows = [stage.job_row.model_validate(row).model_dump() for row in rows]
        except ValidationError as exc:
            raise ValueError(f"{stage.name} {job.title_id}: bad job row: {exc}") from exc
    if job.input_url is not None:
        assert stage.input_schema is not None, f"{stage.name} takes no input manifest"
        rows = read_rows(job.input_url, stage.input_schema)
    size = max(1, stage.batch_size)
    # Written as the stage gives them: a stage that yields its rows one at a time never holds
    # them all (the faces join of a long title).
    rows_out = write_rows((out for start in range(0, len(rows), size) for out in stage.process_batch(rows[start : start + size])),
                          stage.output_schema, job.output_url)
    return StageStats(
        stage=stage.name,
        title_id=job.title_id,
        rows_in=len(rows),
        rows_out=rows_out,
        seconds=round(time.perf_counter() - started, 4),
        dropped=stage.take_dropped(),
        metrics=stage.take_metrics(),
        worker=worker,
    )
