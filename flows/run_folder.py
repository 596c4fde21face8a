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
    run.lock                                   the writer's lock, while an invocation writes (below)

A stage output's key hashes the stage name and version, its parameters and the keys or content
hashes of its inputs. A marker exists only once its manifest is fully written, so resuming after a
crash and incremental scheduled runs are the same thing: a job whose marker exists is skipped.

One writer at a time: an invocation that writes the folder holds ``run.lock`` (``run_lock``), a
small JSON object naming it (host, pid, start time, invocation id, command), and refreshes a
heartbeat beside it every ``HEARTBEAT_S`` seconds from a background thread. A second writer stops
at once with ``RunFolderBusy`` naming the holder (stopping rather than waiting: a run folder is
written for minutes to hours, and a scheduler or a person decides better what to do). A lock whose
heartbeat is older than ``STALE_AFTER_S``, or whose process has ended on this machine (same kernel
and PID namespace), was left by a killed run: the next writer takes it over (one taker at a time,
through ``run.lock.takeover``). run.json is replaced atomically on every update
(``storage.write_bytes``), so readers such as ``dubline status`` never see a part of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dubline.schemas import storage
from dubline.stages.base import Stage, StageStats

RUN_STATE_VERSION = 1
#: Stages in pipeline order, for people reading a run's state.
PIPELINE_ORDER = ("probe", "shots", "faces", "audio", "coeffs", "render", "enhance", "composite", "selfcheck",
                  "report")


def in_pipeline_order(stages: dict[str, Any]) -> list[tuple[str, Any]]:
    rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    return sorted(stages.items(), key=lambda item: rank.get(item[0], len(rank)))


def title_stage_records(title: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, record) of one title's entry in a run's state (run.json ``titles``): the title's
    own stages, then each language's."""
    return [*title["stages"].items(), *(item for language in title["languages"].values()
                                        for item in language["stages"].items())]


def wall_seconds(record: dict[str, Any]) -> float:
    """A stage record's wall time: from its first job's start to its end (a stage run in frame
    ranges keeps its jobs' seconds added up in ``seconds`` and its wall time in ``wall_seconds``)."""
    return record.get("wall_seconds") or record["seconds"] or 0.0


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


# --- one writer per run folder ------------------------------------------------------------------

#: Seconds between two heartbeats of a lock's holder.
HEARTBEAT_S = 10.0
#: Seconds without a heartbeat after which a lock counts as left by a killed run and is taken
#: over. Generous against stalls of a busy machine or a slow store; the holders' clocks must agree
#: within a fraction of it (NTP).
STALE_AFTER_S = 120.0
LOCK_NAME = "run.lock"

_log = logging.getLogger(__name__)


#: Invocation ids of the locks this process holds now (a lock record of this PID that is not one
#: of them was left behind, e.g. by a release that failed).
_LIVE: set[str] = set()


class RunFolderBusy(OSError):
    """Another invocation writes this run folder (the message names it), or this one lost its lock."""


