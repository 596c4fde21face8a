"""Colour: the output keeps the source's colour description and bit depth; faces are analysed in a
correctly converted SDR view; HDR (HLG, PQ) stays HDR or, on request, is tone-mapped to SDR; full
range stays full range; only the pixels a pasted face covers change."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from dubline.flows.demo import astronaut
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import OUTPUTS, TITLES
from dubline.stages.base import StageJob
from dubline.stages.composite import CompositeStage
from dubline.stages.composite.encode import add_video_stream, plan_encode
from dubline.stages.composite.paste import paste
from dubline.stages.composite.stage import _Output, paste_box
from dubline.stages.media import Colour, codec_threads, describe, frames, rgb_frames
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from tests.conftest import write_silence

pytestmark = pytest.mark.timeout(180)

BT709 = Colour(1, 1, 1, 1, 8)


def portrait(side: int = 128) -> np.ndarray:
    """A real face picture (scikit-image's astronaut), ``side`` px square, RGB uint8."""
    step = 512 // side
    return np.ascontiguousarray(astronaut()[::step, ::step][:side, :side])


def sdr_clip(path: Path, rgb: np.ndarray, frames: int = 10, colour: Colour = BT709, pix_fmt: str = "yuv420p",
             codec: str = "libx264") -> Path:
    """``rgb`` as a near-lossless clip in ``colour`` (matrix and range used for RGB -> YUV and tagged)."""
    matrix = {1: "ITU709", 2: None, 5: "ITU601", 6: "ITU601"}[colour.matrix]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.height, stream.width = rgb.shape[:2]
        stream.pix_fmt = pix_fmt
        stream.options = {"preset": "ultrafast", "crf": "4"} if codec == "libx265" else {"preset": "ultrafast", "qp": "0"}
        if codec == "libx265":
            stream.options = {**stream.options, "x265-params": "log-level=error"}
        ctx = stream.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = (colour.primaries, colour.transfer,
                                                                               colour.matrix, colour.range)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=matrix, dst_color_range=colour.range or None)
            frame.color_primaries, frame.color_trc = colour.primaries, colour.transfer
            frame.colorspace, frame.color_range = colour.matrix, colour.range
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@functools.cache
def ffmpeg_with_zscale() -> str | None:
    """The FFmpeg command-line tool (imageio-ffmpeg's) if it has zscale (zimg), the reference HDR converter."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        listed = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=30,
                                check=False).stdout
    except Exception:  # noqa: BLE001 - any failure means: no reference converter here
        return None
    return exe if " zscale " in listed else None


def hdr_from_sdr(sdr: Path, out: Path, transfer: str) -> Path:
    """The SDR clip graded to HDR as BT.2408 says (SDR white -> HDR reference white, 203 cd/m²) by
    zimg (FFmpeg's zscale): 10-bit HEVC, BT.2020, in a .mov like phones write."""
    exe = ffmpeg_with_zscale()
    if exe is None:
        pytest.skip("needs an ffmpeg with zscale (imageio-ffmpeg's) to build HDR inputs")
    subprocess.run([exe, "-v", "error", "-y", "-i", str(sdr), "-vf",
                    f"zscale=tin=bt709:t={transfer}:p=bt2020:m=bt2020nc:r=tv:npl=203,format=yuv420p10le",
                    "-c:v", "libx265", "-crf", "8", "-x265-params",
                    f"log-level=error:colorprim=bt2020:transfer={transfer}:colormatrix=bt2020nc",
                    "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc", str(out)],
                   check=True, timeout=60)
    return out


def dub(tmp_path: Path, source: Path, **options) -> tuple[dict, dict]:
    """Probe and composite (no face pasted): the title row and the output row."""
    runner = SequentialRunner()
    titles, outputs = str(tmp_path / "titles.parquet"), str(tmp_path / "outputs.parquet")
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(source)},)))
    options = {"crf": None, "preset": "ultrafast", "audio_tolerance_s": 2.0, **options}
    row = {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(write_silence(tmp_path / "dub.wav", 0.4)),
           "output_url": str(tmp_path / "out.mp4"), "options_json": json.dumps(options), "render_url": None}
    runner.run(StageJob(CompositeStage, {}, outputs, "t", rows=(row,)))
    return read_rows(titles, TITLES)[0], read_rows(outputs, OUTPUTS)[0]


