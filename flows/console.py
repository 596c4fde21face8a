"""What a dubline command prints on the console, and where everything else goes.

The console of a run shows the progress bars (at a terminal), one line per finished title and
language, and the summary. Everything else is kept off it unless ``--verbose``:

- this process's own standard error — Prefect's logs and tracebacks, its temporary server's
  banner, and the chatter of native libraries that write to file descriptor 2 directly (TensorFlow
  Lite's XNNPACK line, absl/glog warnings from MediaPipe, FFmpeg) — is redirected, at the file
  descriptor, into a console log; after the run it is moved into the run folder's ``logs/`` (when
  that is a local folder and the log is not empty), and the summary prints its path when anything
  failed;
- Ray workers' output stays in Ray's own session logs (``ray.init(log_to_driver=False)``, see
  ``cluster/connect.py``), so neither MediaPipe in the stage actors nor Ray's log-deduplication
  notices reach the driver's console.

MediaPipe 0.10.21 logs through absl before ``absl::InitializeLog()`` and ignores
``GLOG_minloglevel`` and ``TF_CPP_MIN_LOG_LEVEL`` (measured), so environment variables cannot
silence it: the file descriptor is the one place that can.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

#: Quiet, offline-friendly defaults of every command; set before Prefect or Ray are imported.
#: A variable already set in the environment wins.
ENV_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # else an ERROR every 10 min without internet
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def prepare_env(verbose: bool) -> None:
    """Set the environment of a command before Prefect and Ray are imported.

    Without ``verbose``: Prefect logs warnings and errors only (they go to the console log), and
    Ray keeps its workers' output in its session logs. With it: Prefect's INFO logs and the
    workers' output come to the console. An explicit ``PREFECT_LOGGING_LEVEL`` or
    ``RAY_LOG_TO_DRIVER`` in the environment wins over both.
    """
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("RAY_LOG_TO_DRIVER", "1" if verbose else "0")


def log_path_for() -> Path:
    """Where the console log of a run is written while it runs: the system's temporary
    folder (nothing is written into a run folder before the run has it; ``keep_log`` moves it)."""
    import tempfile

    stamp = time.strftime("%Y-%m-%dT%H%M%S", time.gmtime())
    folder = Path(tempfile.gettempdir()) / "dubline-logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"console-{stamp}-{os.getpid()}.log"


def keep_log(log_path: Path | None, out: str | None) -> Path | None:
    """After a run into ``out``: drop an empty console log, move one with content into the run
    folder's ``logs/`` when that is a local folder (else, and with ``out`` None, it stays where it
    is); returns its path."""
    if log_path is None or not log_path.exists():
        return None
    if not log_path.stat().st_size:
        log_path.unlink()
        return None
    if out is None:
        return log_path
    local = out.removeprefix("file://") if "://" not in out or out.startswith("file://") else None
    if local is None or not Path(local).is_dir():
        return log_path
    target = Path(local).resolve() / "logs" / log_path.name
    try:
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(log_path), target)
    except OSError:
        return log_path
    return target


@contextlib.contextmanager
def captured_stderr(log_path: Path | None) -> Iterator[TextIO]:
    """Send file descriptor 2 (and so ``sys.stderr``) to ``log_path`` while the block runs;
    yields a stream on the original standard error for what a person should still see (the
    progress bars). With ``log_path`` None nothing is redirected and ``sys.stderr`` is yielded.
    """
    if log_path is None:
        yield sys.stderr
        return
    _flush(sys.stderr, sys.__stderr__)
    saved = os.dup(2)
    try:
        with open(log_path, "ab", buffering=0) as log:
            os.dup2(log.fileno(), 2)
        terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    except BaseException:
        os.dup2(saved, 2)
        os.close(saved)
        raise
    try:
        yield terminal
    finally:
        _flush(sys.stderr, sys.__stderr__, terminal)
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()


def _flush(*streams: TextIO | None) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()


def one_line(text: str | None, limit: int = 300) -> str:
    """A failure's message on one line: its first line and, for a multi-line message (a remote
    traceback), the exception line that ends it. Colour codes are dropped."""
    lines = [line.strip() for line in _ANSI.sub("", text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    causes = [line for line in lines[1:] if _EXCEPTION_LINE.match(line)]
    if causes and causes[-1] not in first:
        first = f"{first} … {causes[-1]}"
    return first if len(first) <= limit else first[: limit - 1] + "…"
