"""probe: what a source file is — container and stream facts, frame count, content hash."""

from __future__ import annotations

from typing import Any

import av
import numpy as np

from schemas import storage
from schemas.manifests import TITLES
from stages.base import Resources, Stage, TitleError
from stages.media import open_media, stream_rate


class ProbeStage(Stage):
    """Catalogue rows (title_id, mode, source_url) -> ``titles`` rows.

    Frame count and frame-rate regularity come from demuxing packets (no decoding); the first
    frame is decoded to prove the stream is readable. A portrait image reads as one frame.
    """

    name = "probe"
    version = "1"
    resources = Resources(cpus=0.5, memory_gb=0.5)
    output_schema = TITLES
    defaults = {
        "max_side": 8192,  # refuse absurd resolutions before anything decodes them
        "vfr_tolerance": 0.02,  # relative spread of frame durations above which a stream is VFR
    }

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._probe(row["title_id"], row["mode"], row["source_url"]) for row in rows]

    def _probe(self, title_id: str, mode: str, url: str) -> dict[str, Any]:
        try:
            content_hash = storage.fingerprint(url)
            size_bytes = storage.size(url)
            with open_media(url) as container:
                facts = self._stream_facts(title_id, container)
            with open_media(url) as container:  # anew: image pipes cannot seek back after demuxing
                self._decode_first_frame(title_id, container)
        except TitleError:
            raise
        except FileNotFoundError as exc:
            raise TitleError(title_id, f"source not found: {url}") from exc
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise TitleError(title_id, f"source {url} is not a readable video ({exc})") from exc
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
        width, height = int(ctx.width), int(ctx.height)
        if width <= 0 or height <= 0:
            raise TitleError(title_id, "video stream has no picture size")
        if max(width, height) > self.params["max_side"]:
            raise TitleError(
                title_id, f"resolution {width}x{height} is above the limit of {self.params['max_side']} px per side"
            )
        rate = stream_rate(video)
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_facts = {
            "audio_streams": len(container.streams.audio),
            "audio_codec": audio.codec_context.name if audio else None,
            "audio_sample_rate": int(audio.codec_context.sample_rate) if audio else None,
            "audio_channels": int(audio.codec_context.channels) if audio else None,
        }

        pts = [p.pts for p in container.demux(video) if p.size > 0 and p.pts is not None]
        if not pts:
            raise TitleError(title_id, "video stream has no frames")

        frame_count = len(pts)
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
        spread = np.percentile(np.abs(durations - median), 95) / median
        return bool(spread > self.params["vfr_tolerance"])
