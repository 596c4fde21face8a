"""The output encode is repeatable: the same frames give the same bytes, run after run."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from dubline.stages.composite.encode import BT709, X264_CPU_AVX512, EncodePlan, add_video_stream, x264_params
from tests.test_media_colour import portrait

pytestmark = pytest.mark.timeout(120)


def moving_portrait(frames: int = 48, side: int = 224) -> list[np.ndarray]:
    """A real face picture swaying and zooming a little, as a talking head does; RGB uint8."""
    still = portrait(side)
    pictures = []
    for i in range(frames):
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), 3 * np.sin(i / 5), 1 + 0.03 * np.sin(i / 7))
        matrix[:, 2] += (2 * np.sin(i / 4), 2 * np.cos(i / 6))
        pictures.append(cv2.warpAffine(still, matrix, (side, side), borderMode=cv2.BORDER_REFLECT))
    return pictures


def encoded_video(path: str, pictures: list[np.ndarray], codec: str = "h264") -> str:
    """MD5 of the video packets of ``pictures`` encoded as the composite encodes (``codec``, MP4
    with faststart)."""
    side = pictures[0].shape[0]
    plan = EncodePlan(codec, "yuv420p", BT709, 16, "veryfast", side, side, False)
    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = add_video_stream(out, plan, Fraction(25))
        for index, rgb in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(path) as written:
        return hashlib.md5(b"".join(bytes(p) for p in written.demux(written.streams.video[0]))).hexdigest()


@pytest.mark.parametrize(("codec", "encodes"), [("h264", 12), ("hevc", 6)])
def test_the_same_frames_encode_to_the_same_bytes_every_time(tmp_path, codec, encodes):
    """With its AVX-512 code, x264 gave 9 different bitstreams in 12 encodes of these frames in one
    process on an AVX-512 Xeon (what the process had allocated before decided which); without it,
    one. On a CPU without AVX-512 this passes either way. x265 leaves AVX-512 off by itself."""
    pictures = moving_portrait()
    digests = {encoded_video(str(tmp_path / f"out{i % 2}.mp4"), pictures, codec) for i in range(encodes)}
    assert len(digests) == 1


def cpu_has_avx512() -> bool | None:
    """Whether Linux says this CPU has AVX-512 Foundation; None without /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return any(line.startswith("flags") and " avx512f" in line for line in info)
    except OSError:
        return None


def test_x264_is_kept_off_avx512_where_the_cpu_has_it():
    """On Linux the lookup of PyAV's libx264 must work: an AVX-512 CPU gets the mask, another none."""
    has_avx512 = cpu_has_avx512()
    if has_avx512 is None:
        pytest.skip("no /proc/cpuinfo: x264_params cannot look libx264 up here")
    params = x264_params()
    if not has_avx512:
        assert params == {}
        return
    key, value = params["x264-params"].split("=")
    assert key == "asm" and int(value) & X264_CPU_AVX512 == 0 and int(value) > 0
