"""Bad inputs, end to end: every one is a clear error of its own title in the run summary (naming
the title and the problem) while the other titles finish.

One catalogue holds every row-level bad input beside two good titles (odd picture size, which must
work, with a silent second dub; a variable frame rate, dubbed on a constant clock); it runs once
on the local Ray (module fixture) and each case asserts on that shared summary. Run-level bad
inputs (enhancer weights, a run folder of another dubline, an output location that cannot be
written) get small runs of their own.

Also covered elsewhere in the suite, and not repeated here: a missing source video and an
audio-only file as source (tests/test_flow.py), catalogue validation row by row
(tests/test_catalogue.py), stage-level dub-audio checks (tests/test_audio_stage.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from click.testing import CliRunner

from dubline.flows.cli import main
from dubline.flows.demo import astronaut, push_in, square
from dubline.flows.localize import localize_catalogue

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("prefect_harness")]

ODD_W, ODD_H, ODD_FRAMES = 251, 255, 25  # the good title: an odd picture size, padded to 252x256


# --- inputs ----------------------------------------------------------------------------------


def write_video(path: Path, frames: list[np.ndarray], pts: list[int], time_base: Fraction, fmt: str | None = None,
                pix_fmt: str = "yuv420p", options: dict | None = None) -> Path:
    """H.264 frames at the given timestamps (any container PyAV writes)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"preset": "ultrafast"}
        stream.codec_context.time_base = time_base
        for rgb, t in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = t, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_audio(path: Path, samples: np.ndarray, rate: int = 16000, codec: str = "pcm_s16le") -> Path:
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def plain_frames(count: int, side: int = 64) -> list[np.ndarray]:
    return [np.full((side, side, 3), 40 + 4 * i, np.uint8) for i in range(count)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


@pytest.fixture(scope="module")
def inputs(media, tmp_path_factory) -> dict[str, str]:
    """Every bad input as a file (or URL), plus the good ones they sit beside."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    files: dict[str, str] = {"dub": str(media["dub_fr"])}

    def path(name: str) -> Path:
        files[name.split(".")[0]] = str(folder / name)
        return folder / name

    tb25 = Fraction(1, 25)
    # The good title: a face at an odd picture size (H.264 4:4:4 allows odd sides), 1 s.
    face = square(astronaut(), max(ODD_W, ODD_H))[:ODD_H, :ODD_W]
    write_video(path("odd.mp4"), push_in(face, ODD_FRAMES), list(range(ODD_FRAMES)), tb25, pix_fmt="yuv444p")
    write_audio(path("silent.wav"), np.zeros(16000))
    # A plain 64 px second without a face: the source of titles whose dub audio is bad.
    write_video(path("plain.mp4"), plain_frames(25), list(range(25)), tb25)
    # 20 frames at 25 fps, then 20 at ~8 fps (VFR): dubbed on a 25 fps clock, frames held as shown.
    write_video(path("vfr.mp4"), plain_frames(40), [i * 40 if i < 20 else 800 + (i - 20) * 120 for i in range(40)],
                Fraction(1, 1000))
    # A fast-start MP4 (index first) cut at 60 %: FFmpeg alone would read the first frames happily.
    noise = np.random.default_rng(0).integers(0, 255, (50, 64, 64, 3), dtype=np.uint8)
    whole = write_video(folder / "whole.mp4", list(noise), list(range(50)), tb25, options={"movflags": "+faststart"})
    path("truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    path("corrupt.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    path("empty.mp4").write_bytes(b"")
    # A 20000x20000 picture by its header alone (YUV4MPEG2), a few bytes on disk.
    path("huge.y4m").write_bytes(b"YUV4MPEG2 W20000 H20000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(64))
    # Matroska that demuxes fine but names a codec no FFmpeg decodes.
    mkv = write_video(folder / "h264.mkv", plain_frames(10), list(range(10)), tb25, fmt="matroska")
    path("codec.mkv").write_bytes(mkv.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_DUBLINE/NONE!"))
    write_audio(path("nan.wav"), np.full(16000, np.nan), codec="pcm_f32le")
    path("garbage.wav").write_bytes(b"RIFF\x00\x00garbage" * 20)
    path("empty_dub.wav").write_bytes(b"")
    write_audio(path("long.wav"), np.zeros(16000 * 6))  # 6 s of dub for a 1 s picture
    path("folder.mp4").mkdir()
    files["missing"] = str(folder / "nope.wav")
    files["memory"] = "memory://dubline-bad-inputs/nowhere.mp4"
    files["http"] = f"http://127.0.0.1:{closed_port()}/clip.mp4"
    return files


# --- the shared run ----------------------------------------------------------------------------

# case -> (title_id, language, changes to a row whose video is the plain clip and dub audio the
#          French dub, status, words the error must contain ({name}: the path of input ``name``))
BAD_ROWS: dict[str, tuple[str, str, dict, str, tuple[str, ...]]] = {
    "truncated": ("truncated", "fr", {"video": "truncated"}, "failed", ("{truncated}", "is truncated", "'mdat' box")),
    "corrupt": ("corrupt", "fr", {"video": "corrupt"}, "failed", ("{corrupt}", "not a readable video", "Invalid data")),
    "empty-video": ("empty_video", "fr", {"video": "empty"}, "failed", ("{empty}", "empty (0 bytes)")),
    "huge": ("huge", "fr", {"video": "huge"}, "failed", ("resolution 20000x20000", "above the limit")),
    "unknown-codec": ("unknown_codec", "fr", {"video": "codec"}, "failed", ("cannot decode", "unsupported codec")),
    # One title whose every dub is bad in its own way: each language fails on its own.
    "nan-dub": ("bad_dubs", "fr", {"dub_audio": "nan"}, "failed", ("{nan}", "NaN")),
    "garbage-dub": ("bad_dubs", "de", {"dub_audio": "garbage"}, "failed", ("{garbage}", "not readable audio")),
    "empty-dub": ("bad_dubs", "es", {"dub_audio": "empty_dub"}, "failed", ("{empty_dub}", "empty (0 bytes)")),
    "video-only-dub": ("bad_dubs", "it", {"dub_audio": "plain"}, "failed", ("{plain}", "no audio stream")),
    "too-long-dub": ("bad_dubs", "pt", {"dub_audio": "long"}, "failed", ("6.00 s", "more than the tolerance")),
    "missing-dub": ("missing_dub", "fr", {"dub_audio": "missing"}, "invalid", ("missing file: {missing}",)),
    "memory-missing": ("memory_missing", "fr", {"video": "memory"}, "invalid",
                       ("missing file: memory://dubline-bad-inputs/nowhere.mp4",)),
    "folder": ("folder", "fr", {"video": "folder"}, "invalid", ("not a file: {folder}",)),
    "duplicate": ("dup", "fr", {}, "invalid", ("duplicate (title_id, language) pair (dup, fr)",)),
    "path-traversal-id": ("../x", "fr", {}, "invalid", ("title_id '../x' is not a safe path component",)),
    "bad-language": ("bad_language", "xx", {}, "invalid", ("unknown language code 'xx'",)),
    # The run folder already holds a file where this title's output folder goes.
    "blocked-output": ("blocked_output", "fr", {}, "failed", ("cannot write", "outputs/blocked_output", "File exists")),
    "http-closed-port": ("http_closed_port", "fr", {"video": "http"}, "invalid",
                         ("unreadable URL: {http}", "Cannot connect")),
}
@pytest.fixture(scope="module")
def shared_run(inputs, ray_cluster, tmp_path_factory) -> tuple[dict, dict]:
    """One run on Ray over every row-level bad input and the good title; (summary, run.json)."""
    folder = tmp_path_factory.mktemp("bad_run")
    rows = [{"title_id": "odd_size", "video": inputs["odd"], "dubs": {"fr": inputs["dub"], "de": inputs["silent"]}},
            {"title_id": "vfr", "video": inputs["vfr"], "language": "fr", "dub_audio": inputs["dub"]}]
    for title_id, language, changes, _, _ in BAD_ROWS.values():
        row = {"title_id": title_id, "video": inputs["plain"], "language": language, "dub_audio": inputs["dub"]}
        row.update({k: inputs[v] for k, v in changes.items()})
        rows += [row, dict(row)] if title_id == "dup" else [row]
    catalogue = folder / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump(rows))
    out = folder / "run"
    (out / "outputs").mkdir(parents=True)
    (out / "outputs" / "blocked_output").write_text("not a folder")
    summary = localize_catalogue(catalogue=str(catalogue), out=str(out))
    return summary, json.loads((out / "run.json").read_text())


def test_the_good_title_with_an_odd_picture_size_is_dubbed_and_padded(shared_run):
    summary, state = shared_run
    title = summary["titles"]["odd_size"]
    assert title["status"] == "done" and title["error"] is None and set(title["outputs"]) == {"fr", "de"}
    for url in title["outputs"].values():
        with av.open(url) as video:
            stream = video.streams.video[0]
            assert (stream.width, stream.height) == (ODD_W + 1, ODD_H + 1)  # yuv420p: one replicated row/column
            frames = [f.to_ndarray(format="rgb24") for f in video.decode(stream)]
        assert len(frames) == ODD_FRAMES
        # The padding repeats the last column and row of the picture.
        assert np.abs(frames[0][:, -1].astype(int) - frames[0][:, -2]).mean() < 4
    assert state["titles"]["odd_size"]["stages"]["faces"]["metrics"]["tracks"] >= 1, "the face was found"


def test_a_variable_frame_rate_source_is_dubbed_on_a_constant_clock(shared_run):
    summary, _ = shared_run
    title = summary["titles"]["vfr"]
    assert title["status"] == "done" and set(title["outputs"]) == {"fr"}, title["error"]
    with av.open(title["outputs"]["fr"]) as video:
        stream = video.streams.video[0]
        times = [float(frame.time) for frame in video.decode(stream)]
    # 20 frames of 40 ms, 19 of 120 ms and the last one's 40 ms (as muxed): 3.12 s, 78 ticks of 25 fps
    assert len(times) == 78 and np.allclose(np.diff(times), 0.04)


def test_a_silent_dub_is_accepted_and_reported(shared_run):
    summary, state = shared_run
    assert "de" in summary["titles"]["odd_size"]["outputs"], summary["titles"]["odd_size"]
    audio = state["titles"]["odd_size"]["languages"]["de"]["stages"]["audio"]
    assert audio["dropped"].get("silent dub audio") == 1, audio


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_input_is_a_clear_error_of_its_own_title(shared_run, inputs, case):
    summary, state = shared_run
    title_id, language, _, status, words = BAD_ROWS[case]
    title = summary["titles"][title_id]
    error = title["error"] or ""
    assert title["status"] == status, error
    assert title["outputs"] == {}
    if status == "failed" and state["titles"][title_id]["languages"].get(language, {}).get("status") == "failed":
        # Failed in a language's own stages: the title's error holds one message per language.
        (error,) = [e for e in error.split("; ") if e.startswith(f"{title_id}: [{language}] ")]
        assert state["titles"][title_id]["languages"][language]["error"] == error
    assert error.startswith(f"{title_id}: ") or error.startswith("row ") and f"({title_id} [{language}])" in error
    for word in words:
        assert word.format(**inputs) in error, f"{word!r} not in {error!r}"
    assert "Traceback" not in error and "unexpected" not in error and "Errno" not in error
    catalogue_errors = [e for e in summary["catalogue_errors"] if f"({title_id} [" in e]
    assert bool(catalogue_errors) == (status == "invalid")


def test_the_other_titles_finished_and_the_invocation_counts_them(shared_run):
    summary, _ = shared_run
    invocation = summary["invocation"]
    assert invocation["titles_done"] == 2  # the odd-sized and the VFR title
    failed = {title_id for title_id, _, _, status, _ in BAD_ROWS.values() if status == "failed"}
    assert invocation["titles_failed"] == len(failed)
    assert set(summary["titles"]) == {"odd_size", "vfr", *(title_id for title_id, *_ in BAD_ROWS.values())}


# --- run-level bad inputs ----------------------------------------------------------------------


def tiny_catalogue(inputs, folder: Path, titles: tuple[str, ...] = ("tiny",)) -> Path:
    rows = [{"title_id": t, "video": inputs["plain"], "language": "fr", "dub_audio": inputs["dub"]} for t in titles]
    path = folder / "catalogue.yaml"
    path.write_text(yaml.safe_dump(rows))
    return path


class _RunsCode:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["random-bytes", "code-in-pickle"])
def test_corrupt_enhancer_weights_are_refused_before_any_title_and_never_unpickled(inputs, tmp_path, kind):
    weights = tmp_path / "GFPGANv1.4.pth"
    marker = tmp_path / "code-ran"
    if kind == "random-bytes":
        weights.write_bytes(np.random.default_rng(2).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    else:
        weights.write_bytes(pickle.dumps({"params_ema": {"conv_body_first.weight": _RunsCode(marker)}}))
    # Refused before any title starts: they would fail every title, after all its other stages.
    with pytest.raises(ValueError) as refused:
        localize_catalogue(catalogue=str(tiny_catalogue(inputs, tmp_path)), out=str(tmp_path / "run"),
                           executor="local", enhancer_weights=str(weights))
    message = str(refused.value)
    assert message.startswith(f"enhancer weights {weights}: not a readable torch (.pth) GFPGAN weights file")
    assert "never unpickled" in message and "weights_only` set to `False" not in message
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "run").exists()


def test_missing_enhancer_weights_are_refused_by_the_cli(inputs, tmp_path):
    result = CliRunner().invoke(main, ["run", str(tiny_catalogue(inputs, tmp_path)), "--out", str(tmp_path / "run"),
                                       "--executor", "local", "--enhancer-weights", str(tmp_path / "nope.pth"), "--quiet"])
    assert result.exit_code == 1 and f"enhancer weights {tmp_path / 'nope.pth'}: missing file" in result.output


@pytest.mark.parametrize(("arguments", "expected"), [
    (("nope.mp4", "{dub}", "--language", "fr"), "nope [fr]: missing file: {tmp}/nope.mp4"),
    (("{plain}", "nope.wav", "--language", "fr"), "plain [fr]: missing file: {tmp}/nope.wav"),
    (("{plain}", "{dub}", "--language", "xx"), "plain [xx]: unknown language code 'xx'"),
    (("{plain}", "{dub}", "-o", "out.avi"), "output out.avi: dubline writes MP4"),
], ids=["video", "audio", "language", "output"])
def test_a_single_dub_with_a_bad_input_stops_before_anything_starts(inputs, tmp_path, monkeypatch, arguments, expected):
    """At once, naming the file as typed made absolute, and no run folder is made."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(inputs["plain"], tmp_path / "plain.mp4")
    fill = {"dub": str(inputs["dub"]), "plain": "plain.mp4", "tmp": str(tmp_path)}
    result = CliRunner().invoke(main, ["dub", "-o", "out.mp4", *(a.format(**fill) for a in arguments), "--quiet"])
    assert result.exit_code == 1 and expected.format(**fill) in result.output
    assert not (tmp_path / "out.dubline").exists()


def test_manifest_of_another_schema_version_fails_only_its_title(inputs, tmp_path):
    catalogue = tiny_catalogue(inputs, tmp_path, ("tampered", "intact"))
    out = tmp_path / "run"
    first = localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
    assert {t["status"] for t in first["titles"].values()} == {"done"}
    # Another dubline wrote this title's probe manifest, and the shots stage must read it again.
    (manifest,) = (out / "manifests" / "probe" / "tampered").glob("*.parquet")
    table = pq.read_table(manifest)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"dubline.schema_version": b"99"}), manifest)
    for marker in (out / "manifests" / "shots" / "tampered").glob("*.done"):
        marker.unlink()

    again = localize_catalogue(catalogue=str(catalogue), out=str(out), executor="local")
    tampered = again["titles"]["tampered"]
    assert tampered["status"] == "failed"
    assert tampered["error"].startswith("tampered: ")
    assert str(manifest) in tampered["error"] and "schema version 99" in tampered["error"]
    assert again["titles"]["intact"]["status"] == "done"
    assert again["invocation"]["stages_failed"] == {"shots": 1}


