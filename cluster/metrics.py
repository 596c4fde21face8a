"""Custom Ray metrics of the stage actors, shown in the Ray dashboard and on each node's Prometheus
endpoint (``ray_dubline_*``), tagged by stage.

The counts are the stages' own: each stage adds the frames it processed and the face crops it
rendered, enhanced or pasted back to its job's stats (``Stage.count_work``); this module only
reads them, whatever the stage.

Seconds per frame is the job's wall time over its frames, observed once per job with frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.util.metrics import Counter, Histogram

from dubline.stages.base import FACES_RENDERED, FRAMES_PROCESSED, StageStats

#: Seconds per frame bucket bounds: from a fast encode (~2 ms) to CPU rendering of big faces.
SECONDS_PER_FRAME_BOUNDARIES = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


@dataclass(frozen=True)
class StageWork:
    """What one finished stage job did, in the units the metrics count."""

    stage: str
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_frame(self) -> float | None:
        return self.seconds / self.frames if self.frames else None


def stage_work(stats: StageStats) -> StageWork:
    """Frames processed and faces rendered by the job that returned ``stats``."""
    figures = stats.metrics
    return StageWork(stats.stage, int(figures.get(FRAMES_PROCESSED, 0)), int(figures.get(FACES_RENDERED, 0)),
                     stats.seconds)


class StageMetrics:
    """The metric objects of one stage actor (create inside the actor: Ray metrics are per process)."""

    def __init__(self) -> None:
        self.frames = Counter("dubline_frames_processed", description="Video frames processed by dubline stages.",
                              tag_keys=("stage",))
        self.faces = Counter("dubline_faces_rendered", description="Face crops (faces x frames) rendered, "
                             "enhanced or pasted back by dubline stages.", tag_keys=("stage",))
        self.seconds_per_frame = Histogram(
            "dubline_seconds_per_frame", description="Wall seconds per frame of one dubline stage job.",
            boundaries=SECONDS_PER_FRAME_BOUNDARIES, tag_keys=("stage",),
        )

    def record(self, work: StageWork) -> None:
        tags = {"stage": work.stage}
        if work.frames:  # Ray counters take positive increments only
            self.frames.inc(work.frames, tags=tags)
            self.seconds_per_frame.observe(work.seconds_per_frame, tags=tags)
        if work.faces:
            self.faces.inc(work.faces, tags=tags)
