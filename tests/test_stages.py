"""Stages run in-process with the sequential runner, on clips the tests generate."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from dubline.flows.demo import astronaut, grace_hopper, write_portrait_clip
from dubline.schemas import storage
from dubline.schemas.catalogue import OPTION_DEFAULTS
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import OUTPUTS, SHOTS, TITLES
from dubline.stages.base import StageJob, TitleError
from dubline.stages.composite import CompositeStage
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage
from dubline.stages.speech.fit import fit_policy
from tests.conftest import CLIP_FPS, CLIP_SIZE, SHOT_SECONDS

SHOT_FRAMES = round(SHOT_SECONDS * CLIP_FPS)


def probe(runner, tmp_path, source, title_id="t"):
    url = str(tmp_path / f"titles-{title_id}.parquet")
    runner.run(StageJob(ProbeStage, {}, url, title_id, rows=({"title_id": title_id, "mode": "dub", "source_url": str(source)},)))
    return url


def composite(runner, tmp_path, titles_url, audio, language="fr", **options):
    out = str(tmp_path / f"out-{language}.parquet")
    row = {
        "title_id": "t",
        "language": language,
        "titles_url": titles_url,
        "dub_audio_url": str(audio),
        "output_url": str(tmp_path / f"t.{language}.mp4"),
        "options_json": json.dumps({**OPTION_DEFAULTS, **options}),
    }
    runner.run(StageJob(CompositeStage, {}, out, "t", rows=(row,)))
    return read_rows(out, OUTPUTS)[0]


def write_tone(path, seconds, rate=16000, value=None):
    """A 440 Hz tone as 32-bit float WAV (float, so that NaN samples can be written too)."""
    samples = (np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)
    if value is not None:
        samples[:] = value
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_probe_reports_stream_facts(media, tmp_path):
    (title,) = read_rows(probe(SequentialRunner(), tmp_path, media["two_shots"]), TITLES)
    assert (title["width"], title["height"]) == (CLIP_SIZE, CLIP_SIZE)
    assert (title["fps_num"], title["fps_den"]) == (CLIP_FPS, 1)
    assert title["frame_count"] == 2 * SHOT_FRAMES
    assert title["duration_s"] == pytest.approx(2 * SHOT_SECONDS)
    assert title["video_codec"] == "h264" and title["pix_fmt"] == "yuv420p"
    assert not title["variable_frame_rate"]
    assert (title["audio_streams"], title["audio_codec"]) == (0, None)
    assert title["content_hash"] == storage.fingerprint(str(media["two_shots"]))
    (speaking,) = read_rows(probe(SequentialRunner(), tmp_path / "audio", media["with_audio"]), TITLES)
    assert (speaking["audio_streams"], speaking["audio_codec"], speaking["audio_channels"]) == (1, "aac", 1)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "not a readable video"),
        (b"\x00\x01garbage" * 100, "not a readable video"),
        ("wav", "no video stream"),
    ],
)
def test_probe_refuses_bad_sources(tmp_path, content, problem):
    source = tmp_path / "bad.mp4"
    if content == "wav":
        write_tone(source.with_suffix(".wav"), 1.0)
        source = source.with_suffix(".wav")
    else:
        source.write_bytes(content)
    with pytest.raises(TitleError, match=problem) as info:
        probe(SequentialRunner(), tmp_path, source, title_id="bad_title")
    assert info.value.title_id == "bad_title" and str(info.value).startswith("bad_title: ")


def test_shots_split_at_the_cut(media, tmp_path):
    runner = SequentialRunner()
    titles = probe(runner, tmp_path, media["two_shots"])
    runner.run(StageJob(ShotsStage, {}, str(tmp_path / "shots.parquet"), "t", input_url=titles))
    shots = read_rows(str(tmp_path / "shots.parquet"), SHOTS)
    assert [(s["start_frame"], s["end_frame"]) for s in shots] == [(0, SHOT_FRAMES), (SHOT_FRAMES, 2 * SHOT_FRAMES)]
    assert shots[1]["start_s"] == pytest.approx(SHOT_SECONDS)


def test_a_cut_in_a_large_picture_is_found_on_its_frame(tmp_path):
    """Frames wider than 256 px are compared downscaled to about 256 px (PySceneDetect's default):
    in a 1280 px clip of two portraits the cut is still found on its frame."""
    clip = tmp_path / "large.mp4"
    write_portrait_clip(clip, [astronaut(), grace_hopper()], SHOT_SECONDS, fps=CLIP_FPS, size=1280)
    runner = SequentialRunner()
    runner.run(StageJob(ShotsStage, {}, str(tmp_path / "shots.parquet"), "t", input_url=probe(runner, tmp_path, clip)))
    shots = read_rows(str(tmp_path / "shots.parquet"), SHOTS)
    assert [(s["start_frame"], s["end_frame"]) for s in shots] == [(0, SHOT_FRAMES), (SHOT_FRAMES, 2 * SHOT_FRAMES)]


def test_shots_without_cut_is_one_shot(media, tmp_path):
    runner = SequentialRunner()
    titles = probe(runner, tmp_path, media["one_shot"])
    runner.run(StageJob(ShotsStage, {}, str(tmp_path / "shots.parquet"), "t", input_url=titles))
    shots = read_rows(str(tmp_path / "shots.parquet"), SHOTS)
    assert [(s["start_frame"], s["end_frame"]) for s in shots] == [(0, SHOT_FRAMES)]


def test_composite_keeps_picture_and_muxes_dub(media, tmp_path):
    runner = SequentialRunner()
    output = composite(runner, tmp_path, probe(runner, tmp_path, media["two_shots"]), media["dub_fr"])
    assert output["frame_count"] == 2 * SHOT_FRAMES and output["fps"] == CLIP_FPS
    # The 1.4 s French dub under 2.4 s of picture (within the tolerance): padded with silence.
    assert output["audio_fit"] == "padded"
    with av.open(output["video_url"]) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", CLIP_SIZE, CLIP_SIZE)
        assert video.average_rate == CLIP_FPS
        assert (audio.codec_context.name, audio.codec_context.sample_rate, audio.codec_context.channels) == ("aac", 48000, 2)
        assert float(audio.duration * audio.time_base) == pytest.approx(2 * SHOT_SECONDS, abs=0.03)
        sound = np.hstack([f.to_ndarray() for f in container.decode(audio=0)])[0]
    with av.open(output["video_url"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    speech, padding = sound[int(0.2 * 48000) : int(1.2 * 48000)], sound[int(1.6 * 48000) :]
    assert np.sqrt(np.mean(padding**2)) < 0.01 * np.sqrt(np.mean(speech**2)), "the padding is silence (-40 dB)"
    assert len(frames) == 2 * SHOT_FRAMES
    with av.open(str(media["two_shots"])) as source:
        first = next(source.decode(video=0)).to_ndarray(format="rgb24")
    # Only re-encoding separates output from source (no face stage yet): close, not equal.
    assert np.abs(frames[0].astype(int) - first).mean() < 3.0


def test_composite_pads_odd_sizes_to_even(tmp_path):
    frames = [np.ascontiguousarray(astronaut()[:171, :255]) for _ in range(10)]
    # libx264 refuses odd sizes, so the odd source is MJPEG in Matroska.
    with av.open(str(tmp_path / "odd.mkv"), "w") as out:
        stream = out.add_stream("mjpeg", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = 255, 171, "yuvj444p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, CLIP_FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    write_tone(tmp_path / "tone.wav", 10 / CLIP_FPS)
    runner = SequentialRunner()
    output = composite(runner, tmp_path, probe(runner, tmp_path, tmp_path / "odd.mkv"), tmp_path / "tone.wav")
    assert (output["width"], output["height"], output["frame_count"]) == (256, 172, 10)


@pytest.mark.parametrize(
    "make_audio, problem",
    [
        (lambda p: write_tone(p, 8.0), "more than the tolerance"),
        (lambda p: write_tone(p, 2.4, value=float("nan")), "NaN"),
        (lambda p: p.write_bytes(b"RIFF....garbage"), "not readable audio"),
    ],
)
def test_composite_refuses_bad_dub_audio(media, tmp_path, make_audio, problem):
    audio = tmp_path / "dub.wav"
    make_audio(audio)
    runner = SequentialRunner()
    titles = probe(runner, tmp_path, media["two_shots"])
    with pytest.raises(TitleError, match=problem):
        composite(runner, tmp_path, titles, audio)
    assert not (tmp_path / "t.fr.mp4").exists(), "a failed title must leave no output file"


def test_composite_refuses_video_without_audio_as_dub(media, tmp_path):
    runner = SequentialRunner()
    titles = probe(runner, tmp_path, media["two_shots"])
    with pytest.raises(TitleError, match="no audio stream"):
        composite(runner, tmp_path, titles, media["one_shot"])


@pytest.mark.parametrize(
    "audio_s, picture_s, expected",
    [(5.0, 5.0, "exact"), (5.01, 5.0, "exact"), (4.0, 5.0, "padded"), (6.0, 5.0, "trimmed")],
)
def test_fit_policy(audio_s, picture_s, expected):
    assert fit_policy(audio_s, picture_s, fps=25.0, tolerance_s=2.0) == expected


def test_fit_policy_refuses_above_tolerance():
    with pytest.raises(ValueError) as longer:
        fit_policy(7.5, 5.0, fps=25.0, tolerance_s=1.0)
    assert str(longer.value) == ("dub audio is 7.50 s but the picture is 5.00 s: 2.50 s longer, more than the "
                                 "tolerance of 1.00 s (catalogue option audio_tolerance_s, dubline dub --audio-tolerance)")
    with pytest.raises(ValueError, match=r"0.10 s but the picture is 5.00 s: 4.90 s shorter"):
        fit_policy(0.1, 5.0, fps=25.0, tolerance_s=2.0)
