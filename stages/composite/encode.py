"""How the output video is encoded: close to the source unless told otherwise.

Policy (README, "Media it takes"):
- codec: HEVC (libx265) when the source is HEVC, has more than 8 bits per sample or is HDR and
  stays HDR; H.264 (libx264) otherwise and for SDR delivery. ``video_codec`` ("h264", "hevc")
  overrides it.
- samples: 4:2:0, the player-safe chroma format; 10-bit when the source has more than 8 bits
  (H.264 High 10 or HEVC Main 10), else 8-bit.
- colour: the source's colour primaries, transfer, matrix and range are written as they are
  (full range stays full range). ``hdr_output="sdr"`` delivers an HDR source as 8-bit BT.709 SDR
  through FFmpeg's colour-managed scaler with its perceptual tone curve (``stages.media.sdr_filter``).
  A still image (sRGB) is written as BT.709, limited range.
- quality: ``crf`` when given; otherwise chosen from the source's own bits per pixel (``auto_crf``).
- size: at most what H.264/HEVC level 6.2 allows (``MAX_LEVEL_PIXELS``), refused beyond.
- repeatability: x264 runs without its AVX-512 code (``x264_params``), so the same frames, options
  and thread count give the same bytes in every run (the thread count changes them: a Ray worker
  encodes on its CPUs, an in-process run on x264's choice).
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from dubline.stages.media import (
    MAX_LEVEL_PIXELS,
    PRIMARIES_BT2020,
    RANGE_LIMITED,
    TRANSFER_HLG,
    TRANSFER_PQ,
    UNSPECIFIED,
    Colour,
    ShownVideo,
    codec_threads,
)

ENCODERS = {"h264": "libx264", "hevc": "libx265"}
#: x264.h's ``X264_CPU_AVX512`` flag.
X264_CPU_AVX512 = 0x10000
BT709 = Colour(1, 1, 1, RANGE_LIMITED, 8)
#: The reference of ``auto_crf``: sources at or below this many H.264 bits per pixel get CRF 18.
REFERENCE_BPP = 0.1
#: x265's CRF scale gives the same quality about 4 steps higher than x264's (FFmpeg's guide: x265
#: CRF 28 ≈ x264 CRF 23); an H.264-scale CRF is moved by this for HEVC.
HEVC_CRF_OFFSET = 4
#: Sources in these codecs carry about 1.5× the quality of H.264 per bit (auto_crf's bits per pixel).
_EFFICIENT_CODECS = {"hevc": 1.5, "vp9": 1.5, "av1": 1.5}


@dataclass(frozen=True)
class EncodePlan:
    """What the composite stage writes: codec, pixel format, colour description, quality, size."""

    codec: str  # "h264" or "hevc"
    pix_fmt: str  # "yuv420p" or "yuv420p10le"
    colour: Colour  # written into the stream (and how RGB is turned back into YUV)
    crf: int
    preset: str
    width: int  # even
    height: int
    to_sdr: bool  # an HDR source tone-mapped to SDR on the way out

    @property
    def encoder(self) -> str:
        return ENCODERS[self.codec]


def auto_crf(video: ShownVideo, video_codec: str) -> int:
    """An x264 CRF (or the HEVC equivalent) that keeps a quality comparable to the source's: 18, lowered
    by 3 for each doubling of the source's bits per pixel above ``REFERENCE_BPP`` (H.264-equivalent:
    HEVC/VP9/AV1 bits count 1.5×), never below 12. Dense sources — small frames, high bit rates —
    carry detail a CRF-18 re-encode would lose in pixels the dub never touches (measured: a 224² clip
    at 0.15 bits per pixel loses 40.7 → 41.8 dB PSNR at CRF 18 → 16)."""
    crf = 18
    if video.bit_rate and not video.still and video.clock.frame_count:
        source_fps = video.source_frames / max(video.duration_s, 1e-9)
        bpp = video.bit_rate / (video.coded_width * video.coded_height * source_fps)
        bpp *= _EFFICIENT_CODECS.get(video_codec, 1.0)
        if bpp > REFERENCE_BPP:
            crf = max(12, round(18 - 3 * math.log2(bpp / REFERENCE_BPP)))
    return crf


def plan_encode(video: ShownVideo, source_codec: str, options: dict[str, Any], width: int, height: int) -> EncodePlan:
    """The encode of a ``width``×``height`` picture of ``video`` under the title's ``options``
    (``video_codec``: "auto", "h264" or "hevc"; ``hdr_output``: "source" or "sdr"; ``crf``: int or
    None/"auto"; ``preset``). Raises ValueError for an unknown option value or a picture too large."""
    codec_option = options.get("video_codec", "auto")
    hdr_output = options.get("hdr_output", "source")
    if codec_option not in ("auto", *ENCODERS):
        raise ValueError(f"video_codec {codec_option!r} is not one of auto, {', '.join(ENCODERS)}")
    if hdr_output not in ("source", "sdr"):
        raise ValueError(f"hdr_output {hdr_output!r} is not one of source, sdr")
    width, height = width + width % 2, height + height % 2  # 4:2:0 needs even sides
    if width * height > MAX_LEVEL_PIXELS:
        raise ValueError(f"output picture {width}x{height} is larger than H.264 and HEVC allow "
                         f"({MAX_LEVEL_PIXELS:,} pixels at level 6.2)")
    source = video.colour
    to_sdr = source.needs_colour_management and hdr_output == "sdr"
    if video.still or to_sdr:
        colour = BT709
    else:
        matrix = source.matrix or 1  # matrix 0 (an RGB source) is written as BT.709 YUV
        colour = Colour(source.primaries, source.transfer, matrix, source.range, 10 if source.bit_depth > 8 else 8)
    if codec_option == "auto":  # SDR delivery is for compatibility: H.264
        deep = colour.bit_depth > 8 or colour.hdr
        codec = "hevc" if (source_codec == "hevc" and not to_sdr) or deep else "h264"
    else:
        codec = codec_option
    crf = options.get("crf")
    if crf in (None, "auto"):
        crf = auto_crf(video, source_codec) + (HEVC_CRF_OFFSET if codec == "hevc" else 0)
    return EncodePlan(codec, "yuv420p10le" if colour.bit_depth > 8 else "yuv420p", colour, int(crf),
                      options.get("preset", "veryfast"), width, height, to_sdr)


def add_video_stream(out: av.container.OutputContainer, plan: EncodePlan, fps: Fraction) -> av.video.stream.VideoStream:
    """The output's video stream, set up and colour-tagged as ``plan`` says."""
    stream = out.add_stream(plan.encoder, rate=fps)
    stream.width, stream.height, stream.pix_fmt = plan.width, plan.height, plan.pix_fmt
    ctx = stream.codec_context
    ctx.time_base = 1 / fps
    ctx.thread_count = codec_threads()  # x264's and x265's threads (both write them into their headers)
    # x264 on whole frames in parallel, not slices of each (PyAV's default): 200 frames of 844² on
    # two cores encode in 1.39 s against 1.86 s; one thread (a 1-CPU Ray worker) gives the same bytes
    # either way. x265 ignores it.
    ctx.thread_type = "FRAME"
    colour = plan.colour
    ctx.color_primaries, ctx.color_trc, ctx.colorspace = colour.primaries, colour.transfer, colour.matrix
    ctx.color_range = colour.range
    options = {"crf": str(plan.crf), "preset": plan.preset}
    if plan.codec == "h264":
        options.update(x264_params())
    if plan.codec == "hevc":
        ctx.codec_tag = "hvc1"  # the tag Apple players require for HEVC in MP4
        params = ["log-level=error"]
        if colour.transfer == TRANSFER_PQ:
            params.append("hdr10=1")  # HDR10 signalling
        if colour.transfer == TRANSFER_HLG and colour.primaries == PRIMARIES_BT2020:
            params.append("atc-sei=18")  # HLG's alternative transfer SEI: SDR displays see BT.2020 HLG
        options["x265-params"] = ":".join(params)
    stream.options = options
    return stream


