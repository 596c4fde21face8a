"""Media I/O on URLs with PyAV: pictures as a player shows them, audio on the picture's clock.

"As shown" (see README, "Media it takes"):
- orientation: the display matrix (any angle, mirrored or not) is applied, so frames are upright;
- pixel shape: non-square pixels (a sample aspect ratio other than 1:1) become square;
- time: every stage works on one constant frame clock. A constant-rate source keeps its own frames;
  a variable-frame-rate (VFR) source is put on a constant clock with frames held or dropped as a
  player shows them (tick i shows the last frame whose PTS is at most half a tick after it);
- colour: three views of a frame — ``native`` (the decoder's own pixel format and colour, for
  re-encoding), ``rgb`` (8-bit RGB of the source's own code values, through its matrix and range:
  what gets pasted back) and ``sdr`` (8-bit BT.709 SDR RGB, for analysis: HDR and BT.2020 sources
  converted by FFmpeg's colour-managed scaler, BT.2408 reference white to SDR white);
- still images: EXIF orientation, alpha over a background colour, any mode converted to RGB,
  embedded ICC profiles converted to sRGB, and the longer side bounded.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import av.logging
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from dubline.schemas import storage
from dubline.schemas.colour import hex_to_rgb


@contextlib.contextmanager
def open_media(url: str) -> Iterator[av.container.InputContainer]:
    """Open ``url`` for demuxing; local files directly, other URLs as seekable file objects."""
    path = storage.local_path(url)
    if path is not None:
        with av.open(path) as container:
            yield container
        return
    with storage.open_url(url, "rb") as f, av.open(f) as container:
        yield container


_LOG_LOCK = threading.Lock()


def open_failure(url: str) -> str | None:
    """Why FFmpeg cannot open ``url``, with FFmpeg's own last log line when it gave one
    ("Invalid data found when processing input: moov atom not found"), or None if it opens.

    PyAV's exceptions carry only an errno text (sometimes a misleading one: a picture too large to
    allocate reads "Device or resource busy"), so after a failed open this opens ``url`` once more
    with FFmpeg's log captured. Only for error paths: it briefly turns FFmpeg's logging on.
    """
    with _LOG_LOCK:
        level, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)
        try:
            with av.logging.Capture() as logs:  # this thread's messages only
                try:
                    with open_media(url):
                        return None
                except av.error.FFmpegError as exc:
                    error = exc
        finally:
            av.logging.set_level(level)
            av.logging.set_skip_repeated(skip_repeated)
    messages = [message.strip() for _, _, message in logs if message.strip()]
    return f"{error.strerror}: {messages[-1]}" if messages else error.strerror


def media_error(exc: BaseException, url: str) -> str:
    """A short, errno-free description of a media error on ``url`` for a title's error message."""
    if isinstance(exc, av.error.FFmpegError):
        return open_failure(url) or exc.strerror or str(exc)
    return str(exc)


def iso_truncation(url: str, size: int) -> str | None:
    """What is missing when ``url`` is an MP4/MOV (ISO base media) file cut short, else None.

    The top-level boxes of such a file declare their sizes; a box that ends past the end of the
    file, or no 'moov' (the index) at all, means the file was not completely copied or written.
    Files that do not start like ISO base media are left to FFmpeg.
    """
    with storage.open_url(url, "rb") as f:
        if f.read(8)[4:8] != b"ftyp":
            return None
        offset, kinds = 0, set()
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:  # 64-bit size
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the last box runs to the end of the file
                box_size = size - offset
            if box_size < 8:
                return None  # not a box layout we know: let FFmpeg judge
            name = kind.decode("latin-1")
            if offset + box_size > size:
                return f"its '{name}' box needs {offset + box_size} bytes but the file has only {size}"
            kinds.add(kind)
            offset += box_size
    if b"moov" not in kinds:
        return "it has no 'moov' box (the index of an MP4 file, written last unless the file is fast-start)"
    return None


