"""composite: stream the source picture as shown, paste the rendered faces, encode, mux the dub audio.

Frames are decoded, encoded and written one at a time, so memory stays flat in video length. The
picture is written upright, on the title's frame clock, in the source's own colour (see
``encode`` for the output policy); only pixels a rendered face covers are converted through RGB,
every other pixel goes from decoder to encoder in YUV. Dub audio is fitted to the picture's
duration (see ``fit_policy``), never left to drift.

A long title is encoded in frame ranges (``CompositeJob.frame_range``), one job each: a range's
job decodes from the keyframe before it and encodes its frames, picture only, into a segment that
starts with a keyframe of its own; a join job (``CompositeJob.segments``) copies the segments'
packets one after the other into the output (no second encode) and encodes the audio beside them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, ClassVar

import av
import cv2
import numpy as np

from dubline.schemas import storage
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import FACE_TRACKS, OUTPUTS, TITLES
from dubline.stages.base import Resources, Stage, TitleError
from dubline.stages.job_rows import JobRow, Content, Place, Upstream
from dubline.stages.composite.encode import (
    EncodePlan,
    add_video_stream,
    plan_encode,
    sws_matrix,
    tag,
)
from dubline.stages.composite.paste import paste, rendered_crops
from dubline.stages.media import (
    FilterChain,
    ShownVideo,
    audio_duration,
    decode_audio,
    frames,
    open_media,
    sdr_filter,
)
from dubline.stages.speech.fit import fit_policy
from dubline.stages.threads import ordered_map, prefetched

AUDIO_RATE = 48_000
AUDIO_LAYOUT = "stereo"
AAC_FRAME = 1024


class _AudioFeed:
    """Dub audio as fixed-size AAC frames, padded with silence past its end."""

    def __init__(self, url: str, title_id: str):
        self._chunks = decode_audio(url, AUDIO_RATE, AUDIO_LAYOUT)
        self._buffer = np.zeros((2, 0), dtype=np.float32)
        self._title_id = title_id

    def take(self, count: int) -> np.ndarray:
        while self._buffer.shape[1] < count:
            chunk = next(self._chunks, None)
            if chunk is None:
                silence = np.zeros((2, count - self._buffer.shape[1]), dtype=np.float32)
                self._buffer = np.concatenate([self._buffer, silence], axis=1)
                break
            if not np.isfinite(chunk).all():
                raise TitleError(self._title_id, "dub audio decodes to NaN or infinite samples")
            self._buffer = np.concatenate([self._buffer, chunk], axis=1)
        out, self._buffer = self._buffer[:, :count], self._buffer[:, count:]
        return out


class CompositeJob(JobRow):
    options: ClassVar[tuple[str, ...]] = ("crf", "preset", "video_codec", "hdr_output", "avatar_framing",
                                          "audio_tolerance_s")

    language: str
    titles_url: Upstream
    dub_audio_url: Content
    output_url: str
    options_json: str
    render_url: Upstream | None = None  # None: the picture passes through unchanged
    faces_url: Upstream | None = None  # an avatar's framing needs its face's box
    chunks_url: Place | None = None  # a range's segment goes in this folder
    #: Title frames [start, end) this job encodes into a segment (picture only); None: the title.
    frame_range: tuple[int, int] | None = None
    #: The range jobs' ``outputs`` manifests, in order: this job joins their segments instead.
    segments: list[Upstream] = []

class CompositeStage(Stage):
    """One row per (title, language) -> one ``outputs`` row and the encoded video at ``output_url``.

    Its job row is a ``CompositeJob``. The title's options may set
    ``crf`` (None or "auto": from the source), ``preset``, ``video_codec`` and ``hdr_output``;
    the stage parameters are their defaults.
    """

    name = "composite"
    version = "7"  # 5: the source as shown, its colour kept, faces pasted in YUV; 6: through a box; 7: ranges
    resources = Resources(cpus=1.0, memory_gb=1.0)
    output_schema = OUTPUTS
    job_row = CompositeJob
    published = ("video_url",)
    defaults = {
        "video_codec": "auto",  # "auto" (close to the source), "h264" or "hevc"
        "hdr_output": "source",  # an HDR source stays HDR ("source") or is tone-mapped to SDR ("sdr")
    }

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._composite(row) for row in rows]

    def _composite(self, row: dict[str, Any]) -> dict[str, Any]:
        title_id, options = row["title_id"], {**self.params, **json.loads(row["options_json"])}
        (title,) = read_rows(row["titles_url"], TITLES)
        video = ShownVideo.from_title(title)
        fps = video.clock.rate
        try:
            audio_s = audio_duration(row["dub_audio_url"])
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise TitleError(title_id, f"dub audio {row['dub_audio_url']} is not readable audio ({exc})") from exc
        if audio_s <= 0:
            raise TitleError(title_id, f"dub audio {row['dub_audio_url']} is empty")
        avatar = title["mode"] == "avatar"
        if avatar:  # the portrait lasts as long as its audio
            audio_fit = "exact"
        else:
            try:
                audio_fit = fit_policy(audio_s, title["duration_s"], float(fps), options["audio_tolerance_s"])
            except ValueError as exc:
                raise TitleError(title_id, f"[{row['language']}] {row['dub_audio_url']}: {exc}") from exc
        framing = _avatar_framing(title, options.get("avatar_framing", "full"), row.get("faces_url")) if avatar else None
        width, height = (framing[1], framing[2]) if framing else (video.width, video.height)
        try:
            plan = plan_encode(video, title["video_codec"], options, width, height)
        except ValueError as exc:
            raise TitleError(title_id, f"[{row['language']}] {exc}") from exc

        start, end = row.get("frame_range") or (0, video.clock.frame_count)
        segment = row.get("frame_range") is not None
        output_url = f"{row['chunks_url']}/segment.mp4" if segment else row["output_url"]
        try:
            with storage.local_output(output_url, ".mp4") as local_file:
                if row.get("segments"):
                    written, faces = _join(title_id, fps, row["dub_audio_url"], local_file, row["segments"])
                else:
                    pictures = (_portrait(video, max(1, round(audio_s * fps))) if avatar
                                else itertools.islice(frames(video, "native", start), end - start))
                    written, faces = self._encode(title_id, video, plan, None if segment else row["dub_audio_url"],
                                                  local_file, pictures, row.get("render_url"), framing, start)
        except storage.OutputLocationError as exc:
            raise TitleError(title_id, f"[{row['language']}] {exc}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise TitleError(title_id, f"[{row['language']}] encoding failed ({exc})") from exc
        if not row.get("segments"):  # a join copies its ranges' work
            self.count_work(frames=written, faces=faces)
        self.report(crf=plan.crf, bit_depth=plan.colour.bit_depth, tone_mapped=plan.to_sdr)
        return {
            "title_id": title_id,
            "language": row["language"],
            "video_url": output_url,
            "width": plan.width,
            "height": plan.height,
            "fps": float(fps),
            "frame_count": written,
            "duration_s": written / float(fps),
            "video_codec": plan.codec,
            "pix_fmt": plan.pix_fmt,
            "color_primaries": plan.colour.primaries,
            "color_transfer": plan.colour.transfer,
            "color_matrix": plan.colour.matrix,
            "color_range": plan.colour.range,
            "crf": plan.crf,
            "audio_codec": "none" if segment else "aac",
            "audio_source_s": audio_s,
            "audio_fit": audio_fit,
            "faces_dubbed": faces,
        }

    @staticmethod
    def _encode(title_id: str, video: ShownVideo, plan: EncodePlan, audio_url: str | None, path: str,
                pictures: Iterator[av.VideoFrame],
                render_url: str | None, framing: tuple[Callable[[np.ndarray], np.ndarray], int, int] | None,
                start: int = 0) -> tuple[int, int]:
        """Encode ``pictures`` (title frames from ``start`` on) with the rendered faces pasted and
        the dub audio beside them (None: picture only); returns (frames written, face crops pasted)."""
        fps = video.clock.rate
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            video_out = add_video_stream(out, plan, fps)
            audio = None if audio_url is None else _AudioTrack(out, audio_url, title_id)
            output = _Output(plan, video)

            def decoded() -> Iterator[tuple[av.VideoFrame, list[tuple[np.ndarray, np.ndarray]]]]:
                """(frame, its crops: RGBA, crop->frame affine), decoded in a thread ahead: the
                source in the working pixel format (an avatar's still as it is)."""
                crops = rendered_crops(render_url, start)
                pending = next(crops, None)
                for position, frame in enumerate(pictures):
                    due = []
                    while pending is not None and pending[0] == start + position:
                        due.append(pending[1:])
                        pending = next(crops, None)
                    yield (frame if framing else output.base(frame)), due

            def pasted(item: tuple[av.VideoFrame, list[tuple[np.ndarray, np.ndarray]]]) -> tuple[av.VideoFrame, int]:
                """A frame with its crops pasted, and their count; frames are independent, so
                several are pasted at once while the encoder takes the frames before."""
                frame, due = item
                if framing:  # an avatar: the still portrait is RGB anyway
                    rgb = frame.to_ndarray(format="rgb24")
                    for rgba, affine in due:
                        paste(rgb, rgba, affine)
                    return output.from_rgb(framing[0](rgb)), len(due)
                return output.paste(frame, due), len(due)

            frames_written = pasted_crops = 0
            for picture, count in ordered_map(pasted, prefetched(decoded())):
                pasted_crops += count
                picture = picture if framing else output.finish(picture)  # one filter graph: in order
                picture.pts, picture.time_base = frames_written, 1 / fps
                out.mux(video_out.encode(picture))
                frames_written += 1
                if audio is not None:
                    audio.until(round(frames_written * AUDIO_RATE / fps))
            out.mux(video_out.encode(None))
            if audio is not None:
                audio.finish(round(frames_written * AUDIO_RATE / fps))
        return frames_written, pasted_crops


class _AudioTrack:
    """The dub audio as an AAC stream of ``out``, written up to a sample as the picture advances."""

    def __init__(self, out: av.container.OutputContainer, url: str, title_id: str):
        self._out, self._feed = out, _AudioFeed(url, title_id)
        self._stream = out.add_stream("aac", rate=AUDIO_RATE, layout=AUDIO_LAYOUT)
        self._written = 0

    def until(self, sample: int, final: bool = False) -> None:
        """Encode whole AAC frames up to ``sample`` (``final``: the last, partial one too)."""
        while sample - self._written >= AAC_FRAME or (final and sample > self._written):
            count = min(AAC_FRAME, sample - self._written)
            frame = av.AudioFrame.from_ndarray(self._feed.take(count), format="fltp", layout=AUDIO_LAYOUT)
            frame.sample_rate, frame.pts = AUDIO_RATE, self._written
            frame.time_base = Fraction(1, AUDIO_RATE)
            self._out.mux(self._stream.encode(frame))
            self._written += count

    def finish(self, sample: int) -> None:
        self.until(sample, final=True)
        self._out.mux(self._stream.encode(None))


def _join(title_id: str, fps: Fraction, audio_url: str, path: str, segments: list[str]) -> tuple[int, int]:
    """Copy the segments' video packets (``outputs`` manifests of range jobs, in order) one after the
    other into ``path``, each shifted by the frames before it, with the dub audio encoded beside
    them; returns (frames, face crops pasted). Each segment starts with a keyframe and its decode
    timestamps run one frame apart from a fixed encoder delay, so the joined stream's timestamps
    rise monotonically across the joins."""
    parts = [row for url in segments for row in read_rows(url, OUTPUTS)]
    written = 0
    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
        video_out = None
        audio = _AudioTrack(out, audio_url, title_id)
        for part in parts:
            with open_media(part["video_url"]) as segment:
                stream = segment.streams.video[0]
                if video_out is None:
                    video_out = out.add_stream_from_template(stream)
                    # The template drops the codec tag (FFmpeg's MP4 default for HEVC is hev1,
                    # which Apple players refuse): keep the segment's (hvc1).
                    video_out.codec_context.codec_tag = stream.codec_context.codec_tag
                    extradata = stream.codec_context.extradata
                elif stream.codec_context.extradata != extradata:
                    raise ValueError(f"segment {part['video_url']} was encoded with other parameters than the first")
                shift = round(written / fps / stream.time_base)
                first = True
                for packet in segment.demux(stream):
                    if packet.dts is None:  # the demuxer's end-of-stream packet
                        continue
                    if first and not packet.is_keyframe:
                        raise ValueError(f"segment {part['video_url']} does not start with a keyframe")
                    first = False
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = video_out
                    out.mux(packet)
                    audio.until(max(0, round(float(packet.dts * stream.time_base) * AUDIO_RATE)))
            written += part["frame_count"]
        audio.finish(round(written * AUDIO_RATE / fps))
    return written, sum(part["faces_dubbed"] for part in parts)


class _Output:
    """Shown frames -> what the encoder is fed: even-sized (the last row/column repeated), in the
    output's pixel format, faces pasted, tone-mapped when SDR delivery was asked, colour-tagged."""

    def __init__(self, plan: EncodePlan, video: ShownVideo):
        self._plan = plan
        self._shape: FilterChain | None = None
        self._sdr: FilterChain | None = None
        if plan.to_sdr:  # faces are pasted in the source's own colour, tone-mapped after
            self._work, self._work_fmt = video.colour, "yuv420p10le" if video.colour.bit_depth > 8 else "yuv420p"
            name, arguments = sdr_filter("perceptual")
            self._sdr = FilterChain([(name, f"{arguments}:out_range=tv"), ("format", plan.pix_fmt)])
        else:
            self._work, self._work_fmt = plan.colour, plan.pix_fmt

    def base(self, frame: av.VideoFrame) -> av.VideoFrame:
        """A shown frame, even-sized, in the working pixel format (the source's colour)."""
        if self._shape is None:
            chain = []
            pad_w, pad_h = self._plan.width - frame.width, self._plan.height - frame.height
            if pad_w or pad_h:
                chain += [("pad", f"{self._plan.width}:{self._plan.height}:0:0"),
                          ("fillborders", f"right={pad_w}:bottom={pad_h}:mode=smear")]
            if frame.format.is_rgb:  # RGB sources become YUV through the matrix they are written with
                chain.append(("scale", f"out_color_matrix={self._work.matrix}:out_range={self._work.range or 1}"))
            self._shape = FilterChain(chain + [("format", self._work_fmt)])
        return self._shape(frame)

    def paste(self, base: av.VideoFrame, crops: list[tuple[np.ndarray, np.ndarray]]) -> av.VideoFrame:
        """``base`` with the RGBA ``crops`` (crop, crop->frame affine) pasted: only the pixels they
        cover (luma) and the chroma samples those touch change; the rest stay bit-identical.

        Only a box around the crops goes through RGB and back (``paste_box``), not the whole
        frame: swscale converts the box's samples exactly as in the whole frame; the crops are
        warped on the box's grid, whose fixed-point rounding differs from the frame's by a level
        or two on a few samples.
        """
        if not crops:
            return base
        planes = base.to_ndarray()
        height, width = base.height, base.width
        x0, y0, x1, y1 = paste_box([(rgba.shape[1], rgba.shape[0], affine) for rgba, affine in crops], width, height)
        luma = planes[:height]
        chroma = planes[height:].reshape(2, height // 2, width // 2)
        box_chroma = chroma[:, y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        box = av.VideoFrame.from_ndarray(np.vstack([luma[y0:y1, x0:x1], box_chroma.reshape(-1, x1 - x0)]),
                                         format=self._work_fmt)
        for name in ("colorspace", "color_range", "color_primaries", "color_trc"):  # what base converts with
            setattr(box, name, getattr(base, name))
        deep = self._work_fmt != "yuv420p"
        rgb = box.to_ndarray(format="rgb48le" if deep else "rgb24")
        covered = np.zeros(rgb.shape[:2], bool)
        for rgba, affine in crops:
            shifted = affine.copy()
            shifted[:, 2] -= (x0, y0)
            covered |= paste(rgb, rgba, shifted)
        pasted = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if deep else "rgb24").reformat(
            format=self._work_fmt, dst_colorspace=sws_matrix(self._work), dst_color_range=self._work.range or None)
        new = pasted.to_ndarray()
        box_height = y1 - y0
        new_chroma = new[box_height:].reshape(2, box_height // 2, (x1 - x0) // 2)
        luma[y0:y1, x0:x1][covered] = new[:box_height][covered]
        chroma_covered = covered.reshape(box_height // 2, 2, (x1 - x0) // 2, 2).any(axis=(1, 3))
        box_chroma[:, chroma_covered] = new_chroma[:, chroma_covered]
        return tag(av.VideoFrame.from_ndarray(planes, format=self._work_fmt), self._work)

    def finish(self, frame: av.VideoFrame) -> av.VideoFrame:
        """The frame the encoder gets: tone-mapped for SDR delivery, tagged with the output's colour."""
        if self._sdr is not None:
            frame = self._sdr(tag(frame, self._work))
        return tag(frame, self._plan.colour)

    def from_rgb(self, rgb: np.ndarray) -> av.VideoFrame:
        """An RGB picture (an avatar's) as the encoder's frame: even-sized by repeating the last
        row/column, then YUV through the output's matrix and range."""
        height, width = self._plan.height, self._plan.width
        rgb = np.pad(rgb, ((0, height - rgb.shape[0]), (0, width - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format=self._plan.pix_fmt, dst_colorspace=sws_matrix(self._plan.colour),
            dst_color_range=self._plan.colour.range or None)
        return tag(frame, self._plan.colour)


#: Pixels around the pasted crops that go through RGB too, so that the samples written never lie at
#: the box's edge, where chroma would be up- and downsampled without its outer neighbours.
_BOX_MARGIN = 8
#: Box corners on multiples of 16: whole 4:2:0 chroma samples, and swscale's dither and SIMD
#: phases as in the whole frame.
_BOX_ALIGN = 16


def paste_box(crops: list[tuple[int, int, np.ndarray]], width: int, height: int) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1; px, end exclusive) of a ``width``×``height`` frame (both even)
    that holds every crop (crop width, crop height, 2×3 crop->frame affine) with ``_BOX_MARGIN``
    around it, corners out to multiples of ``_BOX_ALIGN``, clipped to the frame."""
    corners = np.vstack([np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ affine[:, :2].T + affine[:, 2]
                         for w, h, affine in crops])
    x0, y0 = (np.floor(corners.min(axis=0)).astype(int) - _BOX_MARGIN) // _BOX_ALIGN * _BOX_ALIGN
    x1, y1 = -(-(np.ceil(corners.max(axis=0)).astype(int) + _BOX_MARGIN) // _BOX_ALIGN) * _BOX_ALIGN
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:  # every crop outside the frame: nothing will be written
        return 0, 0, 2, 2
    return int(x0), int(y0), int(x1), int(y1)


def _portrait(video: ShownVideo, count: int) -> Iterator[av.VideoFrame]:
    """The portrait as a still picture ``count`` frames long (the rendered face is pasted onto it)."""
    still = next(frames(video, "rgb"))
    for _ in range(count):
        yield still


def _avatar_framing(title: dict[str, Any], framing: str, faces_url: str | None):
    """SadTalker's output framings of an avatar: (frame -> picture, width, height), or None for
    "full" (the whole portrait). "crop": a square around the face (1.8× its box), 512 px.
    "resize": the whole portrait, 512 px on its longer side."""
    if framing == "full":
        return None
    if framing == "resize":
        scale = 512 / max(title["width"], title["height"])
        size = (round(title["width"] * scale), round(title["height"] * scale))
        return (lambda rgb: cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)), *size
    tracks = read_rows(faces_url, FACE_TRACKS, without=("landmarks",)) if faces_url else []
    if not tracks:
        raise TitleError(title["title_id"], "avatar_framing 'crop' needs a face in the portrait")
    x0, y0, x1, y1 = max(tracks, key=lambda t: len(t["frame_index"]))["bbox"][0]
    side = 1.8 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    to_crop = np.array([[512 / side, 0, 256 - cx * 512 / side], [0, 512 / side, 256 - cy * 512 / side]])
    return (lambda rgb: cv2.warpAffine(rgb, to_crop, (512, 512), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)), 512, 512
