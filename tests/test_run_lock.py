"""One writer per run folder: a second writer is refused with the holder named (the flow and the
CLI too), racing writers get the lock exactly once, a SIGKILLed or stalled holder's lock is taken
over, and run.json is replaced atomically (a reader never sees a part of it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from dubline.flows.run_folder import (
    LOCK_NAME,
    RunFolder,
    RunFolderBusy,
    RunLock,
    held_lock,
    run_lock,
)
from dubline.schemas import storage

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


# --- a holder in another process: this file run as a script ----------------------------------


def _hold(url: str, heartbeat_s: float, stale_after_s: float) -> None:
    """Hold the lock of ``url`` and keep writing run.json until stdin closes; print LOST and exit 3
    when a write is refused because the lock was taken over."""
    from dubline.flows import run_folder

    run_folder.HEARTBEAT_S, run_folder.STALE_AFTER_S = heartbeat_s, stale_after_s
    with run_lock(url) as lock:
        print(f"HELD {lock.owner['invocation']}", flush=True)
        stdin_closed = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), stdin_closed.set()), daemon=True).start()
        run, tick = RunFolder(url), 0
        while not stdin_closed.wait(0.05):
            tick += 1
            try:
                run.update_title("t", tick=tick)
            except RunFolderBusy as exc:
                print(f"LOST {exc}", flush=True)
                sys.exit(3)


def _write_run_json(url: str, seconds: float) -> None:
    """Update run.json as fast as possible for ``seconds``, each time with a different size."""
    run = RunFolder(url)
    deadline, i = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        i += 1
        run.update_title("t", payload="x" * (20_000 + 7919 * (i % 50)), version=i)
    print(f"WROTE {i}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        _hold(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        _write_run_json(sys.argv[2], float(sys.argv[3]))
    sys.exit(0)


# --- helpers ------------------------------------------------------------------------------------


class Holder:
    """A process holding a run folder's lock."""

    def __init__(self, url: str, heartbeat_s: float = 10.0, stale_after_s: float = 120.0):
        self.process = subprocess.Popen([sys.executable, __file__, "hold", url, str(heartbeat_s), str(stale_after_s)],
                                        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("HELD "), line
        self.invocation = line.split()[1]

    def finish(self) -> tuple[int, str]:
        out, _ = self.process.communicate(input="", timeout=30)
        return self.process.returncode, out


def lock_record(folder: Path) -> dict:
    return json.loads((folder / LOCK_NAME).read_text())


# --- two writers --------------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    holder = Holder(str(tmp_path))
    try:
        record = lock_record(tmp_path)
        assert record["pid"] == holder.process.pid and record["invocation"] == holder.invocation
        assert record["host"] == socket.gethostname() and record["started"] and record["heartbeat_unix"] <= time.time()
        with pytest.raises(RunFolderBusy) as refused, run_lock(str(tmp_path)):
            pytest.fail("two writers")
        message = str(refused.value)
        assert f"pid {holder.process.pid} on {socket.gethostname()}" in message and holder.invocation in message
        assert "is being written by another dubline invocation" in message
        assert lock_record(tmp_path)["invocation"] == holder.invocation  # the refused writer changed nothing
    finally:
        code, _ = holder.finish()
    assert code == 0 and not (tmp_path / LOCK_NAME).exists()  # released on exit
    with run_lock(str(tmp_path)) as lock:  # free again
        assert lock_record(tmp_path)["invocation"] == lock.owner["invocation"] and held_lock(str(tmp_path)) is lock
    assert held_lock(str(tmp_path)) is None and not (tmp_path / LOCK_NAME).exists()


def test_the_flow_and_the_cli_are_refused_while_another_invocation_writes(media, tmp_path, prefect_harness):
    from dubline.flows.cli import main
    from dubline.flows.localize import localize_catalogue

    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(json.dumps([{"title_id": "t", "video": str(media["one_shot"]), "language": "fr",
                                      "dub_audio": str(media["dub_fr"])}]))
    out, run_dir = tmp_path / "run", tmp_path / "out.dubline"
    holders = [Holder(str(out)), Holder(str(run_dir))]
    try:
        with pytest.raises(RunFolderBusy, match=f"pid {holders[0].process.pid} on "):
            localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
        # It wrote nothing: no catalogue, no manifests, no invocation record (the holder's run.json only)
        assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {"run.json", LOCK_NAME}
        assert json.loads((out / "run.json").read_text())["invocations"] == []

        result = CliRunner().invoke(main, ["dub", str(media["one_shot"]), str(media["dub_fr"]), "-o",
                                           str(tmp_path / "out.mp4"), "--executor", "local", "--quiet"])
        assert result.exit_code == 1 and f"pid {holders[1].process.pid} on " in result.output, result.output
        assert not (run_dir / "catalogue.yaml").exists()  # refused before the catalogue was written
    finally:
        for holder in holders:
            holder.finish()


def test_a_run_folder_at_an_fsspec_url_has_one_writer_too():
    folder = f"memory://dubline-lock-tests/{uuid.uuid4().hex}"
    with run_lock(folder) as lock:
        assert json.loads(storage.read_text(storage.join(folder, LOCK_NAME)))["invocation"] == lock.owner["invocation"]
        with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()} on "):
            RunLock(folder).acquire()
    assert not storage.exists(storage.join(folder, LOCK_NAME))