def stream_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """Nominal frame rate of a video stream (average, else guessed, else base)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    raise ValueError("video stream has no frame rate")


# --- orientation --------------------------------------------------------------------------------

#: Degrees within which a display rotation counts as a right angle (FFmpeg's own autorotate: 1°).
RIGHT_ANGLE_TOLERANCE = 1.0


@dataclass(frozen=True)
class Orientation:
    """How a display matrix turns the coded picture into the shown one: first mirrored left-right
    (``mirrored``), then turned ``degrees`` clockwise, in (-180, 180]. Right angles are exact
    (lossless transposes); other angles rotate onto a canvas that holds the whole turned picture,
    filled black."""

    degrees: float = 0.0
    mirrored: bool = False

    @classmethod
    def from_matrix(cls, matrix: Sequence[int] | None) -> Orientation:
        """From FFmpeg's display matrix (``AV_FRAME_DATA_DISPLAYMATRIX``: 9 int32, the 2×2 linear
        part in 16.16 fixed point, row vectors: x' = a·x + c·y, y' = b·x + d·y), or None: upright."""
        if matrix is None:
            return cls()
        a, b, _, c, d, _ = (float(value) / 65536 for value in matrix[:6])
        linear = np.array([[a, c], [b, d]])  # coded (x, y) -> shown (x', y'), y pointing down
        determinant = float(np.linalg.det(linear))
        if abs(determinant) < 1e-9:
            return cls()  # degenerate matrix: nothing a player could show either
        mirrored = determinant < 0
        turn = linear @ np.diag([-1.0, 1.0]) if mirrored else linear
        degrees = math.degrees(math.atan2(turn[1, 0], turn[0, 0]))
        quarter = round(degrees / 90)
        if abs(degrees - 90 * quarter) < RIGHT_ANGLE_TOLERANCE:
            degrees = (0.0, 90.0, 180.0, -90.0)[quarter % 4]
        return cls(round(degrees, 3), mirrored)

    @classmethod
    def of_frame(cls, frame: av.VideoFrame) -> Orientation:
        """The orientation a decoded frame carries (its display matrix side data)."""
        for data in frame.side_data:
            if data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and data.buffer_size >= 36:
                return cls.from_matrix(np.frombuffer(bytes(data), dtype="<i4", count=9).tolist())
        return cls()

    @property
    def upright(self) -> bool:
        return self.degrees == 0 and not self.mirrored

    def filters(self) -> list[tuple[str, str]]:
        """The FFmpeg filters (name, arguments) that show the coded picture this way."""
        chain = [("hflip", "")] if self.mirrored else []
        if self.degrees == 90:
            chain.append(("transpose", "clock"))
        elif self.degrees == -90:
            chain.append(("transpose", "cclock"))
        elif self.degrees == 180:
            chain += [("hflip", ""), ("vflip", "")]
        elif self.degrees:
            angle = f"{math.radians(self.degrees):.9f}"
            chain.append(("rotate", f"a={angle}:ow=rotw({angle}):oh=roth({angle}):c=black"))
        return chain


# --- colour -------------------------------------------------------------------------------------

#: H.273 code points (FFmpeg's enums) of the colour descriptions this module treats specially.
TRANSFER_PQ, TRANSFER_HLG = 16, 18  # SMPTE ST 2084, ARIB STD-B67
PRIMARIES_BT2020 = 9
UNSPECIFIED = 2  # primaries, transfer and matrix "unspecified"
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2


@dataclass(frozen=True)
class Colour:
    """A picture's colour description: H.273 code points of its colour primaries, transfer
    characteristics and matrix coefficients, its range (0 unspecified, 1 limited, 2 full) and the
    bit depth of its samples."""

    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    matrix: int = UNSPECIFIED
    range: int = RANGE_UNSPECIFIED
    bit_depth: int = 8

    @classmethod
    def of_frame(cls, frame: av.VideoFrame) -> Colour:
        """The description a decoded frame carries; a ``yuvj*`` pixel format means full range."""
        colour_range = int(frame.color_range)
        if frame.format.name.startswith("yuvj"):
            colour_range = RANGE_FULL
        depth = max(component.bits for component in frame.format.components)
        return cls(int(frame.color_primaries), int(frame.color_trc), int(frame.colorspace), colour_range, depth)

    @property
    def hdr(self) -> bool:
        """PQ (HDR10) or HLG transfer."""
        return self.transfer in (TRANSFER_PQ, TRANSFER_HLG)

    @property
    def needs_colour_management(self) -> bool:
        """Whether an SDR BT.709 view needs more than a matrix: another transfer or BT.2020 primaries."""
        return self.hdr or self.primaries == PRIMARIES_BT2020


def sdr_filter(intent: str = "relative_colorimetric") -> tuple[str, str]:
    """The FFmpeg filter (name, arguments) that converts any colour description to 8-bit-ready
    BT.709 SDR with FFmpeg's colour-managed scaler (swscale CMS).

    ``relative_colorimetric`` (analysis): HDR reference white (BT.2408, 203 cd/m²) becomes SDR
    white and everything up to it keeps its level; brighter highlights clip. ``perceptual``
    (SDR delivery): a tone curve that rolls highlights off up to the source's peak instead, so
    detail above reference white survives and mid-tones come out darker.
    """
    return "scale", f"out_transfer=bt709:out_primaries=bt709:out_color_matrix=bt709:intent={intent}"


# --- the frame clock ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameClock:
    """The constant frame clock every stage works on: clock frame i is the picture shown at
    ``start_s + i / rate`` (seconds of the source's timeline). ``resampled``: the source is VFR
    and its frames are placed on the clock by PTS; otherwise each decoded frame is one tick."""

    rate: Fraction
    frame_count: int
    start_s: float = 0.0
    resampled: bool = False


def variable_rate(pts: np.ndarray, tolerance: float) -> bool:
    """Whether sorted frame PTS (ticks) step irregularly: the 95th percentile of the steps' distance
    from their median, less one tick of timestamp rounding (29.97 fps in ms: 33, 33, 34, ...),
    above ``tolerance`` of the median step."""
    if len(pts) < 3:
        return False
    steps = np.diff(pts)
    median = float(np.median(steps))
    if median <= 0:
        return True
    spread = max(0.0, float(np.percentile(np.abs(steps - median), 95)) - 1.0) / median
    return spread > tolerance


def clock_rate(stream: av.video.stream.VideoStream, max_fps: float) -> Fraction:
    """The clock rate of a VFR stream: FFmpeg's guessed base rate (the lowest rate on which all of
    the stream's timestamps fall, e.g. 30 for steps of 1/30 and 1/15 s), so no frame is dropped,
    when it lies between the average rate and ``max_fps``; otherwise the average rate."""
    average = Fraction(stream.average_rate) if stream.average_rate else None
    guessed = Fraction(stream.guessed_rate) if stream.guessed_rate else None
    if guessed and (average is None or average <= guessed * Fraction(1001, 1000)) and guessed <= max_fps:
        return guessed
    if average:
        return average
    return stream_rate(stream)


def frame_clock(stream: av.video.stream.VideoStream, pts: Sequence[int], durations: Sequence[int],
                vfr_tolerance: float, max_fps: float) -> FrameClock:
    """The clock of a video stream from its packets' PTS and durations (ticks of its time base, any
    order; packets without PTS left out). Raises ValueError for a stream without frames."""
    if not len(pts):
        raise ValueError("video stream has no frames")
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    ticks = np.asarray(pts, dtype=np.int64)[order]
    base = float(stream.time_base) if stream.time_base else 0.0
    start_s = float(ticks[0]) * base
    if not base or not variable_rate(ticks, vfr_tolerance):
        return FrameClock(stream_rate(stream), len(ticks), start_s)
    rate = clock_rate(stream, max_fps)
    last_duration = int(np.asarray(durations, dtype=np.int64)[order][-1]) or int(np.median(np.diff(ticks)))
    end_s = float(ticks[-1] + last_duration) * base
    return FrameClock(rate, max(1, round((end_s - start_s) * rate)), start_s, resampled=True)


def on_clock(decoded: Iterator[av.VideoFrame], clock: FrameClock) -> Iterator[tuple[av.VideoFrame, int]]:
    """Each decoded frame with how many clock ticks show it (0: dropped), ``clock.frame_count``
    ticks in all. A frame without a timestamp follows the previous one by one tick; the last
    frame is held to the end of the clock."""
    if not clock.resampled:
        for frame in decoded:
            yield frame, 1
        return
    tick_s = 1 / float(clock.rate)
    tick, current, current_s = 0, None, clock.start_s
    for frame in decoded:
        shown_s = frame.time if frame.time is not None else current_s + tick_s
        ticks = 0
        # A tick shows the last frame due by its middle: PTS rounding never moves a frame a tick.
        while current is not None and tick < clock.frame_count and clock.start_s + (tick + 0.5) * tick_s < shown_s:
            ticks, tick = ticks + 1, tick + 1
        if current is not None:
            yield current, ticks
        current, current_s = frame, shown_s
    if current is not None:
        yield current, clock.frame_count - tick


# --- shown video --------------------------------------------------------------------------------

#: The largest picture H.264 and HEVC allow at their highest level (6.2): MaxFS 139,264 macroblocks
#: of 16×16 = MaxLumaPs 35,651,584 samples. A larger output would not play on conforming decoders.
MAX_LEVEL_PIXELS = 35_651_584

#: Defaults of what a source is shown as; the probe stage can override them.
STILL_MAX_SIDE = 1920  # px: a still image's longer side is scaled down to this
STILL_BACKGROUND = (255, 255, 255)  # transparent pixels of a still are shown over white
VFR_TOLERANCE = 0.02
MAX_CLOCK_FPS = 60.0
VIEWS = ("native", "rgb", "sdr")


@dataclass(frozen=True)
class ShownVideo:
    """What a source is, as shown: its size upright with square pixels, its frame clock and colour.

    ``coded_width``/``coded_height``: the decoder's picture; ``width``/``height``: the shown one.
    A ``still`` is one picture (an image file) with the ``background`` its transparent pixels sit on.
    """

    url: str
    width: int
    height: int
    clock: FrameClock
    coded_width: int
    coded_height: int
    orientation: Orientation = field(default_factory=Orientation)
    sample_aspect: Fraction = Fraction(1)
    colour: Colour = field(default_factory=Colour)
    still: bool = False
    background: tuple[int, int, int] = STILL_BACKGROUND
    bit_rate: int | None = None  # of the coded video, bits/s
    source_frames: int = 1  # frames stored in the source (packets)
    #: (clock frame index, PTS in the stream's time base) of each keyframe, where decoding may start
    #: (``frames(start=...)``); empty for a still and for a resampled (VFR) source.
    keyframes: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_title(cls, title: dict[str, Any]) -> ShownVideo:
        """From a ``titles`` manifest row (the probe's facts)."""
        return cls(
            url=title["source_url"],
            width=title["width"],
            height=title["height"],
            clock=FrameClock(Fraction(title["fps_num"], title["fps_den"]), title["frame_count"], title["start_s"],
                             title["variable_frame_rate"]),
            coded_width=title["coded_width"],
            coded_height=title["coded_height"],
            orientation=Orientation(title["rotation_deg"], title["mirrored"]),
            sample_aspect=Fraction(title["sar_num"], title["sar_den"]),
            colour=Colour(title["color_primaries"], title["color_transfer"], title["color_matrix"],
                          title["color_range"], title["bit_depth"]),
            still=title["still"],
            background=hex_to_rgb(title["background"]) if title["background"] else STILL_BACKGROUND,
            bit_rate=title["bit_rate"],
            source_frames=title["source_frames"],
            keyframes=tuple(zip(title["keyframe_index"], title["keyframe_pts"])),
        )

    @property
    def duration_s(self) -> float:
        return self.clock.frame_count / float(self.clock.rate)


def describe(url: str, *, still_max_side: int = STILL_MAX_SIDE, background: tuple[int, int, int] = STILL_BACKGROUND,
             vfr_tolerance: float = VFR_TOLERANCE, max_fps: float = MAX_CLOCK_FPS,
             check: Callable[[av.container.InputContainer], None] | None = None) -> ShownVideo:
    """The shown facts of ``url``: demuxes its packets (no decoding) and decodes its first frame;
    ``check`` sees the opened container of a video first (to refuse it before any decoding).

    Raises ValueError (no video stream, no frames) and FFmpeg/Pillow errors for unreadable files.
    """
    still = still_header(url)
    if still is not None:
        picture = load_still(url, still_max_side, background)
        height, width = picture.shape[:2]
        return ShownVideo(url, width, height, FrameClock(Fraction(25), 1), still.width, still.height, still=True,
                          background=background, colour=Colour(1, 13, 0, RANGE_FULL, 8))
    with open_media(url) as container:
        if check is not None:
            check(container)
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        packets = [(p.pts, p.duration or 0, p.size, p.is_keyframe) for p in container.demux(stream)
                   if p.size > 0 and p.pts is not None and not p.is_discard]
        pts, durations, sizes, key = zip(*packets) if packets else ((), (), (), ())
        clock = frame_clock(stream, pts, durations, vfr_tolerance, max_fps)
        keyframes = () if clock.resampled else _keyframes(pts, key)
        span_s = clock.frame_count / float(clock.rate)
        bit_rate = round(sum(sizes) * 8 / span_s) if span_s > 0 and len(sizes) > 1 else None
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    with open_media(url) as container:  # anew: image pipes cannot seek back after demuxing
        first = next(container.decode(video=0), None)
        if first is None:
            raise ValueError("video stream has no decodable frame")
        orientation = Orientation.of_frame(first)
        sample_aspect = Fraction(sar) if sar and sar > 0 else Fraction(1)
        shaped = _Shaper(orientation, sample_aspect, "native")(first)
        return ShownVideo(url, shaped.width, shaped.height, clock, first.width, first.height, orientation,
                          sample_aspect, Colour.of_frame(first), bit_rate=bit_rate, source_frames=len(pts),
                          keyframes=keyframes)


def _keyframes(pts: Sequence[int], keyframe: Sequence[bool]) -> tuple[tuple[int, int], ...]:
    """(clock frame index, PTS) of the keyframes among packets of a source whose frames are one
    tick each: a frame's index is its PTS's rank."""
    ranked = np.sort(np.asarray(pts, dtype=np.int64))
    found = sorted(int(p) for p, key in zip(pts, keyframe) if key)
    return tuple((int(np.searchsorted(ranked, p)), p) for p in found)


def codec_threads() -> int:
    """Threads one FFmpeg decoder or encoder may use: the CPUs this worker was given, as
    ``OMP_NUM_THREADS`` says (Ray sets it to an actor's CPUs where the environment does not set it
    already, so a 1-CPU worker decodes and encodes on one core, not on every core of its node
    beside the other workers there); 0 where it is unset or not a positive number (FFmpeg's own
    choice: about one thread per core)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def frames(video: ShownVideo, view: str = "sdr", start: int = 0) -> Iterator[av.VideoFrame]:
    """The frames of ``video`` as shown, on its clock (``clock.frame_count`` of them for a VFR
    source; every decoded frame otherwise), in ``view`` (see the module docstring): ``native``
    frames keep the decoder's pixel format, ``rgb`` and ``sdr`` are rgb24. A still is one frame.

    ``start``: the clock frame to begin at. Decoding begins at the last keyframe at or before it
    (``ShownVideo.keyframes``; a VFR source, without any, is decoded from its first frame) and the
    frames before it are skipped. A frame shown for several ticks is yielded once per tick (the
    same object).
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} (one of {', '.join(VIEWS)})")
    if video.still:
        if start == 0:
            picture = load_still(video.url, max(video.width, video.height), video.background)
            yield av.VideoFrame.from_ndarray(picture, format="rgb24")
        return
    shaper = _Shaper(video.orientation, video.sample_aspect, view, video.colour)
    entry = max((k for k in video.keyframes if k[0] <= start), default=(0, 0))
    with open_media(video.url) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = codec_threads()
        decoded, tick = _decode_from(container, stream, *entry)
        for frame, ticks in on_clock(decoded, video.clock):
            shown = None
            for _ in range(ticks):
                if tick >= start:
                    shown = shaper(frame) if shown is None else shown
                    yield shown
                tick += 1