def test_run_folder_of_another_dubline_is_refused_before_anything_runs(inputs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_state_version": 0, "titles": {}}))
    with pytest.raises(ValueError, match=r"run\.json was written by another dubline \(run state version 0, "
                                         r"expected 1\); use a new output folder"):
        localize_catalogue(catalogue=str(tiny_catalogue(inputs, tmp_path)), out=str(out), executor="local")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


@pytest.mark.parametrize("where", ["under-a-file", "sysfs"])
def test_output_location_that_cannot_be_written_stops_the_run_naming_it(inputs, tmp_path, where):
    """Root ignores file modes, so these are places that refuse even root: a path under a
    regular file, and sysfs (no files can be made there)."""
    (tmp_path / "a-file").write_text("x")
    out = str(tmp_path / "a-file" / "run") if where == "under-a-file" else f"/sys/dubline-test-{os.getpid()}"
    with pytest.raises(OSError) as info:
        localize_catalogue(catalogue=str(tiny_catalogue(inputs, tmp_path)), out=out, executor="local")
    assert out in str(info.value)
    assert ("Not a directory" if where == "under-a-file" else "Operation not permitted") in str(info.value)
    assert not os.path.exists(out)


def _can_mount_private_tmpfs() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_private_tmpfs(), reason="needs unshare and mount (CAP_SYS_ADMIN) for a private tmpfs")
def test_full_disk_for_the_outputs_fails_each_title_clearly_and_leaves_no_partial_file(inputs, tmp_path):
    """A real ENOSPC: the driver runs in a private mount namespace where the run's outputs/
    folder is a 16 KiB tmpfs (manifests fit on the real disk, the videos do not)."""
    from prefect.settings import PREFECT_API_URL

    catalogue = tiny_catalogue(inputs, tmp_path, ("first", "second"))
    out = tmp_path / "run"
    (out / "outputs").mkdir(parents=True)
    script = ("import json, os, sys; from dubline.flows.localize import localize_catalogue; "
              "s = localize_catalogue(catalogue=sys.argv[1], out=sys.argv[2], executor='local'); "
              "print('SUMMARY ' + json.dumps(s)); "
              "print('LEFT ' + json.dumps([f for _, _, fs in os.walk(sys.argv[2] + '/outputs') for f in fs]))")
    command = (f"mount -t tmpfs -o size=16k tmpfs {out / 'outputs'} && "
               f"exec {sys.executable} -c \"{script}\" {catalogue} {out}")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "ERROR"}
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=240,
                          env=env, cwd=Path(__file__).resolve().parents[1])
    printed = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines()
               if line.startswith(("SUMMARY ", "LEFT "))}
    assert done.returncode == 0 and "SUMMARY" in printed, done.stderr[-3000:]
    summary = printed["SUMMARY"]
    # Only the audio stage's finished subtitles (small, written whole) fit; no partial video.
    assert sorted(printed["LEFT"]) == ["first.fr.srt", "first.fr.vtt", "second.fr.srt", "second.fr.vtt"], \
        "a failed write must leave no partial file on the full volume"
    for title_id, language in (("first", "fr"), ("second", "fr")):
        title = summary["titles"][title_id]
        assert title["status"] == "failed"
        assert title["error"].startswith(f"{title_id}: [{language}] ")
        assert "No space left on device" in title["error"] and f"outputs/{title_id}/" in title["error"]
    state = json.loads((out / "run.json").read_text())
    assert state["invocations"][-1]["stages_failed"] == {"composite": 2}