def stream_colour(url: str) -> tuple[str, str, Colour]:
    """(codec, pixel format, colour description) of the first decoded frame of ``url``."""
    with av.open(url) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        return stream.codec_context.name, frame.format.name, Colour.of_frame(frame)


def first_sdr(url: str) -> np.ndarray:
    return next(rgb_frames(describe(url), "sdr"))[1]


@pytest.mark.parametrize("transfer, code", [("arib-std-b67", 18), ("smpte2084", 16)], ids=["hlg", "pq"])
def test_hdr_is_analysed_in_sdr_and_written_back_as_hdr_like_the_source(tmp_path, transfer, code):
    picture = portrait()
    sdr = sdr_clip(tmp_path / "sdr.mp4", picture)
    shown = first_sdr(str(sdr))
    hdr = hdr_from_sdr(sdr, tmp_path / "hdr.mov", transfer)

    video = describe(str(hdr))
    assert video.colour == Colour(9, code, 9, 1, 10)
    analysed = first_sdr(str(hdr))
    assert abs(analysed.mean() - shown.mean()) < 3, "the SDR view shows the picture as its SDR original"
    naive = next(rgb_frames(video, "rgb"))[1]  # HDR code values read as if BT.709: what broke faces before
    assert abs(naive.mean() - shown.mean()) > 15
    red = picture[..., 0].astype(int) - picture[..., 1] > 60  # the astronaut's red flag patch
    assert red.sum() > 50 and (analysed[red, 0].astype(int) - analysed[red, 1] > 40).mean() > 0.9  # no hue shift

    title, output = dub(tmp_path, hdr)
    assert (title["bit_depth"], title["color_transfer"]) == (10, code)
    assert (output["video_codec"], output["pix_fmt"]) == ("hevc", "yuv420p10le")
    codec, pix_fmt, colour = stream_colour(output["video_url"])
    assert (codec, pix_fmt, colour) == ("hevc", "yuv420p10le", Colour(9, code, 9, 1, 10))
    assert abs(first_sdr(output["video_url"]).mean() - shown.mean()) < 3


def hlg_highlights(path: Path) -> Path:
    """A 10-bit HLG clip of two patches: reference white (75 % signal) and a highlight (95 %)."""
    luma = np.full((64, 128), 64 + round(0.75 * 876), np.uint16)
    luma[:, 64:] = 64 + round(0.95 * 876)
    planes = np.vstack([luma, np.full((32, 128), 512, np.uint16)])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p10le"
        stream.options = {"preset": "ultrafast", "crf": "4", "x265-params": "log-level=error"}
        ctx = stream.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = 9, 18, 9, 1
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p10le")
            frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range = 9, 18, 9, 1
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_sdr_delivery_tone_maps_and_keeps_highlights_apart(tmp_path):
    source = hlg_highlights(tmp_path / "hlg.mov")
    analysed = first_sdr(str(source))
    assert analysed[:, :64].mean() > 250 and analysed[:, 64:].mean() > 250, "analysis: reference white is SDR white"

    _, output = dub(tmp_path, source, hdr_output="sdr")
    assert (output["video_codec"], output["pix_fmt"], output["color_transfer"]) == ("h264", "yuv420p", 1)
    codec, pix_fmt, colour = stream_colour(output["video_url"])
    assert (codec, pix_fmt, colour) == ("h264", "yuv420p", Colour(1, 1, 1, 1, 8))
    with av.open(output["video_url"]) as container:
        delivered = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    white, highlight = delivered[8:-8, 8:56].mean(), delivered[8:-8, 72:120].mean()
    assert 150 < white < 200 and highlight > white + 30, (white, highlight)  # rolled off, not clipped


