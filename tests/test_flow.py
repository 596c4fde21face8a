"""The Prefect flows end to end on a local Ray: outputs, bad rows, resume."""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from dubline.cluster.policy import POLICIES
from dubline.flows import progress
from dubline.flows.cli import main
from dubline.flows.demo import astronaut
from dubline.flows.localize import localize_catalogue
from dubline.flows.run_folder import RunFolder
from dubline.schemas import storage
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import DRIVEN_COEFFS, FACE_TRACKS, FRAME_CHUNK, MOUTH_MESHES, RENDERED_TRACKS
from dubline.stages.base import StageJob
from dubline.stages.face_model.geometry import LOWER_LIP_INNER, UPPER_LIP_INNER
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.faces import stage as faces_stage
from dubline.stages.selfcheck import SelfCheckStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.speech.espeak import synthesize, write_wav
from tests.conftest import CLIP_FPS, CLIP_SIZE, SHOT_SECONDS

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("ray_cluster", "prefect_harness")]


@pytest.fixture(scope="module")
def first_run(media, tmp_path_factory, ray_cluster, prefect_harness) -> tuple[Path, Path, dict]:
    """(catalogue, run folder, summary) of one catalogue run that the tests below share, in file
    order: the first reads what it made, the next ones rerun into the same folder. The French
    dub of ``portraits`` is a copy, so that a test can change it."""
    folder = tmp_path_factory.mktemp("flow")
    dub_fr = folder / "dub.fr.wav"
    dub_fr.write_bytes(media["dub_fr"].read_bytes())
    rows = [
        {"title_id": "portraits", "video": str(media["two_shots"]), "dubs": {"fr": str(dub_fr), "de": str(media["dub_de"])}},
        {"title_id": "still", "video": str(media["one_shot"]), "language": "fr", "dub_audio": str(media["dub_fr"])},
        {"title_id": "missing_video", "video": str(folder / "nope.mp4"), "language": "fr", "dub_audio": str(media["dub_fr"])},
        {"title_id": "not_a_video", "video": str(media["dub_fr"]), "language": "fr", "dub_audio": str(media["dub_fr"])},
    ]
    catalogue = folder / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump(rows))
    out = folder / "run"
    return catalogue, out, localize_catalogue(catalogue=str(catalogue), out=str(out))