@functools.cache
def x264_params() -> dict[str, str]:
    """Encoder options that keep libx264 off its AVX-512 code: ``{"x264-params": "asm=N"}``, N being
    the SIMD flags the loaded libx264 detects (``x264_cpu_detect``) less ``X264_CPU_AVX512``; empty
    where the CPU has no AVX-512 or the library cannot be found (not Linux, a static FFmpeg: there
    x264 keeps AVX-512; on Linux a test checks that PyAV's libx264 is found).

    Why: on an AVX-512 Xeon (this project's VM; PyAV 18's x264, core 165) x264 encoded the same
    128 frames into different bitstreams within one process — 9 of 40 single-threaded encodes
    differed, each by what the process had allocated before — so a resumed or repeated run could
    write other bytes. Without AVX-512, 80 of 80 were identical, and the encode was ~5 % faster
    (README, "Media it takes").
    """
    library = _loaded_library("libx264")
    if library is None:
        return {}
    try:
        detect = ctypes.CDLL(library).x264_cpu_detect
    except (OSError, AttributeError):
        return {}
    detect.restype = ctypes.c_uint32
    flags = detect()
    return {"x264-params": f"asm={flags & ~X264_CPU_AVX512}"} if flags & X264_CPU_AVX512 else {}


def _loaded_library(prefix: str) -> str | None:
    """The path of the shared library named ``prefix*`` that this process has mapped (libavcodec
    loads libx264 with itself), from /proc/self/maps; None where there is none or no /proc."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                name = os.path.basename(path)
                if name.startswith(prefix) and name[len(prefix):len(prefix) + 1] in ("-", "."):
                    return path
    except OSError:
        return None
    return None


def tag(frame: av.VideoFrame, colour: Colour) -> av.VideoFrame:
    """Set ``frame``'s colour description (what the encoder is fed) to ``colour``."""
    frame.color_primaries, frame.color_trc, frame.colorspace = colour.primaries, colour.transfer, colour.matrix
    frame.color_range = colour.range
    return frame


#: PyAV's swscale matrix names by H.273 matrix code point (unlisted: swscale's default, BT.601).
SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}


def sws_matrix(colour: Colour) -> str | None:
    """The swscale matrix for RGB <-> YUV in ``colour`` (None: unspecified, swscale's default)."""
    return SWS_MATRIX.get(colour.matrix) if colour.matrix != UNSPECIFIED else None