def _decode_from(container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: int,
                 pts: int) -> tuple[Iterator[av.VideoFrame], int]:
    """Decoded frames from the keyframe at clock frame ``index`` (PTS ``pts``) on, and that index.
    Frames shown before it that a seek gives (it may land on an earlier keyframe; an open GOP
    leads with frames of the previous one) are left out. Where the seek does not give that
    keyframe first, decoding starts over at the first frame (index 0)."""
    if index > 0:
        container.seek(pts, stream=stream, backward=True)
        decoded = container.decode(stream)
        first = next((f for f in decoded if f.pts is None or f.pts >= pts), None)
        if first is not None and first.pts == pts:
            return itertools.chain([first], decoded), index
        container.seek(0)
    return container.decode(stream), 0


def rgb_frames(source: ShownVideo | str | dict[str, Any], view: str = "sdr",
               start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(clock frame index, H×W×3 uint8 RGB) of a video as shown, in the ``rgb`` or ``sdr`` view,
    from clock frame ``start`` on (decoded from the keyframe before it, see ``frames``).

    ``source``: a ``ShownVideo``, a URL (described first) or a ``titles`` row. ``sdr`` (BT.709
    SDR) is what the face models expect, ``rgb`` (the source's own code values) what is pasted
    back into it."""
    if isinstance(source, str):
        video = describe(source)
    else:
        video = source if isinstance(source, ShownVideo) else ShownVideo.from_title(source)
    for index, frame in enumerate(frames(video, view, start), start=start):
        yield index, frame.to_ndarray(format="rgb24")


class _Shaper:
    """Turns decoded frames into shown ones: square pixels, upright (an FFmpeg filter graph, built
    on the first frame), then the colour view."""

    def __init__(self, orientation: Orientation, sample_aspect: Fraction, view: str, colour: Colour | None = None):
        self._orientation, self._sample_aspect, self._view = orientation, sample_aspect, view
        self._colour = colour
        self._geometry: FilterChain | None = None
        self._sdr: FilterChain | None = None

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        chain = []
        if self._sample_aspect != 1:
            width = max(2, round(frame.width * self._sample_aspect / 2) * 2)
            chain += [("scale", f"{width}:{frame.height}:flags=lanczos"), ("setsar", "1")]
        chain += self._orientation.filters()
        if chain:
            self._geometry = self._geometry or FilterChain(chain)
            frame = self._geometry(frame)
        if self._view == "native":
            return frame
        colour = self._colour or Colour.of_frame(frame)
        if self._view == "sdr" and colour.needs_colour_management:
            self._sdr = self._sdr or FilterChain([sdr_filter(), ("format", "rgb24")])
            return self._sdr(frame)
        return frame.reformat(format="rgb24")  # through the frame's own matrix and range


class FilterChain:
    """A linear FFmpeg filter graph for one frame in, one frame out (configured on the first frame)."""

    def __init__(self, filters: list[tuple[str, str]]):
        self._filters = filters
        self._graph: av.filter.Graph | None = None

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self._graph is None:
            self._graph = av.filter.Graph()
            previous = self._graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                              time_base=frame.time_base or Fraction(1, 1000))
            for name, arguments in self._filters:
                node = self._graph.add(name, arguments) if arguments else self._graph.add(name)
                previous.link_to(node)
                previous = node
            previous.link_to(self._graph.add("buffersink"))
            self._graph.configure()
        self._graph.push(frame)
        return self._graph.pull()


# --- still images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StillHeader:
    """What a still image file says of itself: Pillow's format name and mode, its stored size."""

    format: str
    mode: str
    width: int
    height: int


def still_header(url: str) -> StillHeader | None:
    """The stored size of ``url`` if Pillow reads it as a single still image, else None (a video,
    an animation, or an image format left to FFmpeg)."""
    try:
        with _open_image(url) as image:
            if getattr(image, "n_frames", 1) > 1:
                return None
            return StillHeader(image.format or "unknown", image.mode, *image.size)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) + _PILLOW_DECODE_ERRORS:
        return None


def load_still(url: str, max_side: int = STILL_MAX_SIDE, background: tuple[int, int, int] = STILL_BACKGROUND) -> np.ndarray:
    """A still image as shown: H×W×3 uint8 sRGB, upright by its EXIF orientation, transparent pixels
    composited over ``background``, the longer side at most ``max_side`` px (area-averaged).

    Any Pillow mode is converted: palette (with its transparency), greyscale (8/16/32-bit), CMYK,
    16-bit; an embedded ICC profile (Display P3, Adobe RGB, CMYK press profiles) is converted to
    sRGB. Raises Pillow's errors for unreadable images (DecompressionBombError beyond ~179 MP).
    """
    with _open_image(url) as image:
        if image.format == "JPEG":  # decode a huge JPEG at a fraction of its size (DCT scaling)
            image.draft(image.mode, (max_side, max_side))
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except _PILLOW_DECODE_ERRORS as exc:
            raise ValueError(f"unreadable image ({type(exc).__name__}: {exc})") from exc
        image = _to_srgb(image)
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BOX if scale < 0.5 else Image.Resampling.LANCZOS,
                                 reducing_gap=3.0)
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    shown = rgba[..., :3] * alpha + np.asarray(background, dtype=np.float32) * (1.0 - alpha)
    return np.round(shown).astype(np.uint8)