def _process_space() -> str:
    """Where a PID means the same process: this host, and on Linux its kernel boot and PID
    namespace (containers on one host share a hostname at times, never a PID namespace)."""
    space = socket.gethostname()
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        space += f"/{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    return space


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    with contextlib.suppress(OSError, IndexError):  # Linux: a killed process not yet reaped is a zombie
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class RunLock:
    """The writer's lock of one run folder (any fsspec URL); see the module docstring.

    ``run.lock`` names the holder and is never rewritten while held; the holder's heartbeat goes to
    an object of its own (``.run.lock.<invocation>.heartbeat``), so a holder that wakes up from a
    stall after its lock was taken over cannot overwrite the new holder's lock.

    ``acquire()`` raises ``RunFolderBusy`` naming a live holder; ``release()`` removes the lock if it
    is still this one's. ``check()`` raises ``RunFolderBusy`` once the heartbeat found the lock taken
    over by another writer (after this process stalled for longer than ``stale_after_s``).
    """

    def __init__(self, url: str, heartbeat_s: float | None = None, stale_after_s: float | None = None):
        self.folder = url.rstrip("/")
        self.url = storage.join(self.folder, LOCK_NAME)
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.stale_after_s = STALE_AFTER_S if stale_after_s is None else stale_after_s
        self.owner = {
            "invocation": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_space": _process_space(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]]) if sys.argv and sys.argv[0] else "python",
            "started": _now(),
            "stale_after_s": self.stale_after_s,
        }
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the lock and heartbeat objects ------------------------------------------------------
    def _beat_url(self, invocation: str) -> str:
        return storage.join(self.folder, f".{LOCK_NAME}.{invocation}.heartbeat")

    @staticmethod
    def _stamp() -> dict[str, Any]:
        now = time.time()
        return {"heartbeat": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="seconds"),
                "heartbeat_unix": now}

    def _record(self) -> bytes:
        return json.dumps({**self.owner, **self._stamp()}, indent=1).encode()

    @staticmethod
    def _read(url: str) -> tuple[bytes, dict[str, Any] | None] | None:
        """(raw bytes, parsed record or None when unreadable) of a lock object, None if absent."""
        try:
            raw = storage.read_bytes(url)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return raw, None
        return raw, record if isinstance(record, dict) else None

    def _silence(self, holder: dict[str, Any]) -> float:
        """Seconds since ``holder``'s last heartbeat (its lock's creation before the first one)."""
        last = float(holder["heartbeat_unix"])
        beat = self._read(self._beat_url(str(holder.get("invocation"))))
        if beat is not None and beat[1] is not None:
            last = max(last, float(beat[1].get("heartbeat_unix", last)))
        return time.time() - last

    def _stale(self, holder: dict[str, Any] | None) -> str | None:
        """Why ``holder``'s lock may be taken over, or None while it is alive."""
        if holder is None:
            return "the lock object is not a lock record"
        try:
            if holder.get("process_space") == self.owner["process_space"]:
                if int(holder["pid"]) == os.getpid() and holder.get("invocation") not in _LIVE:
                    return "it was left by this process"
                if not _pid_alive(int(holder["pid"])):
                    return f"its process {holder['pid']} has ended"
            silence, limit = self._silence(holder), float(holder.get("stale_after_s", self.stale_after_s))
        except (KeyError, TypeError, ValueError):
            return "the lock record is incomplete"
        return f"its last heartbeat is {_age(silence)} old (limit {_age(limit)})" if silence > limit else None

    def _holder(self, holder: dict[str, Any]) -> str:
        return (f"{holder.get('command', '?')!r}, pid {holder.get('pid')} on {holder.get('host')}, started "
                f"{holder.get('started')}, invocation {holder.get('invocation')}, last heartbeat "
                f"{_age(self._silence(holder))} ago")

    def _busy(self, holder: dict[str, Any]) -> str:
        limit = _age(float(holder.get("stale_after_s", self.stale_after_s)))
        return (f"{self.folder} is being written by another dubline invocation: {self._holder(holder)}. Wait for "
                f"it to finish (or stop it); a lock left by a killed run is taken over automatically once its "
                f"heartbeat is {limit} old, or at once on the same machine when its process has ended")

    # --- acquire, heartbeat, release ---------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, or take over a stale one; raises RunFolderBusy naming a live holder."""
        _LIVE.add(self.owner["invocation"])  # before the lock exists: no thread may take it for a leftover
        try:
            self._take()
        except BaseException:
            _LIVE.discard(self.owner["invocation"])
            raise
        self._thread = threading.Thread(target=self._beat, name=f"dubline-lock-{self.owner['invocation'][:8]}",
                                        daemon=True)
        self._thread.start()

    def _take(self) -> None:
        for _ in range(50):  # only contention with other takers loops
            if storage.create_exclusive(self.url, self._record()):
                return
            found = self._read(self.url)
            if found is None:
                continue  # released meanwhile
            raw, holder = found
            reason = self._stale(holder)
            if reason is None:
                raise RunFolderBusy(self._busy(holder))
            if self._take_over(raw, holder):
                _log.warning("took over the lock of %s: %s (%s)", self.folder, reason,
                             "unreadable" if holder is None else f"pid {holder.get('pid')} on {holder.get('host')}")
                return
            time.sleep(0.1)
        raise RunFolderBusy(f"{self.folder}: could not take its lock (other writers kept taking it)")

    def _take_over(self, stale_raw: bytes, stale: dict[str, Any] | None) -> bool:
        """Replace the stale lock whose content is ``stale_raw`` by this one; False when another
        writer got there first. Takers go one at a time through a guard object."""
        guard = self.url + ".takeover"
        if not storage.create_exclusive(guard, self._record()):
            found = self._read(guard)
            if found is not None and self._stale(found[1]) is not None:
                storage.remove(guard)  # left by a taker that was killed in the middle
            return False
        try:
            current = self._read(self.url)
            if current is not None and current[0] != stale_raw:
                return False  # changed since it was judged stale: judge again
            storage.remove(self.url)
            if stale is not None:
                storage.remove(self._beat_url(str(stale.get("invocation"))))
            return storage.create_exclusive(self.url, self._record())
        finally:
            storage.remove(guard)

    def _beat(self) -> None:
        beat_url = self._beat_url(self.owner["invocation"])
        while not self._stop.wait(self.heartbeat_s):
            try:
                found = self._read(self.url)
                holder = found[1] if found else None
                if holder is None or holder.get("invocation") != self.owner["invocation"]:
                    self.lost = (f"{self.folder}: this invocation lost its lock (its heartbeat stalled) to "
                                 + (self._holder(holder) if holder else "nobody (the lock was removed)"))
                    _log.error("%s", self.lost)
                    storage.remove(beat_url)
                    return
                storage.write_bytes(beat_url, json.dumps(self._stamp()).encode())
            except Exception as exc:  # noqa: BLE001 - a store hiccup; the next beat tries again
                _log.warning("heartbeat of %s failed: %s", self.url, exc)

    def check(self) -> None:
        if self.lost:
            raise RunFolderBusy(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        found = self._read(self.url)
        if found and found[1] and found[1].get("invocation") == self.owner["invocation"]:
            storage.remove(self.url)
        storage.remove(self._beat_url(self.owner["invocation"]))
        _LIVE.discard(self.owner["invocation"])


_HELD: dict[str, tuple[RunLock, int, int]] = {}  # key -> (lock, holding thread, depth)
_HELD_LOCK = threading.Lock()


def _lock_key(url: str) -> str:
    fs, path = storage.filesystem(url.rstrip("/"))
    return fs.unstrip_protocol(path.rstrip("/"))


def held_lock(url: str) -> RunLock | None:
    """The lock this process holds on the run folder ``url``, if any."""
    held = _HELD.get(_lock_key(url))
    return held[0] if held else None


@contextlib.contextmanager
def run_lock(url: str) -> Iterator[RunLock]:
    """Hold the writer's lock of the run folder ``url`` for the ``with`` block.

    Re-entrant in the holding thread (``dubline dub`` takes it before writing the catalogue it
    makes in the run folder; the flow it then runs in that thread takes it again). Raises
    ``RunFolderBusy`` when another invocation, or another thread of this process, writes there.
    """
    key = _lock_key(url)
    me = threading.get_ident()
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None and held[1] != me:
            raise RunFolderBusy(f"{url.rstrip('/')} is already being written by another thread of this process")
        if held is None:
            lock = RunLock(url)
            lock.acquire()
            held = (lock, me, 0)
        _HELD[key] = (held[0], me, held[2] + 1)
    try:
        yield held[0]
    finally:
        with _HELD_LOCK:
            lock, _, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (lock, me, depth - 1)
            else:
                del _HELD[key]
                lock.release()


class RunFolder:
    """A run folder at any fsspec URL. Thread-safe: many Prefect tasks update it at once."""

    def __init__(self, url: str):
        # A local folder by its absolute path: the outputs' URLs enter stage keys, and "runs/x"
        # and "./runs/x" are one run folder.
        self.url = os.path.abspath(url) if storage.is_local(url) and "://" not in url else url.rstrip("/")
        self._lock = threading.Lock()
        self.state = self._load_state()
        self._executed: Counter[str] = Counter()
        self._skipped: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._log_url: str | None = None

    # --- stage outputs -------------------------------------------------------------------------
    def manifest_url(self, stage: str, title_id: str, key: str) -> str:
        return storage.join(self.url, "manifests", stage, title_id, f"{key}.parquet")

    def _marker_url(self, stage: str, title_id: str, key: str) -> str:
        return storage.join(self.url, "manifests", stage, title_id, f"{key}.done")

    def output_url(self, title_id: str, language: str) -> str:
        return storage.join(self.url, "outputs", title_id, f"{title_id}.{language}.mp4")

    def finished(self, stage: str, title_id: str, key: str) -> dict[str, Any] | None:
        """Stats of a completed stage output, or None when it must be (re)computed: its marker or
        manifest is missing, or a file it published has changed since (another job overwrote it)."""
        marker = self._marker_url(stage, title_id, key)
        if not storage.exists(marker) or not storage.exists(self.manifest_url(stage, title_id, key)):
            return None
        record = json.loads(storage.read_text(marker))
        for url, token in record.get("published", {}).items():
            if not storage.exists(url) or storage.stat_token(url) != token:
                return None
        return record

    def mark_finished(self, stage: str, title_id: str, key: str, stats: StageStats,
                      published: list[str] = ()) -> None:
        """Write the completion marker: the job's stats and the change token of each file it
        ``published`` (checked by ``finished``)."""
        record = {**stats.to_dict(), "key": key, "finished": _now(),
                  "published": {url: storage.stat_token(url) for url in published}}
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
        lock = held_lock(self.url)
        if lock is not None:
            lock.check()  # a writer that lost its lock stops writing
        self.state["updated"] = _now()
        storage.write_text(self.state_url, json.dumps(self.state, indent=1, sort_keys=True))

    def begin(self, catalogue_url: str, parameters: dict[str, Any], catalogue_errors: list[str]) -> None:
        started = _now()
        with self._lock:
            self.state.update(catalogue=catalogue_url, parameters=parameters, catalogue_errors=catalogue_errors)
            lock = held_lock(self.url)
            writer = {k: lock.owner[k] for k in ("invocation", "host", "pid")} if lock else None
            self.state["invocations"].append({"started": started, "finished": None, "writer": writer})
            self._log_url = storage.join(self.url, "logs", started.replace(":", "") + ".log")
            self.state["invocations"][-1]["log"] = self._log_url
            self._save()
        self.log(f"run of {catalogue_url} into {self.url}")
        for error in catalogue_errors:
            self.log(f"catalogue {error}")

    def log(self, message: str) -> None:
        """Append a line to this invocation's log (``storage.append_text``: each line is on disk
        once this returns, so the log survives a crash). Lines before ``begin`` are not kept."""
        with self._lock:
            if self._log_url:
                storage.append_text(self._log_url, f"{_now()} {message}\n")

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
