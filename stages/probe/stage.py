"""probe: what a source file is — container and stream facts, frame count, content hash."""

from __future__ import annotations

import re
from typing import Any

import av
import numpy as np

from schemas import storage
from schemas.manifests import TITLES
from stages.base import Resources, Stage, TitleError
from stages.media import iso_truncation, media_error, open_media, stream_rate

_FFMPEG_PICTURE_SIZE = re.compile(r"Picture size (\d+)x(\d+) is invalid")


class ProbeStage(Stage):
    """Catalogue rows (title_id, mode, source_url) -> ``titles`` rows.

    Frame count and frame-rate regularity come from demuxing packets (no decoding); the first
    frame is decoded to prove the stream is readable. A portrait image reads as one frame.

    Refused, each with a message naming the title and the problem: empty, truncated (MP4/MOV cut
    short) or unreadable files, no video stream, a codec FFmpeg cannot decode, absurd resolutions,
    and frame timing so variable that the constant frame clock every later stage works on would
    drift from the picture by more than ``max_vfr_drift_s`` (the dub would not stay in sync).
    """

    name = "probe"
    version = "2"  # 2: VFR flag ignores timestamp rounding; truncated and drifting-VFR sources refused
    resources = Resources(cpus=0.5, memory_gb=0.5)
    output_schema = TITLES
    defaults = {
        "max_side": 8192,  # refuse absurd resolutions before anything decodes them
        "vfr_tolerance": 0.02,  # relative spread of frame durations above which a stream is VFR
        "max_vfr_drift_s": 0.1,  # refuse frame times further than this from the constant-rate clock
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
            with open_media(url) as container:
                facts = self._stream_facts(title_id, container)
            with open_media(url) as container:  # anew: image pipes cannot seek back after demuxing
                self._decode_first_frame(title_id, container)
        except FileNotFoundError as exc:
            raise TitleError(title_id, f"source not found: {url}") from exc
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            reason = media_error(exc, url)
            size = _FFMPEG_PICTURE_SIZE.search(reason)  # too large for FFmpeg even to open
            if size:
                raise TitleError(title_id, f"resolution {size[1]}x{size[2]} is above the limit of "
                                           f"{self.params['max_side']} px per side (FFmpeg cannot even open it)") from exc
            raise TitleError(title_id, f"source {url} is not a readable video ({reason})") from exc
        return {
            "title_id": title_id,
            "mode": mode,
            "source_url": url,
            "content_hash": content_hash,
            "size_bytes": size_bytes,
            **facts,
        }

    def _stream_facts(self, title_id: str, container: av.container.InputContainer) -> dict[str, Any]:
        if not container.streams.video:
            raise TitleError(title_id, "source has no video stream")
        video = container.streams.video[0]
        ctx = video.codec_context
        if ctx is None:  # demuxed, but FFmpeg has no decoder for it
            raise TitleError(title_id, "video stream uses a codec this FFmpeg build cannot decode (unsupported codec)")
        width, height = int(ctx.width), int(ctx.height)
        if width <= 0 or height <= 0:
            raise TitleError(title_id, "video stream has no picture size")
        if max(width, height) > self.params["max_side"]:
            raise TitleError(
                title_id, f"resolution {width}x{height} is above the limit of {self.params['max_side']} px per side"
            )
        rate = stream_rate(video)
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_ctx = audio.codec_context if audio else None  # None too for an audio codec without decoder
        audio_facts = {
            "audio_streams": len(container.streams.audio),
            "audio_codec": audio_ctx.name if audio_ctx else ("unknown" if audio else None),
            "audio_sample_rate": int(audio_ctx.sample_rate) if audio_ctx else None,
            "audio_channels": int(audio_ctx.channels) if audio_ctx else None,
        }

        pts = [p.pts for p in container.demux(video) if p.size > 0 and p.pts is not None]
        if not pts:
            raise TitleError(title_id, "video stream has no frames")

        frame_count = len(pts)
        drift = self._clock_drift(pts, video.time_base, rate)
        if drift > self.params["max_vfr_drift_s"]:
            raise TitleError(
                title_id,
                f"variable frame rate: frame times drift up to {drift:.2f} s from a constant {float(rate):.3g} fps "
                f"clock (limit {self.params['max_vfr_drift_s']:g} s), so the dub would go out of sync; convert "
                "the source to a constant frame rate first (e.g. ffmpeg -i in.mp4 -fps_mode cfr out.mp4)",
            )
        return {
            "container": container.format.name,
            "video_codec": ctx.name,
            "pix_fmt": ctx.pix_fmt or "unknown",
            "width": width,
            "height": height,
            "fps_num": rate.numerator,
            "fps_den": rate.denominator,
            "fps": float(rate),
            "frame_count": frame_count,
            "duration_s": frame_count / float(rate),
            "variable_frame_rate": self._is_variable_rate(pts),
            **audio_facts,
        }

    @staticmethod
    def _decode_first_frame(title_id: str, container: av.container.InputContainer) -> None:
        try:
            next(container.decode(video=0))
        except (StopIteration, av.error.FFmpegError) as exc:
            raise TitleError(title_id, f"video stream cannot be decoded ({exc or 'no frame'})") from exc

    def _is_variable_rate(self, pts: list[int]) -> bool:
        if len(pts) < 3:
            return False
        durations = np.diff(np.sort(np.asarray(pts, dtype=np.int64)))
        median = float(np.median(durations))
        if median <= 0:
            return True
        # One tick is timestamp rounding, not a rate change (29.97 fps in ms: 33, 33, 34, ...).
        spread = max(0.0, float(np.percentile(np.abs(durations - median), 95)) - 1.0) / median
        return bool(spread > self.params["vfr_tolerance"])

    @staticmethod
    def _clock_drift(pts: list[int], time_base, rate) -> float:
        """Largest distance in seconds between a frame's own time and where the constant frame
        clock of the later stages (frame i at i / rate) puts it."""
        if time_base is None or len(pts) < 2:
            return 0.0
        ticks = np.sort(np.asarray(pts, dtype=np.int64))
        times = (ticks - ticks[0]) * float(time_base)
        return float(np.abs(times - np.arange(len(ticks)) / float(rate)).max())
