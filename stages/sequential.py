"""Run stages in this process, one job at a time: for tests, debugging and small jobs."""

from __future__ import annotations

import json
import os
import threading

from dubline.stages.base import Stage, StageJob, StageStats, run_job


class SequentialRunner:
    """Executes jobs in-process; each (stage, parameters) is set up once and reused."""

    def __init__(self) -> None:
        self._stages: dict[tuple[type[Stage], str], Stage] = {}
        self._lock = threading.Lock()  # stages are not assumed thread-safe

    def run(self, job: StageJob, next_stage: type[Stage] | None = None) -> StageStats:
        """Run ``job`` here (``next_stage`` is for runners that can start its worker ahead)."""
        with self._lock:
            key = (job.stage, json.dumps(job.params, sort_keys=True, default=str))
            stage = self._stages.get(key)
            if stage is None:
                stage = job.stage(**job.params)
                stage.setup()
                self._stages[key] = stage
            return run_job(stage, job, worker=f"local:{os.getpid()}")

    def shutdown(self) -> None:
        self._stages.clear()