def test_catalogue_flow_dubs_titles_and_reports_bad_ones(first_run):
    _, run, summary = first_run
    titles = summary["titles"]
    assert titles["portraits"]["status"] == "done" and set(titles["portraits"]["outputs"]) == {"fr", "de"}
    assert titles["still"]["status"] == "done"
    # The portraits' second face was dubbed and follows its mouth; still's only face (the 57 px
    # astronaut) was too small: its video is written, and it needs review instead of passing as done.
    assert titles["portraits"]["needs_review"] == {}
    assert titles["still"]["outputs"]["fr"].endswith("still.fr.mp4")
    assert titles["still"]["needs_review"]["fr"].startswith(
        "no face was dubbed: every face track was skipped (face too small (median height ")
    assert titles["missing_video"]["status"] == "invalid" and "missing file" in titles["missing_video"]["error"]
    assert titles["not_a_video"]["status"] == "failed" and "no video stream" in titles["not_a_video"]["error"]
    assert any("missing_video" in e for e in summary["catalogue_errors"])

    for language in ("fr", "de"):
        with av.open(titles["portraits"]["outputs"][language]) as out:
            video, audio = out.streams.video[0], out.streams.audio[0]
            assert (video.width, video.height, video.average_rate) == (CLIP_SIZE, CLIP_SIZE, CLIP_FPS)
            assert sum(1 for _ in out.decode(video=0)) == round(2 * SHOT_SECONDS * CLIP_FPS)
            assert float(video.duration * video.time_base) == pytest.approx(2 * SHOT_SECONDS, abs=0.05)
            assert audio.codec_context.name == "aac"
            assert float(audio.duration * audio.time_base) == pytest.approx(2 * SHOT_SECONDS, abs=0.05)

    state = json.loads((run / "run.json").read_text())
    stages = state["titles"]["portraits"]["stages"]
    assert stages["shots"]["rows_out"] == 2 and stages["probe"]["executed"]
    assert stages["faces"]["rows_out"] == 2 and stages["faces"]["metrics"]["tracks"] == 2
    sheet = CliRunner().invoke(main, ["inspect", str(run), "--title", "portraits", "--frames", "3"])
    assert sheet.exit_code == 0, sheet.output
    png = cv2.imread(sheet.output.strip())
    assert png.shape == (360, 3 * 360, 3) and png.std() > 10  # three drawn frames, not a blank sheet
    sheet = CliRunner().invoke(main, ["inspect", str(run), "--title", "portraits", "--frames", "3",
                                      "--dubbed", "fr"])
    assert sheet.exit_code == 0, sheet.output
    rows = cv2.imread(sheet.output.strip())  # per frame: source | dub | source mouth | dub mouth
    assert sheet.output.strip().endswith("portraits.fr.png") and rows.shape == (3 * 360, 4 * 360, 3)
    assert rows[:, 360:720].std() > 10  # the dubbed frames are drawn
    # The last frame shows the dubbed face (the second shot): its mouth is cut out of both videos.
    assert rows[720:, 2 * 360:].std() > 10
    missing = CliRunner().invoke(main, ["inspect", str(run), "--title", "portraits", "--dubbed", "es"])
    assert missing.exit_code != 0 and "portraits: no finished dub in 'es' (finished: de, fr)" in missing.output

    assert state["titles"]["still"]["languages"]["fr"]["status"] == "needs_review"
    assert state["titles"]["portraits"]["languages"]["fr"]["status"] == "done"
    invocation = state["invocations"][-1]
    assert invocation["dubs_needing_review"] == 1
    assert invocation["stages_executed"] == {"probe": 2, "shots": 2, "faces": 2, "audio": 3, "coeffs": 3, "render": 3,
                                             "enhance": 3, "composite": 3, "selfcheck": 3, "report": 3}
    assert invocation["stages_failed"] == {"probe": 1}

    # The per-language report: the mouth measured on the output follows the driven mouth.
    report = titles["portraits"]["reports"]["fr"]
    assert report["html"].endswith("portraits.fr.report.html") and report["lipsync_r"] > 0.6  # 0.78 measured: 5 open frames
    page = Path(report["html"]).read_text()
    assert page.count("data:image/png;base64,") == 3  # speaker timeline, lip sync, the one dubbed track's coefficients
    details = json.loads(Path(report["html"]).with_suffix(".json").read_text())
    assert [t["track_id"] for t in details["tracks"]] == [1] and details["lipsync_r"] == report["lipsync_r"]
    frames = details["self_check_frames"]
    assert frames["measured"] == frames["driven"] > 0 and frames["every"] == 1  # a short title: all of it
    assert details["tracks_skipped"][0]["reason"].startswith("face too small")  # the 57 px astronaut
    assert {s["shot_index"]: s["tracks_dubbed"] for s in details["shots"]} == {0: 0, 1: 1}
    assert list(details["stages"]) == ["probe", "shots", "faces", "audio", "coeffs", "render", "enhance", "composite",
                                       "selfcheck"]
    printed = CliRunner().invoke(main, ["report", str(run)])
    assert printed.exit_code == 0 and f"portraits [fr]: {report['html']}" in printed.output
    (still_line,) = [line for line in printed.output.splitlines() if line.startswith("still [fr]: ")]
    assert "(lip-sync r –)  NEEDS REVIEW: no face was dubbed" in still_line
    assert "NEEDS REVIEW" not in printed.output.replace(still_line, "")

    # The same summary is a Prefect artifact of the flow run.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dubline-run-summary"])))
    assert any(report["html"] in (a.data or "") and "lip-sync r" in (a.data or "") for a in artifacts)
    assert any(f"| still | done | fr | – | {titles['still']['outputs']['fr']} |" in (a.data or "")
               and "**needs review**: no face was dubbed" in (a.data or "") for a in artifacts)


def test_second_run_recomputes_nothing_and_a_lost_stage_is_redone(first_run):
    catalogue, run, first = first_run
    video = first["titles"]["portraits"]["outputs"]["fr"]
    before = storage.fingerprint(video)

    with progress.bars(True) as display:  # the CLI's bars, attached to this run
        second = localize_catalogue(catalogue=str(catalogue), out=str(run))
    assert second["invocation"]["stages_executed"] == {}
    assert second["invocation"]["stages_skipped"] == {"probe": 2, "shots": 2, "faces": 2, "audio": 3, "coeffs": 3,
                                                      "render": 3, "enhance": 3, "composite": 3, "selfcheck": 3, "report": 3}
    # Planned: 3 titles × 3 title stages + 4 (title, language) pairs × 7 stages; not_a_video stops at probe.
    counts = display.counts()
    assert counts["overall"] == (18 + 9 + 1, 3 * 3 + 4 * 7)  # portraits, still, not_a_video
    assert counts["probe"] == (3, 3) and counts["shots"] == (2, 3) and counts["report"] == (3, 4)
    assert storage.fingerprint(video) == before

    # A run killed before a stage's marker was written: only that stage runs again.
    (marker,) = [p for p in (run / "manifests" / "composite" / "still").glob("*.done")]
    marker.unlink()
    third = localize_catalogue(catalogue=str(catalogue), out=str(run))
    assert third["invocation"]["stages_executed"] == {"composite": 1}
    assert third["titles"]["still"]["status"] == "done"