def test_file_name_that_is_not_utf8_is_an_error_of_its_own_title(inputs, tmp_path):
    odd_name = os.fsencode(tmp_path) + b"/clip-\xff.mp4"  # not UTF-8: Python sees '\udcff'
    with open(odd_name, "wb") as f:
        f.write(Path(inputs["plain"]).read_bytes())
    catalogue = tiny_catalogue(inputs, tmp_path, ("tiny",))
    rows = yaml.safe_load(catalogue.read_text())
    rows.append({**rows[0], "title_id": "odd_name", "video": os.fsdecode(odd_name)})
    catalogue.write_text(yaml.safe_dump(rows))  # YAML keeps it as "\uDCFF"
    summary = localize_catalogue(catalogue=str(catalogue), out=str(tmp_path / "run"), executor="local")
    assert summary["titles"]["tiny"]["status"] == "done"
    odd = summary["titles"]["odd_name"]
    # Refused when the catalogue is read (the name cannot be written into a UTF-8 manifest or
    # log), as a row error naming its title and the file, with what to do; nothing is produced.
    assert odd["status"] == "invalid" and odd["outputs"] == {}
    assert odd["error"].startswith("row 2 (odd_name [fr]): file name is not valid UTF-8: ")
    assert "clip-\\udcff.mp4" in odd["error"] and odd["error"].endswith("(rename the file)")
    assert [e for e in summary["catalogue_errors"] if "(odd_name [" in e] == [odd["error"]]
