"""What a person sees: the console of `dubline` commands run as a user runs them (a subprocess).

No native-library chatter (TensorFlow Lite, absl/glog from MediaPipe), no Ray log-deduplication
notice, no Prefect banner or traceback: one line per finished (title, language), the summary with
one line per failure, and the logs' paths. ``--verbose`` brings Prefect's logs back; the chatter
that was kept off the console is in the console log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dubline.flows.console import one_line

pytestmark = pytest.mark.timeout(420)

DUBLINE = Path(sys.executable).parent / "dubline"
#: Lines that must never reach the console of a run without --verbose.
NOISE = re.compile(
    r"TensorFlow Lite|XNNPACK|absl::|inference_feedback_manager|Feedback manager|NORM_RECT|landmark_projection"
    r"|W0000|I0000|deduplicates logs|RAY_DEDUP_LOGS|\(raylet\)|pid=\d+\)|Traceback|\| (INFO|WARNING|ERROR) +\|"
    r"|temporary server|Task run|Flow run|prefect"
)


def _dubline(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items()
           if name not in ("RAY_ADDRESS", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "RAY_LOG_TO_DRIVER", "CI")}
    return subprocess.run([str(DUBLINE), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _catalogue(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(rows))
    return str(path)


def test_a_run_on_ray_prints_one_line_per_dub_and_the_summary_only(media, tmp_path):
    """On the private Ray: MediaPipe runs in the faces and report actors, whose output stays in
    Ray's logs; a failed title is one line, its traceback in the console log."""
    catalogue = _catalogue(tmp_path, [
        {"title_id": "clip", "video": str(media["two_shots"]), "language": "fr", "dub_audio": str(media["dub_fr"])},
        {"title_id": "not_a_video", "video": str(media["dub_fr"]), "language": "fr", "dub_audio": str(media["dub_fr"])},
    ])
    out = tmp_path / "run"
    done = _dubline("run", catalogue, "--out", str(out))
    console = done.stdout + done.stderr
    assert done.returncode == 1, console  # one title failed
    assert not [line for line in console.splitlines() if NOISE.search(line)], console
    lines = console.splitlines()
    dubbed = [line for line in lines if line.startswith("clip [fr]: ")]
    assert len(dubbed) == 1 and re.fullmatch(r"clip \[fr\]: done \(lip-sync r [0-9.]+\)", dubbed[0]), console
    assert "title not_a_video: FAILED: not_a_video: source has no video stream" in lines
    assert "    error: not_a_video: source has no video stream" in lines and f"run folder: {out}" in lines
    (logs,) = [line for line in lines if line.startswith("logs: ")]
    run_log, console_log = logs.removeprefix("logs: ").split(", ")
    assert Path(run_log).parent == out / "logs" and "probe not_a_video failed" in Path(run_log).read_text()
    assert "Traceback" in Path(console_log).read_text()  # Prefect's, kept off the console
    # the synthetic clip's dub raises warnings worth a look (repeated under it, one line each)
    warnings = [line for line in lines if line.startswith("        warning: ")]
    assert len(lines) - len(warnings) <= 13 and len(warnings) <= 4, console


def test_quiet_prints_the_summary_only_and_verbose_brings_the_logs_back(media, tmp_path):
    """In-process stages (--executor local): MediaPipe's native lines are written by this very
    process, and go to the console log."""
    catalogue = _catalogue(tmp_path, [
        {"title_id": "clip", "video": str(media["one_shot"]), "language": "fr", "dub_audio": str(media["dub_fr"])},
    ])
    quiet = _dubline("run", catalogue, "--out", str(tmp_path / "quiet"), "--executor", "local", "--quiet")
    console = quiet.stdout + quiet.stderr
    assert quiet.returncode == 0, console
    assert not [line for line in console.splitlines() if NOISE.search(line)], console
    assert console.startswith("\nrun folder: ") and "clip [fr]:" not in console  # no per-dub line either
    (log,) = (tmp_path / "quiet" / "logs").glob("console-*.log")
    assert "XNNPACK" in log.read_text() or "absl::InitializeLog" in log.read_text()  # MediaPipe's, routed here

    bad = _catalogue(tmp_path, [
        {"title_id": "not_a_video", "video": str(media["dub_fr"]), "language": "fr", "dub_audio": str(media["dub_fr"])},
    ])
    verbose = _dubline("run", bad, "--out", str(tmp_path / "verbose"), "--executor", "local", "--verbose")
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and "| INFO    |" in verbose.stderr  # Prefect's logs, on the console
    assert not list((tmp_path / "verbose" / "logs").glob("console-*.log"))


