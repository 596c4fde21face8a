"""Scheduling policy, kept apart from stage logic: how many workers a stage may use, retries, and
how long one job may run."""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Environment variable that multiplies every job's time limit (``--job-timeout-scale``); 0: none.
TIMEOUT_SCALE_VAR = "DUBLINE_JOB_TIMEOUT_SCALE"
#: Title length assumed for a job whose title's length the runner cannot read (seconds): 3 hours.
UNKNOWN_DURATION_S = 3 * 3600.0


@dataclass(frozen=True)
class StagePolicy:
    max_workers: int = 2
    #: Times a dead worker is restarted and its in-flight job retried before the job fails.
    max_retries: int = 3
    #: A job's time limit is ``timeout_base_s + timeout_per_media_s * title duration`` (seconds).
    #: The base covers starting a worker and loading models; the rest is ~10x the slowest rate
    #: measured on a 2-core CPU machine (e.g. faces 57 frames/s, render 20 frames/s at 700 px).
    timeout_base_s: float = 1800.0
    timeout_per_media_s: float = 60.0
    #: Seconds of title per job for a stage that runs in frame ranges (``flows.tasks``), so
    #: that one long title uses many workers; None: one job per title.
    range_s: float | None = None


DEFAULT_POLICY = StagePolicy()
POLICIES: dict[str, StagePolicy] = {
    # probe demuxes and hashes the source before any duration is known: its base alone bounds it
    "probe": StagePolicy(max_workers=4, timeout_per_media_s=0.0),
    "shots": StagePolicy(max_workers=4),
    # ranges of whole 30 s track segments (FacesJob.segment_frames), so a range links the
    # tracks one job would and cuts their crops; a join job numbers the tracks
    "faces": StagePolicy(max_workers=8, range_s=30.0),
    # ~15 s per job: a minute of video keeps four workers busy; planning a range cost 0.34 s of a
    # 10 s range (844², 2-core VM)
    "render": StagePolicy(max_workers=8, range_s=15.0),
    # GFPGAN without a GPU: ~7 s per 512 px crop, 175 s per second of one face at 25 fps
    "enhance": StagePolicy(max_workers=1, timeout_per_media_s=600.0),
    # segments of ~15 s, each from the keyframe before it, joined without a second encode
    "composite": StagePolicy(max_workers=8, range_s=15.0),
    # the face mesh on the output's dubbed faces (a sample of them on a long title), ~30 s per job
    "selfcheck": StagePolicy(max_workers=8, range_s=30.0),
}


def policy_for(stage_name: str) -> StagePolicy:
    return POLICIES.get(stage_name, DEFAULT_POLICY)


def timeout_scale() -> float:
    """The multiplier of every job's time limit, from ``$DUBLINE_JOB_TIMEOUT_SCALE`` (default 1).

    Raises ValueError for a value that is not a number >= 0.
    """
    text = os.environ.get(TIMEOUT_SCALE_VAR, "1")
    try:
        scale = float(text)
    except ValueError:
        scale = -1.0
    if not scale >= 0:  # also NaN
        raise ValueError(f"{TIMEOUT_SCALE_VAR}={text!r} is not a number >= 0 (0: no time limit)")
    return scale


def job_timeout_s(stage_name: str, duration_s: float | None) -> float | None:
    """Seconds one job of ``stage_name`` may run for a title of ``duration_s`` seconds (None:
    unknown, taken as ``UNKNOWN_DURATION_S``); None when time limits are off (scale 0)."""
    scale = timeout_scale()
    if scale == 0:
        return None
    policy = policy_for(stage_name)
    duration = UNKNOWN_DURATION_S if duration_s is None else max(0.0, duration_s)
    return scale * (policy.timeout_base_s + policy.timeout_per_media_s * duration)


def frame_ranges(stage_name: str, frame_count: int, fps: float, align: int = 1) -> list[tuple[int, int]]:
    """Title frames [start, end) of the jobs ``stage_name`` runs one title of ``frame_count`` frames
    at ``fps`` as: equal ranges of about the policy's ``range_s`` seconds (the last range takes
    the remainder), each starting on a multiple of ``align`` frames; one range when the policy
    has none or the title is not longer."""
    range_s = policy_for(stage_name).range_s
    count = 1 if not range_s or fps <= 0 else max(1, round(frame_count / (range_s * fps)))
    inner = [round(i * frame_count / align / count) * align for i in range(1, count)]  # whole units, spread evenly
    edges = [0, *sorted({e for e in inner if 0 < e < frame_count}), frame_count]
    return list(zip(edges[:-1], edges[1:]))
