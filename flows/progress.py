"""Progress of a run on the CLI: bars (one per stage and one overall) and one line per finished
title and language.

The flow announces how many stage jobs a run has (``plan``), each finished job (``advance``) and
each finished (title, language) (``finished``); a display is attached only by the CLI, so
deployments and tests run without one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

from dubline.flows.run_folder import PIPELINE_ORDER

#: Stages run once per title; the others once per (title, language).
TITLE_STAGES = ("probe", "shots", "faces")

_lock = threading.Lock()
_display: "_RichDisplay | None" = None
_printer: Callable[[str], None] | None = None


def wanted(quiet: bool) -> bool:
    """Bars only for a person at a terminal: not under --quiet, in CI, or when output is piped."""
    return not quiet and not os.environ.get("CI") and sys.stderr.isatty()


class _RichDisplay:
    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=stream) if stream is not None else Console(stderr=True)
        self._progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=False)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "_RichDisplay":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def plan(self, totals: dict[str, int]) -> None:
        for stage in ("overall", *PIPELINE_ORDER):
            total = sum(totals.values()) if stage == "overall" else totals.get(stage, 0)
            if stage in self._tasks:
                self._progress.update(self._tasks[stage], total=total, completed=0)
            elif total:
                self._tasks[stage] = self._progress.add_task(stage, total=total)

    def counts(self) -> dict[str, tuple[int, int]]:
        """(completed, total) per bar."""
        return {name: (int(self._progress.tasks[i].completed), int(self._progress.tasks[i].total or 0))
                for name, i in self._tasks.items()}

    def print(self, line: str) -> None:
        """A line above the bars."""
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def advance(self, stage: str) -> None:
        for name in (stage, "overall"):
            if name in self._tasks:
                self._progress.advance(self._tasks[name])


@contextlib.contextmanager
def bars(enabled: bool, stream: TextIO | None = None) -> Iterator["_RichDisplay | None"]:
    """Show progress bars on ``stream`` (default: stderr) while the block runs (no-op when not
    ``enabled``). The lines of ``finished`` are printed above them."""
    global _display
    if not enabled:
        yield None
        return
    with _RichDisplay(stream) as display:
        _display = display
        try:
            yield display
        finally:
            _display = None


def plan(titles: int, pairs: int) -> None:
    """A run of ``titles`` titles and ``pairs`` (title, language) pairs is starting."""
    with _lock:
        if _display is not None:
            _display.plan({s: titles if s in TITLE_STAGES else pairs for s in PIPELINE_ORDER})


def advance(stage: str) -> None:
    """One job of ``stage`` finished (computed, reused or failed)."""
    with _lock:
        if _display is not None:
            _display.advance(stage)


@contextlib.contextmanager
def lines(printer: Callable[[str], None] | None) -> Iterator[None]:
    """Print one line per finished (title, language) with ``printer`` while the block runs
    (nothing when it is None)."""
    global _printer
    _printer = printer
    try:
        yield
    finally:
        _printer = None


def finished(title_id: str, language: str | None, status: str, detail: str | None = None) -> None:
    """A dub of ``title_id`` into ``language`` (None: the title as a whole) ended with ``status``
    ("done", "needs_review", "failed"); ``detail``: its lip-sync r, review reason or error."""
    from dubline.flows.console import one_line

    with _lock:
        if _printer is None:
            return
        name = f"{title_id} [{language}]" if language else f"title {title_id}"
        label = {"done": "done", "needs_review": "NEEDS REVIEW", "failed": "FAILED"}.get(status, status)
        text = one_line(detail)
        line = f"{name}: {label}" + (f" ({text})" if status == "done" and text else f": {text}" if text else "")
        if _display is not None:
            _display.print(line)  # above the bars (a plain write to stdout would land inside them)
        else:
            _printer(line)
