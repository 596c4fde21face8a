"""Scheduling policy, kept apart from stage logic: how many workers a stage may use, retries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StagePolicy:
    max_workers: int = 2
    #: Times a dead worker is restarted and its in-flight job retried before the job fails.
    max_retries: int = 3


DEFAULT_POLICY = StagePolicy()
POLICIES: dict[str, StagePolicy] = {
    "probe": StagePolicy(max_workers=4),
    "shots": StagePolicy(max_workers=4),
    "faces": StagePolicy(max_workers=2),
    "render": StagePolicy(max_workers=2),
    "enhance": StagePolicy(max_workers=1),
    "composite": StagePolicy(max_workers=4),
}


def policy_for(stage_name: str) -> StagePolicy:
    return POLICIES.get(stage_name, DEFAULT_POLICY)
