"""probe: what a source is, as shown — container and stream facts, the frame clock, colour, content hash."""

from __future__ import annotations

import re
from typing import Any

import av
from PIL import Image

from dubline.schemas import storage
from dubline.schemas.colour import parse_colour, rgb_to_hex
from dubline.schemas.manifests import TITLES
from dubline.stages.base import Resources, Stage, TitleError
from dubline.stages.job_rows import JobRow, Source
from dubline.stages.media import (
    MAX_LEVEL_PIXELS,
    ShownVideo,
    StillHeader,
    describe,
    iso_truncation,
    media_error,
    open_media,
    still_header,
)

_FFMPEG_PICTURE_SIZE = re.compile(r"Picture size (\d+)x(\d+) is invalid")


class ProbeJob(JobRow):
    """A title's source: ``mode`` "dub" (a video) or "avatar" (a portrait)."""

    mode: str
    source_url: Source

class ProbeStage(Stage):
    """Catalogue rows (title_id, mode, source_url) -> ``titles`` rows: the source as shown
    (``stages.media.describe``).

    Packets are demuxed (no decoding) for the frame count, the frame clock and the bit rate; the
    first frame is decoded for the display matrix, the colour description and proof that the
    stream is readable. A still image (anything Pillow reads as one picture) is one frame, its
    longer side bounded by ``still_max_side``, transparency over ``background``.

    Refused, each with a message naming the title and the problem: empty, truncated (MP4/MOV cut
    short) or unreadable files, no video stream, a codec FFmpeg cannot decode, absurd resolutions,
    and pictures larger than H.264/HEVC allow. Variable frame rate is not refused: the title is put
    on a constant frame clock (see ``stages.media.FrameClock``).
    """

    name = "probe"
    version = "4"  # 3: the source as shown (orientation, VFR on a clock, colour, stills); VFR accepted; 4: keyframes
    resources = Resources(cpus=0.5, memory_gb=0.5)
    output_schema = TITLES
    job_row = ProbeJob
    defaults = {
        "max_side": 8192,  # refuse absurd video resolutions before anything decodes them
        "vfr_tolerance": 0.02,  # relative spread of frame durations above which a stream is VFR
        "max_clock_fps": 60.0,  # a VFR clock runs at the stream's base rate up to this, else its average
        "still_max_side": 1920,  # px: a still image (portrait) is analysed and written at most this large
        "background": "#ffffff",  # what a still's transparent pixels are shown over
    }

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._probe(row["title_id"], row["mode"], row["source_url"]) for row in rows]

    def _probe(self, title_id: str, mode: str, url: str) -> dict[str, Any]:
        try:
            size_bytes = storage.size(url)
            if size_bytes == 0:
                raise TitleError(title_id, f"source {url} is not a readable video: the file is empty (0 bytes)")
            truncation = iso_truncation(url, size_bytes)
            if truncation:
                raise TitleError(title_id, f"source {url} is truncated: {truncation}")
            content_hash = storage.fingerprint(url)
            video = describe(url, still_max_side=self.params["still_max_side"],
                             background=parse_colour(self.params["background"]),
                             vfr_tolerance=self.params["vfr_tolerance"], max_fps=self.params["max_clock_fps"],
                             check=lambda container: self._check_streams(title_id, container))
            if video.still:
                facts = _still_facts(still_header(url))
            else:
                with open_media(url) as container:
                    facts = self._container_facts(container)
        except FileNotFoundError as exc:
            raise TitleError(title_id, f"source not found: {url}") from exc
        except Image.DecompressionBombError as exc:
            raise TitleError(title_id, f"source {url} is too large an image to read safely ({exc})") from exc
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            reason = media_error(exc, url)
            size = _FFMPEG_PICTURE_SIZE.search(reason)  # too large for FFmpeg even to open
            if size:
                raise TitleError(title_id, f"resolution {size[1]}x{size[2]} is above the limit of "
                                           f"{self.params['max_side']} px per side (FFmpeg cannot even open it)") from exc
            raise TitleError(title_id, f"source {url} is not a readable video ({reason})") from exc
        if not video.still and video.width * video.height > MAX_LEVEL_PIXELS:
            raise TitleError(title_id, f"picture {video.width}x{video.height} is larger than H.264 and HEVC allow "
                                       f"({MAX_LEVEL_PIXELS:,} pixels at level 6.2, e.g. 8192x4352)")
        self.report(variable_frame_rate=video.clock.resampled, rotation_deg=video.orientation.degrees,
                    hdr=video.colour.hdr, still=video.still)
        return {
            "title_id": title_id,
            "mode": mode,
            "source_url": url,
            "content_hash": content_hash,
            "size_bytes": size_bytes,
            **facts,
            **_shown_facts(video),
        }

    def _check_streams(self, title_id: str, container: av.container.InputContainer) -> None:
        """Refuse what no later stage could use, before anything is decoded."""
        if not container.streams.video:
            raise TitleError(title_id, "source has no video stream")
        ctx = container.streams.video[0].codec_context
        if ctx is None:  # demuxed, but FFmpeg has no decoder for it
            raise TitleError(title_id, "video stream uses a codec this FFmpeg build cannot decode (unsupported codec)")
        width, height = int(ctx.width), int(ctx.height)
        if width <= 0 or height <= 0:
            raise TitleError(title_id, "video stream has no picture size")
        if max(width, height) > self.params["max_side"]:
            raise TitleError(
                title_id, f"resolution {width}x{height} is above the limit of {self.params['max_side']} px per side"
            )

    @staticmethod
    def _container_facts(container: av.container.InputContainer) -> dict[str, Any]:
        video = container.streams.video[0] if container.streams.video else None
        ctx = video.codec_context if video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_ctx = audio.codec_context if audio else None  # None too for an audio codec without decoder
        return {
            "container": container.format.name,
            "video_codec": ctx.name if ctx else "unknown",
            "pix_fmt": (ctx.pix_fmt if ctx else None) or "unknown",
            "audio_streams": len(container.streams.audio),
            "audio_codec": audio_ctx.name if audio_ctx else ("unknown" if audio else None),
            "audio_sample_rate": int(audio_ctx.sample_rate) if audio_ctx else None,
            "audio_channels": int(audio_ctx.channels) if audio_ctx else None,
        }


