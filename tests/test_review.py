"""Dubs whose lip-sync self-check fails are marked "needs review" with the reason, never passed
off as done: the rule itself, and the run summary, run.json, the CLI and `dubline report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dubline.flows.cli import main
from dubline.flows.localize import REVIEW_THRESHOLD, localize_catalogue, review_reason
from dubline.stages.lipsync.sample import sampled_frames, sampling_stride
from dubline.stages.report.stage import ReportStage
from dubline.stages.selfcheck.stage import SelfCheckStage

SMALL = "face too small (median height 57 px < 64)"


def report(tracks_dubbed: int = 1, tracks_skipped: int = 0, lipsync_r: float | None = 0.8) -> dict:
    return {"tracks_dubbed": tracks_dubbed, "tracks_skipped": tracks_skipped, "lipsync_r": lipsync_r}


@pytest.mark.parametrize(
    ("row", "skipped", "reason"),
    [
        (report(lipsync_r=0.81), [], None),
        (report(lipsync_r=REVIEW_THRESHOLD), [], None),  # at the threshold passes; only below it fails
        (report(tracks_dubbed=2, tracks_skipped=3, lipsync_r=0.7), [SMALL] * 3, None),  # some faces dubbed, in sync
        (report(lipsync_r=0.49), [], "lip-sync self-check r 0.49 is below the review threshold 0.50"),
        (report(lipsync_r=-0.2), [], "lip-sync self-check r -0.20 is below the review threshold 0.50"),
        (report(tracks_dubbed=2, lipsync_r=None), [],
         "the lip-sync self-check measured none of the 2 dubbed face track(s) on the output video"),
        (report(tracks_dubbed=0, tracks_skipped=1, lipsync_r=None), [SMALL],
         f"no face was dubbed: every face track was skipped ({SMALL})"),
        (report(tracks_dubbed=0, tracks_skipped=3, lipsync_r=None), [SMALL, SMALL, "track shorter than 5 frames"],
         f"no face was dubbed: every face track was skipped (2× {SMALL}; track shorter than 5 frames)"),
        (report(tracks_dubbed=0, tracks_skipped=0, lipsync_r=None), [],
         "no face was dubbed: none was found in the video"),
    ],
    ids=["good", "at-threshold", "partly-skipped", "low-r", "negative-r", "unmeasured", "all-skipped",
         "all-skipped-reasons", "no-face"],
)
def test_review_reason(row: dict, skipped: list[str], reason: str | None) -> None:
    assert review_reason(row, skipped, REVIEW_THRESHOLD) == reason


def test_many_skip_reasons_are_cut_short() -> None:
    reasons = [f"reason {i}" for i in range(5)]
    assert review_reason(report(0, 5, None), reasons, 0.5) == (
        "no face was dubbed: every face track was skipped (reason 0; reason 1; reason 2; 2 other reason(s))")


@pytest.fixture(scope="module")
def dubbed(media, tmp_path_factory, prefect_harness) -> tuple[Path, Path]:
    """One finished run, stages in-process: the two-shot clip dubbed into French, whose second
    face is dubbed (self-check r 0.78 with the default settings). Returns (catalogue, run folder)."""
    folder = tmp_path_factory.mktemp("review")
    catalogue = folder / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "portraits", "video": str(media["two_shots"]), "language": "fr",
                                          "dub_audio": str(media["dub_fr"])}]))
    summary = localize_catalogue(catalogue=str(catalogue), out=str(folder / "run"), executor="local")
    assert summary["titles"]["portraits"]["needs_review"] == {}, summary
    return catalogue, folder / "run"


def fr_state(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["titles"]["portraits"]["languages"]["fr"]


@pytest.mark.timeout(300)
def test_a_dub_below_the_threshold_needs_review_everywhere_and_exits_0(dubbed) -> None:
    catalogue, out = dubbed
    r = fr_state(out)["lipsync_r"]
    assert 0.5 < r < 0.95
    cli = CliRunner()
    result = cli.invoke(main, ["run", str(catalogue), "--out", str(out), "--executor", "local", "--quiet",
                               "--review-threshold", "0.95"])
    assert result.exit_code == 0, result.output  # needing review is not a failure
    reason = f"lip-sync self-check r {r:.2f} is below the review threshold 0.95"
    assert "dubs that need review: 1" in result.output and f"NEEDS REVIEW: {reason}" in result.output
    assert "  portraits: done" in result.output and "portraits.fr.mp4" in result.output  # the video is kept

    state = json.loads((out / "run.json").read_text())
    assert state["invocations"][-1]["stages_executed"] == {}  # judging again recomputes nothing
    assert state["parameters"]["review_threshold"] == 0.95
    assert (fr_state(out)["status"], fr_state(out)["review_reason"]) == ("needs_review", reason)

    printed = cli.invoke(main, ["report", str(out)])
    assert printed.exit_code == 0 and f"(lip-sync r {r:.2f})  NEEDS REVIEW: {reason}" in printed.output
    status = cli.invoke(main, ["status", str(out)])
    assert f"[fr] needs_review  ({reason})" in status.output

    # With the default threshold the same dub is done again, and the old reason is gone.
    again = localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
    assert again["titles"]["portraits"]["needs_review"] == {} and again["invocation"]["dubs_needing_review"] == 0
    assert (fr_state(out)["status"], fr_state(out)["review_reason"]) == ("done", None)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage, method", [(SelfCheckStage, "_measure"), (ReportStage, "_report")])
def test_a_dub_whose_self_check_failed_needs_review(dubbed, monkeypatch, stage, method) -> None:
    catalogue, out = dubbed
    for marker in (out / "manifests" / stage.name / "portraits").glob("*.done"):
        marker.unlink()

    def broken(self, row):
        raise RuntimeError("face mesh model missing")

    monkeypatch.setattr(stage, method, broken)
    summary = localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
    title = summary["titles"]["portraits"]
    assert title["status"] == "done" and title["outputs"]["fr"].endswith("portraits.fr.mp4")
    assert title["needs_review"]["fr"] == f"no lip-sync self-check: the {stage.name} stage failed (face mesh model missing)"
    assert title["reports"]["fr"] == {"html": None, "lipsync_r": None}  # not the last run's report
    assert summary["invocation"]["stages_failed"] == {stage.name: 1}


def test_a_threshold_that_is_no_correlation_is_refused(tmp_path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                                       "--review-threshold", "1.5"])
    assert result.exit_code == 2 and "1.5 is not in the range -1.0<=x<=1.0" in result.output


@pytest.mark.timeout(300)
def test_a_published_video_overwritten_since_is_made_again(dubbed) -> None:
    """The video sits at one place per title and language whatever the settings: after a run with
    other settings wrote there, going back must not reuse the old key's output as it is now."""
    catalogue, out = dubbed
    localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")  # everything finished
    video = out / "outputs" / "portraits" / "portraits.fr.mp4"
    original = video.read_bytes()
    video.write_bytes(original[: len(original) // 2])  # what another key's composite left there
    summary = localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
    assert summary["invocation"]["stages_executed"] == {"composite": 1}
    assert video.read_bytes() == original  # the same job, the same bytes


@pytest.mark.parametrize(("driven", "every", "measured"), [
    (150, 1, 150),  # a short title: every driven frame
    (999, 1, 999),
    (1000, 2, 500),  # from 40 s at 25 fps: windows of 50 frames, one in two
    (1489, 2, 750),  # the one-minute benchmark title
    (2626, 4, 676),  # a quarter, never fewer than 500
    (180_000, 4, 45_000),  # a two-hour film: a quarter
])
def test_the_self_check_measures_windows_of_a_long_title(driven: int, every: int, measured: int) -> None:
    frames = list(range(1000, 1000 + driven))
    sampled = sampled_frames(frames, sampling_stride(driven))
    assert sampling_stride(driven) == every and len(sampled) == measured and sampled[:50] == frames[:50]
    assert every == 1 or frames[50] not in sampled


def test_every_dubbed_track_has_its_first_window_measured() -> None:
    """Windows are counted per track: a short turn is never skipped whole."""
    every = sampling_stride(10_000)
    assert every == 4
    assert sampled_frames(list(range(5000, 5030)), every) == list(range(5000, 5030))
    assert len(sampled_frames(list(range(0, 400)), every)) == 100  # windows 0 and 4 of eight