def test_changed_dub_audio_recomputes_only_that_language(first_run, media):
    catalogue, run, _ = first_run
    (catalogue.parent / "dub.fr.wav").write_bytes(media["dub_de"].read_bytes())
    again = localize_catalogue(catalogue=str(catalogue), out=str(run))
    assert again["invocation"]["stages_executed"] == {"audio": 1, "coeffs": 1, "render": 1, "enhance": 1, "composite": 1,
                                                     "selfcheck": 1, "report": 1}
    assert again["titles"]["portraits"]["status"] == "done"


def test_a_title_is_analysed_and_rendered_on_two_ray_workers_and_composited_in_frame_ranges(media, tmp_path, monkeypatch):
    # Ranges of 0.6 s: the two-shot clip's 60 frames are four ranges. Faces cut tracks every 15
    # frames, so each range links a track segment of its own; the second shot's face is large
    # enough to dub. The policy and the segment length are read in the driver (the jobs' rows
    # carry the segment length to the workers).
    for stage in ("faces", "render", "composite", "selfcheck"):
        monkeypatch.setitem(POLICIES, stage, dataclasses.replace(POLICIES[stage], range_s=0.6))
    monkeypatch.setattr(faces_stage, "SEGMENT_FRAMES", 15)
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "long", "video": str(media["two_shots"]), "language": "fr",
                                          "dub_audio": str(media["dub_fr"])}]))
    summary = localize_catalogue(catalogue=str(catalogue), out=str(tmp_path / "run"))
    assert summary["titles"]["long"]["status"] == "done"
    assert summary["invocation"]["stages_executed"]["faces"] == 5  # four ranges and the join that numbers the tracks
    state = json.loads((tmp_path / "run" / "run.json").read_text())["titles"]["long"]
    faces = state["stages"]["faces"]
    assert faces["ranges"] == 4 and faces["rows_out"] == 4 and faces["metrics"]["tracks"] == 4
    # The dub audio is analysed beside faces (it needs only the probe), so on this two-CPU Ray the
    # face ranges may all run on one worker while the other analyses the audio; render's ranges,
    # after both, use the two.
    assert 1 <= len(faces["worker"].split(", ")) <= 2, faces["worker"]
    tracks = read_rows(RunFolder(str(tmp_path / "run")).manifest_url("faces", "long", faces["key"]), FACE_TRACKS)
    assert [(t["track_id"], t["frame_index"][0]) for t in tracks] == [(0, 0), (1, 15), (2, 30), (3, 45)]
    assert [bool(t["chunk_urls"]) for t in tracks] == [t["dubbable"] for t in tracks] == [False, False, True, True]
    assert summary["invocation"]["stages_executed"]["render"] == 4
    render = state["languages"]["fr"]["stages"]["render"]
    assert render["ranges"] == 4 and render["rows_in"] == 4 and render["rows_out"] >= 1
    assert len(render["worker"].split(", ")) == 2, f"the ranges ran on one worker: {render['worker']}"
    # The dubbed tracks' crops were cut by the face ranges, each numbering its own tracks from 0 (the
    # join does not copy them); the rendered crops carry the title's numbers.
    for track in read_rows(RunFolder(str(tmp_path / "run")).manifest_url("render", "long", render["key"]), RENDERED_TRACKS):
        assert {r["track_id"] for url in track["chunk_urls"] for r in read_rows(url, FRAME_CHUNK)} == {track["track_id"]}
    assert summary["invocation"]["stages_executed"]["composite"] == 5  # four segments and their join
    with av.open(summary["titles"]["long"]["outputs"]["fr"]) as video:
        assert sum(1 for _ in video.decode(video=0)) == 60 and video.streams.audio
    # The self-check's four ranges, each decoded from the output's keyframe before it, joined by a
    # fifth job: the meshes one job measures over the whole output.
    selfcheck = state["languages"]["fr"]["stages"]["selfcheck"]
    assert selfcheck["ranges"] == 4 and selfcheck["rows_out"] >= 1
    assert summary["invocation"]["stages_executed"]["selfcheck"] == 5  # and the join, a worker's job
    run = RunFolder(str(tmp_path / "run"))
    joined = read_rows(run.manifest_url("selfcheck", "long", selfcheck["key"]), MOUTH_MESHES)
    stages = {**state["stages"], **state["languages"]["fr"]["stages"]}
    upstream = {f"{field}_url": run.manifest_url(stage, "long", stages[stage]["key"])
                for field, stage in (("titles", "probe"), ("faces", "faces"), ("coeffs", "coeffs"), ("outputs", "composite"))}
    one_job = StageJob(SelfCheckStage, {}, str(tmp_path / "selfcheck.parquet"), "long",
                       rows=({"title_id": "long", "language": "fr", **upstream},))
    SequentialRunner().run(one_job)
    single = read_rows(one_job.output_url, MOUTH_MESHES)
    assert [(r["track_id"], r["frame_index"]) for r in joined] == [(r["track_id"], r["frame_index"]) for r in single]
    assert sum(len(r["frame_index"]) for r in joined) >= 20  # the dubbed face of the second shot, found on the output
    for ranged, whole in zip(joined, single):
        np.testing.assert_array_equal(np.asarray(ranged["landmarks"]), np.asarray(whole["landmarks"]))


