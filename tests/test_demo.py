"""``dubline demo`` as a new user runs it (the README's Quick start, run once by the ``quick_start``
fixture), what it made, and what a rerun into its run folder recomputes: a changed encode option
only the encode and the report, a changed driving option everything from the coefficients on; a
title that fails makes the exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dubline.flows.cli import main
from dubline.flows.demo import DEMO_PORTRAIT_SIZE, DEMO_SPEECH
from dubline.stages.face_model.geometry import (
    CHIN,
    LEFT_EYE_LIDS,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
    RIGHT_EYE_LIDS,
)
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.speech.espeak import synthesize

pytestmark = [pytest.mark.timeout(1200), pytest.mark.usefixtures("prefect_harness")]


def decode(url: str) -> tuple[np.ndarray, float, float]:
    """(frames T×H×W×3, video seconds, audio seconds) of an output video."""
    with av.open(url) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.average_rate == 25 and audio.codec_context.name == "aac"
        seconds = (float(video.duration * video.time_base), float(audio.duration * audio.time_base))
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]), *seconds


@pytest.fixture(scope="module")
def demo(quick_start) -> tuple[Path, str]:
    """(the demo's folder, what `dubline demo` printed)."""
    folder, printed = quick_start
    return folder / "dubline-demo", printed["demo"]


def state(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_demo_makes_a_talking_portrait_and_dubs_it_into_french(demo):
    out, printed = demo
    run = out / "run"
    talking, dubbed = run / "outputs" / "portrait" / "portrait.en.mp4", run / "outputs" / "video" / "video.fr.mp4"
    assert str(talking) in printed and str(dubbed) in printed  # it says where to look
    titles = state(run)["titles"]
    assert titles["portrait"]["languages"]["en"]["status"] == "done" and titles["video"]["languages"]["fr"]["status"] == "done"
    for title, language in (("portrait", "en"), ("video", "fr")):
        report = json.loads((run / "outputs" / title / f"{title}.{language}.report.json").read_text())
        # Done, not "needs review": the self-check r (mouth measured on the output vs driven) passed 0.5.
        assert report["lipsync_r"] >= 0.5 and [t["track_id"] for t in report["tracks"]] == [0]
        assert (run / "outputs" / title / f"{title}.{language}.srt").read_text().startswith("1\n00:00:00,")
    assert "hello" in (run / "outputs" / "portrait" / "portrait.en.srt").read_text().lower()

    avatar, avatar_s, avatar_audio_s = decode(str(talking))
    dub, dub_s, dub_audio_s = decode(str(dubbed))
    # The avatar lasts as long as its (padded) speech; the dub keeps the avatar's picture and length.
    speech_s = max(synthesize(text, voice=voice).duration_s for voice, text in DEMO_SPEECH.values()) + 0.3
    assert avatar.shape == dub.shape and avatar.shape[1:] == (DEMO_PORTRAIT_SIZE, DEMO_PORTRAIT_SIZE, 3)
    assert len(avatar) == round(speech_s * 25) and avatar_s == pytest.approx(speech_s, abs=0.05)
    assert dub_s == pytest.approx(avatar_s, abs=0.01) and dub_audio_s == pytest.approx(avatar_s, abs=0.05)
    assert avatar_audio_s == pytest.approx(avatar_s, abs=0.05)
    # The dub re-drives the mouth and leaves the rest: above the eyes it differs from the avatar by
    # re-encoding only (about a grey level), between nose, chin and the mouth corners
    # several times more.
    landmarker = FaceLandmarker()
    middle = avatar[len(avatar) // 2]
    mesh = landmarker.mesh(middle, landmarker.detect(middle)[0])
    eyes_y = int(mesh[[RIGHT_EYE_LIDS[1], LEFT_EYE_LIDS[1]], 1].min())
    difference = np.abs(avatar.astype(np.int16) - dub).mean(axis=(0, 3))
    rows, columns = slice(int(mesh[NOSE_TIP, 1]), int(mesh[CHIN, 1])), slice(int(mesh[MOUTH_RIGHT, 0]), int(mesh[MOUTH_LEFT, 0]))
    above, mouth = difference[: eyes_y - 10].mean(), difference[rows, columns].mean()
    assert above < 2.0 and mouth > 4 * above, (above, mouth)  # measured: 0.9 and 10.5


def test_a_changed_option_reruns_only_what_depends_on_it_and_a_failed_title_exits_1_in_its_run(demo):
    """Reruns ``dubline run`` into the demo's run folder (so it runs after the test above, which
    reads the demo's own outputs): the dub's row with changed options, then beside a broken title."""
    out, _ = demo
    run, inputs = out / "run", out / "inputs"
    output = run / "outputs" / "video" / "video.fr.mp4"
    before, frames = state(run)["titles"]["video"], len(decode(str(output))[0])
    (row,) = yaml.safe_load((inputs / "catalogue.dub.yaml").read_text())
    broken = {"title_id": "broken", "video": str(inputs / "dub.fr.wav"), "language": "fr",
              "dub_audio": str(inputs / "dub.fr.wav")}  # audio where the video goes: fails at probe

    def rerun(options: dict, *extra: dict):
        catalogue = inputs / "rerun.yaml"
        catalogue.write_text(yaml.safe_dump([{**row, "options": options}, *extra]))
        done = CliRunner().invoke(main, ["run", str(catalogue), "--out", str(run), "--executor", "local", "--quiet"])
        return done, state(run)

    # A driving option: the coefficients and everything after them; faces and audio are reused.
    done, after = rerun({"expression_scale": 0.5})
    assert done.exit_code == 0, done.output
    assert after["invocations"][-1]["stages_executed"] == {
        s: 1 for s in ("coeffs", "render", "enhance", "composite", "selfcheck", "report")}
    assert after["invocations"][-1]["stages_skipped"] == {s: 1 for s in ("probe", "shots", "faces", "audio")}
    scaled, size_scaled = after["titles"]["video"]["languages"]["fr"]["stages"], output.stat().st_size

    # An encode option: only composite (and the report of its output) run again; a title that
    # fails beside it makes the exit code 1.
    done, after = rerun({"expression_scale": 0.5, "crf": 40}, broken)
    assert done.exit_code == 1, done.output
    assert "  broken: failed" in done.output and "  video: done" in done.output
    invocation = after["invocations"][-1]
    assert invocation["stages_executed"] == {"composite": 1, "selfcheck": 1, "report": 1}
    assert invocation["stages_skipped"] == {s: 1 for s in ("probe", "shots", "faces", "audio", "coeffs", "render", "enhance")}
    assert invocation["stages_failed"] == {"probe": 1} and "no video stream" in after["titles"]["broken"]["error"]
    encoded = after["titles"]["video"]["languages"]["fr"]["stages"]
    assert all(encoded[s]["key"] == scaled[s]["key"] for s in ("audio", "coeffs", "render", "enhance"))
    assert encoded["composite"]["key"] != scaled["composite"]["key"]
    assert before["languages"]["fr"]["stages"]["audio"]["key"] == encoded["audio"]["key"]
    # A coarser quantiser: the same frames in fewer bytes.
    assert output.stat().st_size < 0.8 * size_scaled and len(decode(str(output))[0]) == frames

    # The broken title dropped from the catalogue: this run is judged on its own titles (the
    # failure stays on record in run.json, not in this run's summary or exit code).
    done, after = rerun({"expression_scale": 0.5, "crf": 40})
    assert done.exit_code == 0, done.output
    assert "broken" not in done.output and after["titles"]["broken"]["status"] == "failed"
