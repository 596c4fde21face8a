"""Custom Ray metrics of the stage actors, shown in the Ray dashboard and on each node's Prometheus
endpoint (``ray_dubline_*``), tagged by stage.

Where the counts come from, per finished job:

============  =====================================================  ==========================================
stage         frames processed                                       faces rendered (face crops: faces × frames)
============  =====================================================  ==========================================
faces         ``frames`` it reports (frames decoded and analysed)
coeffs        ``frames_generated`` it reports (avatar mode)
render        frames with a rendered face (its output manifest)      rendered crops (its output manifest)
enhance                                                              ``crops_enhanced`` it reports
composite     ``frame_count`` of the videos it encoded               ``faces_dubbed``: crops pasted back
============  =====================================================  ==========================================

Seconds per frame is the job's wall time over its frames, observed once per job with frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.util.metrics import Counter, Histogram

from schemas.manifest_io import read_manifest
from schemas.manifests import OUTPUTS, RENDERED_TRACKS
from stages.base import StageStats

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


def stage_work(stats: StageStats, output_url: str) -> StageWork:
    """Frames processed and faces rendered by the job that returned ``stats`` and wrote ``output_url``."""
    figures = stats.metrics
    frames = faces = 0
    if stats.stage == "faces":
        frames = int(figures.get("frames", 0))
    elif stats.stage == "coeffs":
        frames = int(figures.get("frames_generated", 0))
    elif stats.stage == "render" and stats.rows_out:
        tracks = read_manifest(output_url, RENDERED_TRACKS).column("frame_index").to_pylist()
        frames = len({index for track in tracks for index in track})
        faces = sum(len(track) for track in tracks)
    elif stats.stage == "enhance":
        faces = int(figures.get("crops_enhanced", 0))
    elif stats.stage == "composite" and stats.rows_out:
        videos = read_manifest(output_url, OUTPUTS)
        frames = sum(videos.column("frame_count").to_pylist())
        faces = sum(videos.column("faces_dubbed").to_pylist())
    return StageWork(stats.stage, frames, faces, stats.seconds)


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