def test_full_range_stays_full_range(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 128).astype(np.uint8)[None, :, None], (64, 1, 3))
    source = sdr_clip(tmp_path / "full.mp4", ramp, colour=Colour(1, 1, 1, 2, 8))
    title, output = dub(tmp_path, source)
    assert title["color_range"] == 2
    assert output["color_range"] == 2 and stream_colour(output["video_url"])[2] == Colour(1, 1, 1, 2, 8)
    with av.open(output["video_url"]) as container:
        frame = next(container.decode(video=0))
        luma = frame.to_ndarray()[:64]
        rgb = frame.to_ndarray(format="rgb24")
    assert luma.min() <= 2 and luma.max() >= 253, "full-range codes, not squeezed into 16-235"
    assert np.abs(rgb.astype(int) - first_sdr(str(source))).mean() < 2.5  # a range bug is ~10


@pytest.mark.parametrize("colour, pix_fmt, codec, depth", [
    (BT709, "yuv420p", "libx264", 8),
    (Colour(6, 6, 6, 1, 8), "yuv420p", "libx264", 8),  # BT.601 (SMPTE 170M), as SD and many phones tag it
    (Colour(1, 1, 1, 1, 10), "yuv420p10le", "libx265", 10),  # 10-bit SDR HEVC
])
def test_the_colour_description_and_bit_depth_are_kept(tmp_path, colour, pix_fmt, codec, depth):
    source = sdr_clip(tmp_path / "src.mp4", portrait(), colour=colour, pix_fmt=pix_fmt, codec=codec)
    _, output = dub(tmp_path, source)
    written = stream_colour(output["video_url"])
    assert written[1] == pix_fmt and written[2] == Colour(colour.primaries, colour.transfer, colour.matrix, 1, depth)
    assert written[0] == ("hevc" if depth > 8 else "h264")
    shown_before, shown_after = first_sdr(str(source)), first_sdr(output["video_url"])
    assert np.abs(shown_before.astype(int) - shown_after).mean() < 2.5


def test_codecs_use_the_cpus_the_worker_was_given(tmp_path, monkeypatch):
    """A Ray worker's OMP_NUM_THREADS (its CPUs) bounds the decoder's and x264's threads; unset, FFmpeg
    picks (0); the output is the same picture either way."""
    source = sdr_clip(tmp_path / "src.mp4", portrait(64), colour=BT709)
    video = describe(str(source))
    plan = plan_encode(video, "h264", {"crf": 18}, video.width, video.height)
    decoded = {}
    for value, threads in (("1", 1), ("3", 3), (None, 0), ("many", 0)):
        if value is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert codec_threads() == threads
        with av.open(str(tmp_path / "out.mp4"), "w") as out:
            assert add_video_stream(out, plan, video.clock.rate).codec_context.thread_count == threads
        decoded[value] = [f.to_ndarray() for f in frames(video, "native")]
    assert all(np.array_equal(a, b) for a, b in zip(decoded["1"], decoded[None])) and len(decoded["1"]) == len(decoded[None]) > 1