def test_avatar_mode_makes_a_talking_video_whose_mouth_follows_the_speech(tmp_path):
    portrait = tmp_path / "portrait.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    speech = synthesize("Bonjour. Je suis astronaute, et papa aime la lune.", voice="fr", rate_wpm=150)
    write_wav(speech, str(tmp_path / "speech.wav"))
    result = CliRunner().invoke(main, ["avatar", str(portrait), str(tmp_path / "speech.wav"), "-o", str(tmp_path / "face.mp4"),
                                       "--language", "fr", "--pose-style", "2", "--executor", "local", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "NEEDS REVIEW" not in result.output
    with av.open(str(tmp_path / "face.mp4")) as video:
        assert video.streams.video[0].average_rate == 25 and video.streams.audio
        frames = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(frames) == round(speech.duration_s * 25)
    landmarker = FaceLandmarker()
    gaps = []
    for frame in frames:
        box = landmarker.detect(frame)[0]
        mesh = landmarker.mesh(frame, box)
        gaps.append(mesh[LOWER_LIP_INNER, 1] - mesh[UPPER_LIP_INNER, 1])
    state = json.loads((tmp_path / "face.dubline" / "run.json").read_text())
    assert state["titles"]["portrait"]["languages"]["fr"]["status"] == "done"  # the avatar's self-check passed
    run = RunFolder(str(tmp_path / "face.dubline"))
    key = state["titles"]["portrait"]["languages"]["fr"]["stages"]["coeffs"]["key"]
    (driven,) = read_rows(run.manifest_url("coeffs", "portrait", key), DRIVEN_COEFFS)
    jaw = np.asarray(driven["expression"])[:, 0]
    # Measured on the output: the mouth opening tracks the driven, speech-predicted jaw (r = 0.95 here).
    assert np.corrcoef(gaps, jaw)[0, 1] > 0.6


def test_cli_script_reaches_the_audio_job_and_a_changed_script_recomputes_from_audio_on(media, tmp_path, rows_sent_to):
    audio_rows = rows_sent_to("audio")
    script = tmp_path / "fr.srt"
    script.write_text("1\n00:00:00,100 --> 00:00:01,500\nBonjour, comment allez-vous ?\n", encoding="utf-8")
    command = ["dub", str(media["one_shot"]), str(media["dub_fr"]), "-o", str(tmp_path / "out.mp4"), "--language", "fr",
               "--script", str(script), "--executor", "local", "--quiet"]
    first = CliRunner().invoke(main, command)
    assert first.exit_code == 0, first.output
    (row,) = audio_rows
    assert row["dub_script_url"] == str(script) and row["dub_audio_url"] == str(media["dub_fr"])
    state = json.loads((tmp_path / "out.dubline" / "run.json").read_text())
    assert state["titles"]["one_shot"]["languages"]["fr"]["dub_script_url"] == str(script)

    def keys(state: dict) -> tuple[str, str]:
        title = state["titles"]["one_shot"]
        return title["stages"]["faces"]["key"], title["languages"]["fr"]["stages"]["audio"]["key"]

    faces_key, audio_key = keys(state)
    script.write_text("1\n00:00:00,100 --> 00:00:01,500\nBonjour, comment ça va ?\n", encoding="utf-8")
    second = CliRunner().invoke(main, command)
    assert second.exit_code == 0, second.output
    state = json.loads((tmp_path / "out.dubline" / "run.json").read_text())
    assert state["invocations"][-1]["stages_executed"] == {"audio": 1, "coeffs": 1, "render": 1, "enhance": 1,
                                                           "composite": 1, "selfcheck": 1, "report": 1}
    assert keys(state)[0] == faces_key and keys(state)[1] != audio_key

    # A script that is not text fails its dub with a message naming the title, language and file.
    script.write_bytes("Bonjour, ça va ?".encode("latin-1"))
    third = CliRunner().invoke(main, command)
    assert third.exit_code == 1
    assert f"one_shot: [fr] dub script {script}: not UTF-8 text" in third.output


def test_cli_dub_and_status(media, tmp_path):
    cli = CliRunner()
    result = cli.invoke(main, ["dub", str(media["two_shots"]), str(media["dub_fr"]), "-o", str(tmp_path / "out.mp4"),
                               "--language", "fr", "--quiet"])
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "out.mp4")) as out:
        assert out.streams.video[0].frames == round(2 * SHOT_SECONDS * CLIP_FPS) and out.streams.audio
    status = cli.invoke(main, ["status", str(tmp_path / "out.dubline")])
    assert status.exit_code == 0 and "two_shots: done" in status.output and "composite done" in status.output


