"""Time: variable frame rate on a constant frame clock, start offsets and edit lists, audio that
starts later than the picture, and audio/video sync measured end to end with a flash and a click."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import OUTPUTS, TITLES
from dubline.stages.base import StageJob
from dubline.stages.composite import CompositeStage
from dubline.stages.media import FrameClock, describe, frames, read_audio, rgb_frames
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from tests.conftest import decoded

pytestmark = pytest.mark.timeout(120)

MS = Fraction(1, 1000)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"


def numbered(index: int, side: int = 64) -> np.ndarray:
    """A picture that names its frame: ``index`` in binary as 8 black/white bars."""
    bits = [(index >> bit) & 1 for bit in range(8)]
    return np.repeat(np.repeat(np.array(bits, np.uint8)[None, :, None] * 255, side // 8, axis=1), side, axis=0).repeat(3, 2)


def number_of(rgb: np.ndarray) -> int:
    bars = rgb.reshape(rgb.shape[0], 8, -1, 3).mean(axis=(0, 2, 3)) > 128
    return int(sum(int(bit) << position for position, bit in enumerate(bars)))


def grey_clip(path: Path, pts_ms: list[int], levels: list[int] | None = None, side: int = 64,
              audio: tuple[np.ndarray, int, int] | None = None, gop: int = 250) -> Path:
    """H.264 (MP4) frames at the given times (ms): frame i shows its number (``numbered``), or a
    flat grey of ``levels[i]``. ``audio``: (mono float samples, rate, first sample's time in ms)
    muxed beside it as AAC."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv444p"
        stream.options = {"preset": "ultrafast", "qp": "0", "g": str(gop), "bf": "0"}
        stream.codec_context.time_base = MS
        sound = None
        if audio is not None:
            samples, rate, start_ms = audio
            sound = out.add_stream("aac", rate=rate, layout="mono")
        for index, t in enumerate(pts_ms):
            picture = numbered(index, side) if levels is None else np.full((side, side, 3), levels[index], np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = t, MS
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            offset = round(start_ms * rate / 1000)
            for start in range(0, len(samples), 1024):
                chunk = samples[start:start + 1024].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, offset + start, Fraction(1, rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def shown_numbers(url: str) -> list[int]:
    return [number_of(rgb) for _, rgb in rgb_frames(describe(url))]


def phone_vfr_times(seed: int = 0) -> list[int]:
    """87 frames over 5 s with steps of 40–160 ms, as phones and screen recorders write them."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([40, 80, 120, 160], size=86, p=[0.8, 0.1, 0.05, 0.05])
    steps = np.round(steps * (4960 / steps.sum()) / 40) * 40  # keep them on the 25 fps grid
    steps[-1] += 4960 - steps.sum()
    return [0, *np.cumsum(steps).astype(int).tolist()]


def test_vfr_is_shown_on_a_constant_clock_with_frames_held_as_a_player_shows_them(tmp_path):
    times = phone_vfr_times()
    assert len(times) == 87 and times[-1] == 4960
    video = describe(str(grey_clip(tmp_path / "vfr.mp4", times)))
    assert video.clock == FrameClock(Fraction(25), 125, 0.0, resampled=True)  # 5 s at the base rate
    assert video.duration_s == pytest.approx(5.0)
    assert video.source_frames == 87
    shown = shown_numbers(video.url)
    assert len(shown) == 125
    # Tick i shows the last frame whose time is at most half a tick after it.
    assert shown == [int(np.searchsorted(times, i * 40 + 20, side="right")) - 1 for i in range(125)]


def test_jittered_timestamps_land_on_the_nearest_tick(tmp_path):
    times = [0, 41, 79, 121, 199, 242, 280, 322, 478, 521]  # a 25 fps grid, ±2 ms of jitter, with gaps
    video = describe(str(grey_clip(tmp_path / "jitter.mp4", times)))
    assert video.clock.resampled and video.clock.frame_count == 14
    assert shown_numbers(video.url) == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 7, 7, 8, 9]


def test_a_constant_rate_source_keeps_every_frame(tmp_path):
    video = describe(str(grey_clip(tmp_path / "cfr.mp4", [40 * i for i in range(30)])))
    assert video.clock == FrameClock(Fraction(25), 30, 0.0, resampled=False)
    assert shown_numbers(video.url) == list(range(30))


@pytest.mark.skipif(not (SHARED / "talk_en_man_office.mp4").exists(), reason="needs ../shared/data")
def test_the_shared_mildly_vfr_clip_runs_on_its_30_fps_base_rate():
    video = describe(str(SHARED / "talk_en_man_office.mp4"))  # steps of 1/30 and 1/15 s, 135 frames
    assert video.clock.resampled and video.clock.rate == 30
    assert video.clock.frame_count == 183 and video.duration_s == pytest.approx(6.1, abs=0.01)
    assert video.clock.start_s == pytest.approx(507 / 15360)  # its first frame's PTS


def test_an_edit_list_that_starts_inside_a_gop_shows_only_the_edited_frames(tmp_path):
    ffmpeg = shutil.which("ffmpeg") or _imageio_ffmpeg()
    whole = grey_clip(tmp_path / "whole.mp4", [40 * i for i in range(50)], gop=50)
    cut = tmp_path / "cut.mp4"  # stream copy from 0.5 s: an edit list past 13 frames the GOP still holds
    subprocess.run([ffmpeg, "-v", "error", "-ss", "0.5", "-i", str(whole), "-c", "copy", str(cut)], check=True)
    with av.open(str(cut)) as container:
        assert sum(1 for p in container.demux(video=0) if p.size) == 50  # all of the GOP is stored
    video = describe(str(cut))
    shown = shown_numbers(str(cut))
    assert video.clock.frame_count == video.source_frames == len(shown) == 37
    assert shown == list(range(13, 50))


def _imageio_ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def click(rate: int, seconds: float, at_s: float) -> np.ndarray:
    """Silence with one 10 ms full-scale click starting at ``at_s``."""
    samples = np.zeros(round(rate * seconds), np.float32)
    start = round(at_s * rate)
    samples[start:start + rate // 100] = 0.9
    return samples


def click_time(samples: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(samples) > 0.3)) / rate


@pytest.mark.parametrize("audio_start_ms", [500, 0])
def test_source_audio_is_read_on_the_pictures_clock(tmp_path, audio_start_ms):
    """The audio stream starts later than the video (an empty edit): sample 0 is the first frame."""
    rate = 16000
    clip = grey_clip(tmp_path / "late.mp4", [40 * i for i in range(75)], audio=(click(rate, 2.0, 0.25), rate, audio_start_ms))
    assert click_time(read_audio(str(clip), rate), rate) == pytest.approx(0.25 + audio_start_ms / 1000, abs=0.005)


def test_source_video_starting_later_than_its_audio_drops_the_audio_before_it(tmp_path):
    rate = 16000
    clip = grey_clip(tmp_path / "video_late.mp4", [400 + 40 * i for i in range(50)], audio=(click(rate, 3.0, 1.0), rate, 0))
    assert describe(str(clip)).clock.start_s == pytest.approx(0.4)
    assert click_time(read_audio(str(clip), rate), rate) == pytest.approx(0.6, abs=0.005)


def dub(tmp_path: Path, source: Path, dub_audio: Path) -> tuple[dict, dict]:
    runner = SequentialRunner()
    titles, outputs = str(tmp_path / "titles.parquet"), str(tmp_path / "outputs.parquet")
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(source)},)))
    options = {"crf": None, "preset": "ultrafast", "audio_tolerance_s": 2.0}
    row = {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(dub_audio),
           "output_url": str(tmp_path / "out.mp4"), "options_json": json.dumps(options), "render_url": None}
    runner.run(StageJob(CompositeStage, {}, outputs, "t", rows=(row,)))
    return read_rows(titles, TITLES)[0], read_rows(outputs, OUTPUTS)[0]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("start_ms", [0, 700])
def test_flash_and_click_stay_within_one_frame_through_a_vfr_dub(tmp_path, start_ms):
    """A VFR source (dense frames first, sparse later; optionally starting at 0.7 s) flashes white
    2.0 s after its first frame; the dub clicks at 2.0 s. In the output they meet within one frame.
    On the old per-decoded-frame clock the flash (source frame 40 of 58) would land at 40 / 11.6 fps
    = 3.4 s."""
    times = [40 * i for i in range(40)] + [1600 + 400 + 200 * i for i in range(18)]  # flash at index 40: 2.0 s
    levels = [30] * len(times)
    levels[40] = 255
    source = grey_clip(tmp_path / "vfr.mp4", [start_ms + t for t in times], levels=levels)
    rate = 48000
    title, output = dub(tmp_path, source, write_wav(tmp_path / "dub.wav", click(rate, 5.4, 2.0), rate))
    assert title["variable_frame_rate"] and title["fps"] == 25 and title["start_s"] == pytest.approx(start_ms / 1000)
    assert output["frame_count"] == title["frame_count"] and 5.4 <= title["duration_s"] <= 5.6
    with av.open(output["video_url"]) as container:
        stream = container.streams.video[0]
        brightness = [(float(f.time), f.to_ndarray(format="rgb24").mean()) for f in container.decode(stream)]
    with av.open(output["video_url"]) as container:
        decoded = list(container.decode(audio=0))
    sound, first_audio = np.concatenate([f.to_ndarray()[0] for f in decoded]), decoded[0].time
    flash_s = next(t for t, level in brightness if level > 200)
    click_s = first_audio + click_time(sound, rate)
    assert flash_s == pytest.approx(2.0, abs=0.5 / 25)
    assert abs(flash_s - click_s) <= 1 / 25, (flash_s, click_s)


def test_shot_cuts_are_numbered_on_the_titles_clock(tmp_path):
    """A VFR source that starts late: the shots stage's cut is the clock frame the other stages
    see the new shot on (the first bright one), not a frame count of the source's own."""
    from dubline.schemas.manifests import SHOTS
    from dubline.stages.media import ShownVideo
    from dubline.stages.shots import ShotsStage

    times = [t for t in range(300, 2000, 40) if not 1500 <= t < 1700] + list(range(2000, 2800, 80))  # a gap, then 80 ms steps
    levels = [40 if t < 1700 else 210 for t in times]
    source = grey_clip(tmp_path / "vfr_cut.mp4", times, levels)
    runner = SequentialRunner()
    titles, shots = str(tmp_path / "titles.parquet"), str(tmp_path / "shots.parquet")
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(source)},)))
    runner.run(StageJob(ShotsStage, {}, shots, "t", input_url=titles))
    (title,) = read_rows(titles, TITLES)
    first_bright = next(i for i, rgb in rgb_frames(ShownVideo.from_title(title)) if rgb.mean() > 128)
    assert [(s["start_frame"], s["end_frame"]) for s in read_rows(shots, SHOTS)] == [
        (0, first_bright), (first_bright, title["frame_count"])]
    assert title["variable_frame_rate"] and first_bright != levels.index(210)  # the naive count would be wrong