def test_one_line_keeps_the_first_line_and_the_exception_that_ends_a_remote_traceback():
    remote = ("portraits: unexpected ActorDiedError: The actor died because of an error raised in its creation task, "
              "\x1b[36mray::dubline-enhance:EnhanceStageWorker.__init__()\x1b[39m\n  At least one input failed:\n"
              "traceback: Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "ImportError: cannot import name 'geometry'\n")
    line = one_line(remote)
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("portraits: unexpected ActorDiedError: The actor died")
    assert line.endswith("… ImportError: cannot import name 'geometry'")
    assert one_line("not_a_video: source has no video stream") == "not_a_video: source has no video stream"
    assert len(one_line("x" * 1000, limit=50)) == 50


def test_one_line_per_finished_dub_only_while_a_printer_is_attached():
    from dubline.flows import progress

    printed: list[str] = []
    progress.finished("t", "fr", "done", "lip-sync r 0.91")  # no printer: deployments, tests
    with progress.lines(printed.append):
        progress.finished("t", "fr", "done", "lip-sync r 0.91")
        progress.finished("t", "de", "needs_review", "lip-sync self-check r 0.20 is below the review threshold 0.50")
        progress.finished("t", "es", "failed", "t: unexpected RuntimeError: boom\nTraceback (most recent call last):\n"
                          "  File \"x.py\", line 1\nRuntimeError: boom")
        progress.finished("u", None, "failed", "u: source has no video stream")
    progress.finished("t", "it", "done")
    assert printed == [
        "t [fr]: done (lip-sync r 0.91)",
        "t [de]: NEEDS REVIEW: lip-sync self-check r 0.20 is below the review threshold 0.50",
        "t [es]: FAILED: t: unexpected RuntimeError: boom",  # the cause is already in the first line
        "title u: FAILED: u: source has no video stream",
    ]


def test_verbose_is_what_lets_prefect_info_and_ray_workers_output_through(monkeypatch):
    from dubline.flows import console

    for verbose, level, to_driver in ((False, "WARNING", "0"), (True, "INFO", "1")):
        for name in ("PREFECT_LOGGING_LEVEL", "RAY_LOG_TO_DRIVER"):
            monkeypatch.delenv(name, raising=False)
        console.prepare_env(verbose)
        assert (os.environ["PREFECT_LOGGING_LEVEL"], os.environ["RAY_LOG_TO_DRIVER"]) == (level, to_driver)
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"  # no telemetry ERROR offline


def test_the_summary_repeats_the_warnings_that_matter_under_their_dub(capsys):
    from dubline.flows.cli import _print_summary
    from dubline.flows.localize import dub_warnings
    from dubline.stages.coeffs.stage import UNTRUSTED_CALIBRATION

    state = {"status": "done", "stages": {
        "coeffs": {"dropped": {UNTRUSTED_CALIBRATION: 1, "dub segments unassigned: off-screen": 2}},
        "render": {"dropped": {}}, "audio": {"dropped": {"dub language differs from the catalogue": 1},
                                             "metrics": {"dub_speech_cut_s": 1.234}}}}
    warnings = dub_warnings(state)
    assert warnings == ["audio: dub language differs from the catalogue (1)",
                        f"coeffs: {UNTRUSTED_CALIBRATION} (1)",  # routine reasons are not repeated
                        "audio: 1.23 s of dub speech cut at the end (the dub audio is longer than the picture)"]
    assert dub_warnings({"stages": {"audio": {"metrics": {"dub_speech_cut_s": 0.0}}}}) == []  # silence cut
    assert dub_warnings({**state, "heard_language": "pt (0.93)"})[0] == (
        "audio: dub language differs from the catalogue (1): heard pt (0.93)")
    summary = {"out": "run", "catalogue_errors": [], "invocation": {
        "stages_executed": {}, "stages_skipped": {}, "stages_failed": {}, "dubs_needing_review": 0},
        "titles": {"clip": {"status": "done", "error": None, "outputs": {"fr": "clip.fr.mp4"},
                            "reports": {"fr": {"html": "clip.fr.report.html", "lipsync_r": 0.9}},
                            "needs_review": {}, "warnings": {"fr": warnings}}}}
    summary["invocation"]["log"], summary["console_log"] = "run/logs/a.log", "run/logs/console.log"
    assert _print_summary(summary) == 0  # warnings leave the exit code alone
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "logs: run/logs/a.log, run/logs/console.log"  # named after a good run too
    at = printed.index("    fr: clip.fr.mp4")
    assert printed[at + 2 : at + 5] == [f"        warning: {w}" for w in warnings]


def test_a_catalogue_error_is_printed_once_under_its_title(capsys):
    from dubline.flows.cli import _print_summary

    error = "row 1 (nope [fr]): missing file: ./nope.mp4"
    summary = {"out": "run", "catalogue_errors": [error, "row 2 (?): no title_id"], "invocation": {
        "stages_executed": {}, "stages_skipped": {}, "stages_failed": {}, "dubs_needing_review": 0},
        "titles": {"nope": {"status": "invalid", "error": error, "outputs": {}, "reports": {}, "needs_review": {}}}}
    assert _print_summary(summary) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:] == ["  nope: invalid", f"    error: {error}", "  catalogue row 2 (?): no title_id"]
