"""The run folder's log is appended line by line, not rewritten: the file stays the same file,
what it held is kept (a second invocation's lines never replace the first's), every line is on
disk when ``log`` returns (a killed process loses none), and stores without an append mode get
the same content through the whole-file fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import fsspec
import pytest

from dubline.flows.run_folder import RunFolder
from dubline.schemas import storage

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


def _lines(url: str) -> list[str]:
    """The messages of a log, without their timestamps."""
    return [line.split(" ", 1)[1] for line in storage.read_text(url).splitlines()]


def test_log_is_appended_to_the_same_file(tmp_path):
    run = RunFolder(str(tmp_path / "run"))
    run.begin("cat.yaml", {}, ["row 2 (x): bad"])
    log = run.state["invocations"][-1]["log"]
    before = Path(log).read_bytes()
    inode = os.stat(log).st_ino
    for i in range(20):
        run.log(f"line {i}")
    # A rewrite goes through a temporary file and a rename: a new inode every line.
    assert os.stat(log).st_ino == inode
    assert Path(log).read_bytes().startswith(before)
    assert _lines(log) == ["run of cat.yaml into " + run.url, "catalogue row 2 (x): bad"] + [f"line {i}" for i in range(20)]
    assert not list(Path(log).parent.glob(".*.partial"))


def test_log_survives_a_killed_process(tmp_path):
    folder = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os
        from dubline.flows.run_folder import RunFolder
        run = RunFolder({str(folder)!r})
        run.begin("cat.yaml", {{}}, [])
        for i in range(50):
            run.log(f"line {{i}}")
        print(run.state["invocations"][-1]["log"], flush=True)
        os.kill(os.getpid(), 9)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=100)
    assert done.returncode == -9, done.stderr
    log = done.stdout.strip()
    assert _lines(log)[1:] == [f"line {i}" for i in range(50)]
    # A later writer of the same log file (same second) adds to it, never replaces it.
    storage.append_text(log, "2026-01-01T00:00:00+00:00 later\n")
    assert _lines(log)[1:] == [f"line {i}" for i in range(50)] + ["later"]


def test_log_on_a_store_with_append_mode():
    url = f"memory://{uuid.uuid4().hex}/run"
    run = RunFolder(url)
    run.begin("cat.yaml", {}, [])
    for i in range(5):
        run.log(f"line {i}")
    assert _lines(run.state["invocations"][-1]["log"])[1:] == [f"line {i}" for i in range(5)]


def test_log_on_a_store_without_append_mode(monkeypatch):
    memory = fsspec.filesystem("memory")
    opened = memory.open

    def no_append(path, mode="rb", *args, **kwargs):
        if "a" in mode:
            raise NotImplementedError("append is not supported")
        return opened(path, mode, *args, **kwargs)

    monkeypatch.setattr(memory, "open", no_append)
    url = f"memory://{uuid.uuid4().hex}/run"
    run = RunFolder(url)
    run.begin("cat.yaml", {}, [])
    for i in range(5):
        run.log(f"line {i}")
    log = run.state["invocations"][-1]["log"]
    assert _lines(log) == ["run of cat.yaml into " + url] + [f"line {i}" for i in range(5)]
    assert not [p for p in memory.find(url) if p.endswith(".partial")]


def test_a_local_run_folder_is_one_folder_however_it_is_written(tmp_path, monkeypatch):
    """Its outputs' URLs enter stage keys: "runs/x" and "./runs/x" must not make a second set of keys."""
    monkeypatch.chdir(tmp_path)
    assert RunFolder("runs/x").url == RunFolder("./runs/x/").url == str(tmp_path / "runs" / "x")
    assert RunFolder("memory://bucket/runs/x/").url == "memory://bucket/runs/x"