def test_pasting_through_a_box_writes_what_a_whole_frame_paste_writes(tmp_path):
    """Only a box around the crops goes through RGB: two crops far apart, one over the frame's
    corner, give the pixels of a whole-frame RGB paste (within a level: the crop is warped on the
    box's own grid) and leave every other sample as decoded."""
    source = sdr_clip(tmp_path / "src.mp4", portrait(200), colour=BT709)
    video = describe(str(source))
    plan = plan_encode(video, "h264", {"crf": 18}, video.width, video.height)
    output = _Output(plan, video)
    with av.open(str(source)) as container:
        base = output.base(next(container.decode(video=0)))
    rng = np.random.default_rng(0)
    crop = np.dstack([rng.integers(0, 256, (40, 40, 3)), np.full((40, 40), 255)]).astype(np.uint8)
    crop[:, :, 3][[0, -1]] = 128  # a feathered edge: the seam colour match runs
    crops = [(crop, np.array([[0.9, 0.1, 20.3], [-0.1, 0.9, 30.7]])), (crop, np.array([[1.0, 0, 175.5], [0, 1.0, 170.2]]))]
    assert paste_box([(40, 40, a) for _, a in crops], 200, 200) == (0, 16, 200, 200)
    before = base.to_ndarray()
    pasted = output.finish(output.paste(base, crops)).to_ndarray().astype(int)

    # What a whole-frame paste writes: the frame through RGB, then only the covered samples back.
    whole = base.to_ndarray(format="rgb24")
    covered = np.zeros(whole.shape[:2], bool)
    for rgba, affine in crops:
        covered |= paste(whole, rgba, affine)
    back = av.VideoFrame.from_ndarray(whole, format="rgb24").reformat(
        format="yuv420p", dst_colorspace="ITU709", dst_color_range=base.color_range or None).to_ndarray()
    chroma_written = covered.reshape(100, 2, 100, 2).any(axis=(1, 3)).reshape(50, 200)  # U, then V: 50 rows each
    written = np.vstack([covered, chroma_written, chroma_written])
    reference = np.where(written, back, before).astype(int)
    assert np.abs(pasted - reference).max() <= 1 and (pasted != reference).mean() < 0.01
    assert np.array_equal(pasted[~written], before[~written])


def test_the_paste_box_holds_its_crops_on_whole_chroma_blocks():
    crop = (64, 64, np.array([[1.0, 0, 101.0], [0, 1.0, 37.0]]))  # x 101..165, y 37..101
    x0, y0, x1, y1 = paste_box([crop], 640, 480)
    assert (x0, y0, x1, y1) == (80, 16, 176, 112)  # 8 px around it, out to multiples of 16
    assert paste_box([crop], 170, 110) == (80, 16, 170, 110)  # clipped to the (even) frame
    outside = paste_box([(64, 64, np.array([[1.0, 0, 900.0], [0, 1.0, 900.0]]))], 640, 480)
    assert 0 <= outside[0] < outside[2] <= 640 and 0 <= outside[1] < outside[3] <= 480  # a valid, if useless, box


def test_a_pasted_face_changes_only_the_pixels_it_covers_in_the_right_matrix(tmp_path):
    """The paste goes through RGB only where the crop lands: every other luma and chroma sample is
    bit-identical (a whole-frame RGB round trip capped small clips at ~38 dB before), and the pasted
    colour comes back through the source's own matrix (BT.709 here, not swscale's BT.601 default)."""
    source = sdr_clip(tmp_path / "src.mp4", portrait(), colour=BT709)
    video = describe(str(source))
    plan = plan_encode(video, "h264", {"crf": 18}, video.width, video.height)
    output = _Output(plan, video)
    with av.open(str(source)) as container:
        decoded = next(container.decode(video=0))
    base = output.base(decoded)
    crop = np.zeros((32, 32, 4), np.uint8)
    crop[8:24, 8:24] = (200, 40, 40, 255)  # an opaque saturated red square
    to_frame = np.array([[1.0, 0, 40], [0, 1.0, 50]])  # at x 48..63, y 58..73
    pasted = output.finish(output.paste(base, [(crop, to_frame)]))
    before, after = base.to_ndarray(), pasted.to_ndarray()
    luma_changed = np.argwhere(before[:128] != after[:128])
    assert luma_changed[:, 0].min() >= 58 and luma_changed[:, 0].max() <= 73
    assert luma_changed[:, 1].min() >= 48 and luma_changed[:, 1].max() <= 63
    chroma_changed = np.argwhere(before[128:] != after[128:])
    assert len(chroma_changed) and len(chroma_changed) <= 2 * 9 * 9
    rgb = pasted.to_ndarray(format="rgb24")
    assert np.abs(rgb[60:72, 50:62].astype(int) - (200, 40, 40)).max() <= 4