#: What Pillow raises besides OSError/ValueError on damaged files: SyntaxError (a broken PNG chunk),
#: TypeError (TIFF tags without dimensions), struct.error (short headers), EOFError.
_PILLOW_DECODE_ERRORS = (SyntaxError, TypeError, struct.error, EOFError)


def _open_image(url: str) -> Image.Image:
    """Pillow's image of the bytes at ``url``. The bytes are read first: from a file object Pillow
    reads a chunk's declared length at once, and a damaged length near 2**32 would allocate 4 GB."""
    with storage.open_url(url, "rb") as f:
        data = f.read()
    try:
        return Image.open(io.BytesIO(data))
    except _PILLOW_DECODE_ERRORS as exc:
        raise ValueError(f"unreadable image ({type(exc).__name__}: {exc})") from exc


def _to_srgb(image: Image.Image) -> Image.Image:
    """An RGB or RGBA image in sRGB from any Pillow mode (alpha kept; 16/32-bit scaled to 8)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(values / peak * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")  # keeps the palette's transparency
    profile = image.info.get("icc_profile")
    if profile:
        alpha = image.getchannel("A") if "A" in image.getbands() else None
        source = image.convert("RGB") if image.mode not in ("RGB", "CMYK", "L") else image
        try:
            converted = ImageCms.profileToProfile(source, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                                  ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None  # a broken or mismatched profile: read the numbers as they are
        if converted is not None:
            if alpha is not None:
                converted.putalpha(alpha)
            return converted
    if image.mode in ("RGBA", "RGB"):
        return image
    if image.mode in ("LA", "La", "RGBa", "PA"):
        return image.convert("RGBA")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


# --- audio --------------------------------------------------------------------------------------


def audio_duration(url: str) -> float:
    """Duration in seconds of the first audio stream of ``url`` (decodes when headers are silent)."""
    with open_media(url) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / 1_000_000
        rate = stream.codec_context.sample_rate if stream.codec_context else 0
        if not rate:
            raise ValueError("audio stream has no sample rate")
        return sum(frame.samples for frame in container.decode(stream)) / rate


def _picture_start_s(container: av.container.InputContainer) -> float | None:
    """Where the first video frame sits on the file's timeline (s), or None without a picture
    (cover art does not count: it has no time)."""
    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        if stream.start_time is not None and stream.time_base:
            return float(stream.start_time * stream.time_base)
        return 0.0
    return None


def decode_audio(url: str, sample_rate: int, layout: str = "stereo") -> Iterator[np.ndarray]:
    """Yield the first audio stream of ``url`` as float32 arrays (channels × samples) at ``sample_rate``,
    on the picture's clock: in a file with video, sample 0 is the moment of the first video frame —
    audio that starts later is preceded by silence, audio that starts earlier loses what comes
    before (edit lists and start offsets included). An audio-only file starts at its first sample."""
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
    with open_media(url) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        picture_s = _picture_start_s(container)
        skip = None  # samples to drop (< 0: silence to insert) once the first frame's time is known
        for frame in container.decode(container.streams.audio[0]):
            if skip is None:
                skip = 0 if picture_s is None or frame.time is None else round((picture_s - frame.time) * sample_rate)
                if skip < 0:
                    yield np.zeros((len(av.AudioLayout(layout).channels), -skip), np.float32)
            for out in resampler.resample(frame):
                samples = out.to_ndarray()
                if skip and skip > 0:
                    samples, skip = samples[:, skip:], max(0, skip - samples.shape[1])
                yield samples
    for out in resampler.resample(None):
        yield out.to_ndarray()


def read_audio(url: str, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """The first audio stream of ``url`` as one mono float32 array at ``sample_rate`` (on the picture's
    clock, see ``decode_audio``). With ``max_seconds``, decoding stops once more than that was read
    (the result is then one sample longer than ``max_seconds``): a file whose header claims an
    absurd rate (1 Hz) would otherwise be resampled into hours of audio."""
    limit = None if max_seconds is None else int(max_seconds * sample_rate) + 1
    chunks, count = [], 0
    for chunk in decode_audio(url, sample_rate, layout="mono"):
        chunks.append(chunk[0])
        count += chunk.shape[1]
        if limit is not None and count >= limit:
            return np.concatenate(chunks)[:limit]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