def gop_clip(path: Path, frames: int, x264_params: str) -> Path:
    """H.264 at 25 fps with B-frames and a keyframe every 10 frames; frame i shows its number."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv444p"
        stream.options = {"preset": "veryfast", "qp": "0", "g": "10", "keyint_min": "10", "bf": "2",
                          "x264-params": x264_params}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(numbered(index), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("x264_params", ["scenecut=0", "scenecut=0:open-gop=1"])
def test_decoding_from_a_frame_starts_at_its_keyframe_and_gives_the_frames_from_there(tmp_path, x264_params):
    video = describe(str(gop_clip(tmp_path / "gop.mp4", 40, x264_params)))
    assert [index for index, _ in video.keyframes] == [0, 10, 20, 30]
    for start in (0, 7, 10, 13, 30, 39):
        assert [number_of(f.to_ndarray(format="rgb24")) for f in frames(video, "rgb", start)] == list(range(start, 40))


def test_a_keyframe_the_seek_does_not_reach_is_left_for_decoding_from_the_first_frame(tmp_path):
    video = describe(str(gop_clip(tmp_path / "gop.mp4", 40, "scenecut=0")))
    wrong = dataclasses.replace(video, keyframes=((0, video.keyframes[0][1]), (20, video.keyframes[1][1] + 1)))
    assert [number_of(f.to_ndarray(format="rgb24")) for f in frames(wrong, "rgb", 25)] == list(range(25, 40))


def test_a_vfr_source_is_decoded_from_its_first_frame_to_any_start(tmp_path):
    source = grey_clip(tmp_path / "vfr.mp4", [0, 40, 80, 200, 240, 400, 440, 480])
    video = describe(str(source))
    assert video.clock.resampled and video.keyframes == ()
    everything = [number_of(f.to_ndarray(format="rgb24")) for f in frames(video, "rgb")]
    assert [number_of(f.to_ndarray(format="rgb24")) for f in frames(video, "rgb", 5)] == everything[5:]


MAP_CLIP = Path(os.environ.get("DUBLINE_SAMPLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")) \
    / "video" / "talk_en_man_map.mp4"


@pytest.mark.parametrize(("source", "codec", "crf"), [("numbered", "h264", 0), ("numbered", "hevc", 22), ("map", "h264", 18)])
def test_a_title_encoded_in_segments_and_joined_is_the_title_encoded_whole(tmp_path, source, codec, crf):
    """Every frame in its place and the dub audio as in one job's output, with decode timestamps
    rising across the joins. Lossless H.264 (CRF 0) of numbered frames, where the segments' own
    encodes cannot hide a wrong frame: the very same frames. HEVC: the Apple-playable hvc1 tag.
    The shared map clip at the default CRF (skipped without ../shared): with B-frames."""
    if source == "map" and not MAP_CLIP.exists():
        pytest.skip("needs ../shared/data")
    clip = MAP_CLIP if source == "map" else gop_clip(tmp_path / "gop.mp4", 40, "scenecut=0")
    runner = SequentialRunner()
    titles = str(tmp_path / "titles.parquet")
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(clip)},)))
    frames = read_rows(titles, TITLES)[0]["frame_count"]
    dub_audio = write_wav(tmp_path / "dub.wav", click(48000, frames / 25, 0.9), 48000)
    row = {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(dub_audio),
           "options_json": json.dumps({"crf": crf, "preset": "veryfast", "audio_tolerance_s": 2.0, "video_codec": codec}),
           "render_url": None}

    def composite(name: str, **fields) -> dict:
        out = str(tmp_path / f"{name}.parquet")
        runner.run(StageJob(CompositeStage, {}, out, "t", rows=(
            {**row, "output_url": str(tmp_path / f"{name}.mp4"), "chunks_url": str(tmp_path / name), **fields},)))
        return out

    whole = read_rows(composite("whole"), OUTPUTS)[0]
    cuts = [0, frames // 3, 2 * frames // 3 + 1, frames]
    segments = [composite(f"range{i}", frame_range=(a, b)) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    assert [read_rows(url, OUTPUTS)[0]["frame_count"] for url in segments] == list(np.diff(cuts))
    joined = read_rows(composite("joined", segments=segments), OUTPUTS)[0]
    assert joined["frame_count"] == whole["frame_count"] == frames and joined["audio_codec"] == "aac"
    got, want = decoded(joined["video_url"]), decoded(whole["video_url"])
    assert len(got[0]) == len(want[0]) == frames and np.array_equal(got[1], want[1])
    with av.open(joined["video_url"]) as container:
        stream = container.streams.video[0]
        tag = stream.codec_context.codec_tag
        pts, dts = np.array([(p.pts, p.dts) for p in container.demux(stream) if p.dts is not None]).T
    assert np.all(np.diff(dts) > 0)
    if source == "numbered":
        assert [number_of(f) for f in got[0]] == list(range(frames))
    if codec == "hevc":
        assert tag == "hvc1"
    elif crf == 0:
        assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0], strict=True))
    else:
        assert np.any(np.diff(pts) < 0), "B-frames: presentation order differs from decode order"
        # each joined frame is the whole encode's frame at its own index, up to encode noise
        psnr = [10 * np.log10(255 ** 2 / max(np.mean((a.astype(float) - b) ** 2), 1e-9)) for a, b in zip(got[0], want[0])]
        assert min(psnr) > 35