def test_racing_writers_get_a_free_lock_once_and_a_stale_one_once(tmp_path):
    folder = str(tmp_path)

    def race() -> list[RunLock]:
        locks = [RunLock(folder) for _ in range(8)]
        start, won = threading.Barrier(len(locks)), []

        def take(lock: RunLock) -> None:
            start.wait()
            try:
                lock.acquire()
                won.append(lock)
            except RunFolderBusy:
                pass

        threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return won

    (winner,) = race()
    winner._stop.set()  # its heartbeat stops; the record says it is 200 s old and from another machine
    stale = {**json.loads(storage.read_text(storage.join(folder, LOCK_NAME))), "process_space": "elsewhere",
             "heartbeat_unix": time.time() - 200}
    storage.write_text(storage.join(folder, LOCK_NAME), json.dumps(stale))
    (taker,) = race()
    record = json.loads(storage.read_text(storage.join(folder, LOCK_NAME)))
    assert record["invocation"] == taker.owner["invocation"] != winner.owner["invocation"]
    assert not storage.exists(storage.join(folder, LOCK_NAME + ".takeover"))
    taker.release()
    winner.release()  # no longer its lock: leaves the folder alone
    assert not storage.exists(storage.join(folder, LOCK_NAME))


def test_a_lock_from_another_machine_is_honoured_until_its_heartbeat_is_stale(tmp_path):
    record = {"invocation": "abc123", "host": "render-07", "pid": 4242, "process_space": "render-07/other",
              "command": "dubline run", "started": "2026-11-30T01:00:00+00:00", "stale_after_s": 120.0}
    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "heartbeat_unix": time.time() - 100}))
    with pytest.raises(RunFolderBusy, match="'dubline run', pid 4242 on render-07, .* last heartbeat 100 s ago"):
        RunLock(str(tmp_path)).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "heartbeat_unix": time.time() - 130}))
    with run_lock(str(tmp_path)) as lock:
        assert lock_record(tmp_path)["invocation"] == lock.owner["invocation"]


# --- killed and stalled holders -----------------------------------------------------------------


def test_a_sigkilled_holders_lock_is_taken_over_at_once(tmp_path):
    holder = Holder(str(tmp_path))  # heartbeat 10 s, stale after 120 s: only its death frees the lock
    holder.process.send_signal(signal.SIGKILL)
    stat = Path(f"/proc/{holder.process.pid}/stat")
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)  # dead, and left unreaped (a zombie) on purpose: it still has its PID
    assert lock_record(tmp_path)["pid"] == holder.process.pid  # left behind
    started = time.monotonic()
    with run_lock(str(tmp_path)) as lock:
        assert time.monotonic() - started < 5
        holder.process.wait(timeout=30)
        assert lock_record(tmp_path)["invocation"] == lock.owner["invocation"]
        run = RunFolder(str(tmp_path))
        run.begin("catalogue.yaml", {}, [])
        assert run.state["invocations"][-1]["writer"] == {"invocation": lock.owner["invocation"],
                                                          "host": socket.gethostname(), "pid": os.getpid()}


def test_a_stalled_holder_loses_its_lock_and_stops_writing(tmp_path):
    holder = Holder(str(tmp_path), heartbeat_s=0.2, stale_after_s=1.5)
    try:
        beat = tmp_path / f".{LOCK_NAME}.{holder.invocation}.heartbeat"
        time.sleep(0.6)
        first = json.loads(beat.read_text())["heartbeat_unix"]
        time.sleep(0.4)
        assert json.loads(beat.read_text())["heartbeat_unix"] > first  # the heartbeat runs
        assert json.loads((tmp_path / "run.json").read_text())["titles"]["t"]["tick"] > 1  # and writing
        with pytest.raises(RunFolderBusy):
            RunLock(str(tmp_path)).acquire()  # alive and beating: refused
        holder.process.send_signal(signal.SIGSTOP)  # e.g. a suspended VM
        time.sleep(2.0)
        with run_lock(str(tmp_path)) as lock:
            holder.process.send_signal(signal.SIGCONT)
            # Its heartbeat finds the lock taken over: its next run.json write is refused, naming
            # the new holder, and it stops; the new holder's lock is untouched.
            code = holder.process.wait(timeout=10)
            out = holder.process.stdout.read()
            assert code == 3 and "lost its lock (its heartbeat stalled) to " in out and f"pid {os.getpid()} on " in out, out
            assert lock.owner["invocation"] in out
            assert lock_record(tmp_path)["invocation"] == lock.owner["invocation"]
            assert not beat.exists()  # it cleaned up its heartbeat
    finally:
        holder.process.send_signal(signal.SIGCONT)
        if holder.process.poll() is None:
            holder.finish()


# --- run.json -----------------------------------------------------------------------------------


def test_a_reader_never_sees_a_part_of_run_json(tmp_path):
    writer = subprocess.Popen([sys.executable, __file__, "write", str(tmp_path), "3"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    state = tmp_path / "run.json"
    reads, versions, inodes, torn = 0, set(), set(), []
    while writer.poll() is None:
        try:
            inode, raw = state.stat().st_ino, state.read_bytes()
        except FileNotFoundError:
            continue  # not written yet
        reads += 1
        try:
            versions.add(json.loads(raw)["titles"]["t"]["version"])
            inodes.add(inode)
        except (ValueError, KeyError):
            torn.append(len(raw))
    written = int(writer.stdout.read().split()[1])
    assert writer.returncode == 0 and torn == []
    assert reads > 50 and len(versions) > 20 and written >= max(versions)
    assert len(inodes) > 1  # replaced by a new file each time, never rewritten in place
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