def _still_facts(header: StillHeader) -> dict[str, Any]:
    """Container and stream facts of a still image, as Pillow reads them (e.g. JPEG, CMYK)."""
    return {"container": header.format.lower(), "video_codec": header.format.lower(), "pix_fmt": header.mode,
            "audio_streams": 0, "audio_codec": None, "audio_sample_rate": None, "audio_channels": None}


def _shown_facts(video: ShownVideo) -> dict[str, Any]:
    """The ``titles`` columns of a shown video (read back by ``ShownVideo.from_title``)."""
    clock, colour = video.clock, video.colour
    return {
        "width": video.width,
        "height": video.height,
        "coded_width": video.coded_width,
        "coded_height": video.coded_height,
        "rotation_deg": video.orientation.degrees,
        "mirrored": video.orientation.mirrored,
        "sar_num": video.sample_aspect.numerator,
        "sar_den": video.sample_aspect.denominator,
        "fps_num": clock.rate.numerator,
        "fps_den": clock.rate.denominator,
        "fps": float(clock.rate),
        "frame_count": clock.frame_count,
        "duration_s": video.duration_s,
        "start_s": clock.start_s,
        "source_frames": video.source_frames,
        "variable_frame_rate": clock.resampled,
        "keyframe_index": [index for index, _ in video.keyframes],
        "keyframe_pts": [pts for _, pts in video.keyframes],
        "color_primaries": colour.primaries,
        "color_transfer": colour.transfer,
        "color_matrix": colour.matrix,
        "color_range": colour.range,
        "bit_depth": colour.bit_depth,
        "bit_rate": video.bit_rate,
        "still": video.still,
        "background": rgb_to_hex(video.background) if video.still else None,
    }
