"""The run folder: where a run's manifests, outputs, completion markers and state live.

Layout under the output URL::

    run.json                                   parameters, per-title status (per language: "done",
                                               "needs_review" with its review_reason, or "failed"),
                                               one record per invocation
    catalogue.parquet                          the validated catalogue
    manifests/<stage>/<title_id>/<key>.parquet stage output, keyed by a content hash
    manifests/<stage>/<title_id>/<key>.done    completion marker (stage stats), written last
    outputs/<title_id>/<title_id>.<lang>.mp4   the dubbed videos
    logs/<started>.log                         what one invocation did, line by line

A stage output's key hashes the stage name and version, its parameters and the keys or content
hashes of its inputs. A marker exists only once its manifest is fully written, so resuming after a
crash and incremental scheduled runs are the same thing: a job whose marker exists is skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import Counter
from typing import Any

from schemas import storage
from stages.base import Stage, StageStats

RUN_STATE_VERSION = 1
#: Stages in pipeline order, for people reading a run's state.
PIPELINE_ORDER = ("probe", "shots", "faces", "audio", "coeffs", "render", "enhance", "composite", "report")


def in_pipeline_order(stages: dict[str, Any]) -> list[tuple[str, Any]]:
    rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    return sorted(stages.items(), key=lambda item: rank.get(item[0], len(rank)))


def stage_key(stage: type[Stage], params: dict[str, Any], inputs: dict[str, Any]) -> str:
    """Content hash identifying a stage's output: stage, version, parameters and inputs."""
    blob = json.dumps(
        {"stage": stage.name, "version": stage.version, "params": params, "inputs": inputs},
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """A run folder at any fsspec URL. Thread-safe: many Prefect tasks update it at once."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._lock = threading.Lock()
        self.state = self._load_state()
        self._executed: Counter[str] = Counter()
        self._skipped: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._log_lines: list[str] = []
        self._log_url: str | None = None

    # --- stage outputs -------------------------------------------------------------------------
    def manifest_url(self, stage: str, title_id: str, key: str) -> str:
        return storage.join(self.url, "manifests", stage, title_id, f"{key}.parquet")

    def _marker_url(self, stage: str, title_id: str, key: str) -> str:
        return storage.join(self.url, "manifests", stage, title_id, f"{key}.done")

    def output_url(self, title_id: str, language: str) -> str:
        return storage.join(self.url, "outputs", title_id, f"{title_id}.{language}.mp4")

    def finished(self, stage: str, title_id: str, key: str) -> dict[str, Any] | None:
        """Stats of a completed stage output, or None when it must be (re)computed."""
        marker = self._marker_url(stage, title_id, key)
        if not storage.exists(marker) or not storage.exists(self.manifest_url(stage, title_id, key)):
            return None
        return json.loads(storage.read_text(marker))

    def mark_finished(self, stage: str, title_id: str, key: str, stats: StageStats) -> None:
        record = {**stats.to_dict(), "key": key, "finished": _now()}
        storage.write_text(self._marker_url(stage, title_id, key), json.dumps(record, indent=1))

    def count(self, stage: str, outcome: str) -> None:
        """Count one stage job of this invocation as "executed", "skipped" (reused) or "failed"."""
        counters = {"executed": self._executed, "skipped": self._skipped, "failed": self._failed}
        with self._lock:
            counters[outcome][stage] += 1

    # --- run.json ------------------------------------------------------------------------------
    @property
    def state_url(self) -> str:
        return storage.join(self.url, "run.json")

    def _load_state(self) -> dict[str, Any]:
        if storage.exists(self.state_url):
            state = json.loads(storage.read_text(self.state_url))
            if state.get("run_state_version") != RUN_STATE_VERSION:
                raise ValueError(
                    f"{self.state_url} was written by another dubline (run state version "
                    f"{state.get('run_state_version')}, expected {RUN_STATE_VERSION}); use a new output folder"
                )
            return state
        return {"run_state_version": RUN_STATE_VERSION, "created": _now(), "invocations": [], "titles": {}}

    def _save(self) -> None:
        self.state["updated"] = _now()
        storage.write_text(self.state_url, json.dumps(self.state, indent=1, sort_keys=True))

    def begin(self, catalogue_url: str, parameters: dict[str, Any], catalogue_errors: list[str]) -> None:
        started = _now()
        with self._lock:
            self.state.update(catalogue=catalogue_url, parameters=parameters, catalogue_errors=catalogue_errors)
            self.state["invocations"].append({"started": started, "finished": None})
            self._log_url = storage.join(self.url, "logs", started.replace(":", "") + ".log")
            self.state["invocations"][-1]["log"] = self._log_url
            self._save()
        self.log(f"run of {catalogue_url} into {self.url}")
        for error in catalogue_errors:
            self.log(f"catalogue {error}")

    def log(self, message: str) -> None:
        """Append a line to this invocation's log (rewritten whole, so it survives a crash)."""
        with self._lock:
            self._log_lines.append(f"{_now()} {message}")
            if self._log_url:
                storage.write_text(self._log_url, "\n".join(self._log_lines) + "\n")

    def update_title(self, title_id: str, **fields: Any) -> None:
        with self._lock:
            title = self.state["titles"].setdefault(title_id, {"stages": {}, "languages": {}})
            title.update(fields)
            self._save()

    def update_stage(self, title_id: str, language: str | None, stage: str, record: dict[str, Any]) -> None:
        with self._lock:
            title = self.state["titles"].setdefault(title_id, {"stages": {}, "languages": {}})
            target = title if language is None else title["languages"].setdefault(language, {"stages": {}})
            target.setdefault("stages", {})[stage] = record
            self._save()

    def update_language(self, title_id: str, language: str, **fields: Any) -> None:
        with self._lock:
            title = self.state["titles"].setdefault(title_id, {"stages": {}, "languages": {}})
            title["languages"].setdefault(language, {"stages": {}}).update(fields)
            self._save()

    def finish(self) -> dict[str, Any]:
        """Close this invocation's record; returns it."""
        with self._lock:
            titles = self.state["titles"].values()
            record = self.state["invocations"][-1]
            record.update(
                finished=_now(),
                stages_executed=dict(self._executed),
                stages_skipped=dict(self._skipped),
                stages_failed=dict(self._failed),
                titles_done=sum(t.get("status") == "done" for t in titles),
                titles_failed=sum(t.get("status") in ("failed", "partial") for t in titles),
                dubs_needing_review=sum(lang.get("status") == "needs_review"
                                        for t in titles for lang in t.get("languages", {}).values()),
            )
            self._save()
        self.log(f"finished: executed {record['stages_executed']}, reused {record['stages_skipped']}, failed {record['stages_failed']}")
        return record
