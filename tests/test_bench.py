"""The lip-sync benchmark: its measures (golden values) and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from flows.bench import _on_clock, psnr_outside_lower_face
from flows.cli import main
from flows.demo import grace_hopper, write_portrait_clip
from stages.audio.espeak import synthesize
from stages.report.mouth import MouthCurve, best_lag, pearson


def test_best_lag_finds_a_two_frame_delay_and_its_sign():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=200)
    late = np.concatenate([np.zeros(2), reference[:-2]])  # the same curve, two frames late
    r, lag = best_lag(late, reference, max_lag=2)
    assert lag == 2 and r == pytest.approx(1.0, abs=1e-9)
    r, lag = best_lag(reference, late, max_lag=2)
    assert lag == -2 and r == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(pearson(np.ones(10), reference[:10]))  # a still mouth has no correlation


def test_resampling_onto_another_frame_clock():
    curve = MouthCurve(np.arange(5), np.array([0.0, 1.0, 2.0, 3.0, 4.0]))  # 5 frames at 10 fps: t = 0 … 0.4 s
    values = _on_clock(curve, fps=10.0, frames=6, target_fps=20.0)  # t = 0, 0.05, … 0.25 s
    assert np.allclose(values, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert np.isnan(_on_clock(curve, 10.0, 12, 20.0)[-1])  # past the end of B's clip: unknown


def test_psnr_outside_lower_face_ignores_the_masked_region(media, tmp_path):
    source = str(media["one_shot"])
    everything = {i: np.array([[0, 0], [999, 0], [999, 999], [0, 999]], np.int32) for i in range(100)}
    assert psnr_outside_lower_face(source, source, {}) == float("inf")
    assert psnr_outside_lower_face(source, source, everything) == float("inf")


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("prefect_harness")
def test_lipsync_command_dubs_every_pair_and_writes_table_and_json(media, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4").symlink_to(media["two_shots"])
    write_portrait_clip(clips / "b.mp4", [grace_hopper()], 1.6, audio=synthesize("Maps and boats.", voice="en"),
                        size=256)
    result = CliRunner().invoke(main, ["bench", "lipsync", "--clips", str(clips), "--out", str(tmp_path / "bench"),
                                       "--executor", "local", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "r_B" in result.output and "output beats both controls" in result.output
    summary = json.loads((tmp_path / "bench" / "lipsync.json").read_text())
    assert [(p["a"], p["b"]) for p in summary["pairs"]] == [("a", "b"), ("b", "a")]
    for pair in summary["pairs"]:
        # Only the encoder touches pixels outside the lower face (H.264 at CRF 18).
        assert pair["psnr_outside_db"] > 35
        for key in ("r_b", "r_a", "control_passthrough_r_b", "control_shifted_r_b"):
            assert pair[key] is None or -1 <= pair[key] <= 1  # undefined correlations are null, never NaN
        assert abs(pair["lag"]) <= 2
    state = json.loads((tmp_path / "bench" / "run" / "run.json").read_text())
    assert set(state["titles"]) == {"a--b", "a--b--shifted", "b--a", "b--a--shifted"}


def test_lipsync_command_needs_two_clips(tmp_path):
    result = CliRunner().invoke(main, ["bench", "lipsync", "--clips", str(tmp_path)])
    assert result.exit_code != 0 and "at least two video clips, found 0" in result.output