@pytest.mark.parametrize("command", [[], ["run"], ["dub"], ["avatar"], ["status"], ["inspect"], ["demo"], ["report"], ["bench"], ["bench", "lipsync"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_any_fsspec_url_works_for_catalogue_media_and_run_folder(media):
    """memory:// lives in this process only, so the stages run in-process here."""
    for name in ("two_shots", "dub_fr"):
        storage.write_bytes(f"memory://inputs/{media[name].name}", media[name].read_bytes())
    storage.write_text("memory://inputs/catalogue.yaml", yaml.safe_dump(
        [{"title_id": "clip", "video": "two_shots.mp4", "language": "fr", "dub_audio": "dub.fr.wav"}]))
    summary = localize_catalogue(catalogue="memory://inputs/catalogue.yaml", out="memory://run", executor="local")
    assert summary["titles"]["clip"]["status"] == "done"
    output = summary["titles"]["clip"]["outputs"]["fr"]
    assert output == "memory://run/outputs/clip/clip.fr.mp4"
    with storage.open_url(output) as f, av.open(f) as container:
        assert sum(1 for _ in container.decode(video=0)) == round(2 * SHOT_SECONDS * CLIP_FPS)
    assert storage.exists("memory://run/run.json")


def test_progress_bars_are_off_when_quiet_in_ci_or_piped(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert progress.wanted(quiet=False) and not progress.wanted(quiet=True)
    monkeypatch.setenv("CI", "true")
    assert not progress.wanted(quiet=False)
    monkeypatch.delenv("CI")
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not progress.wanted(quiet=False)


def test_inspect_draws_a_placeholder_for_a_mouth_outside_the_frame():
    from dubline.flows.inspect import _crop, _tile

    frame = np.full((100, 80, 3), 200, np.uint8)
    assert _crop(frame, (90, 120, 130, 160)).shape == (8, 8, 3)  # a face cut off at the bottom edge
    assert _tile(_crop(frame, (90, 120, 130, 160)), "fr mouth").shape == (360, 360, 3)
    assert _crop(frame, (-10, 90, 30, 130)).shape == (10, 30, 3)  # partly inside: what is inside


def test_dub_audio_is_analysed_while_shots_and_faces_run(media, tmp_path, monkeypatch):
    """Each language's audio needs only the probe: its task starts before shots, so a second worker
    has work while the picture is analysed. Shots here waits for the audio task to start; were the
    audio analysed after faces, the title would fail."""
    from prefect import task

    from dubline.flows import tasks

    audio_started = threading.Event()

    def wrapped(original, before):
        @functools.wraps(original.fn)
        def run(*args, **kwargs):
            before()
            return original.fn(*args, **kwargs)
        return task(name=original.name)(run)

    def wait_for_audio():
        assert audio_started.wait(60), "shots ran before the dub audio's analysis had started"

    monkeypatch.setattr(tasks, "audio", wrapped(tasks.audio, audio_started.set))
    monkeypatch.setattr(tasks, "shots", wrapped(tasks.shots, wait_for_audio))
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "still", "video": str(media["one_shot"]), "language": "fr",
                                          "dub_audio": str(media["dub_fr"])}]))
    summary = localize_catalogue(catalogue=str(catalogue), out=str(tmp_path / "run"), executor="local")
    assert summary["titles"]["still"]["status"] == "done", summary["titles"]["still"]
