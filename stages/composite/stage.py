"""composite: stream the source picture, re-encode H.264, mux the dub audio.

Frames are decoded, encoded and written one at a time, so memory stays flat in video length.
Dub audio is fitted to the picture's duration (see ``fit_policy``), never left to drift.
"""

from __future__ import annotations

import json
from fractions import Fraction
from collections.abc import Callable, Iterator
from typing import Any

import av
import cv2
import numpy as np

from schemas import storage
from schemas.manifest_io import read_rows
from schemas.manifests import FACE_TRACKS, OUTPUTS, TITLES
from stages.base import Resources, Stage, TitleError
from stages.audio.fit import fit_policy
from stages.composite.paste import paste, rendered_crops
from stages.media import audio_duration, decode_audio, open_media

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


class CompositeStage(Stage):
    """One row per (title, language) -> one ``outputs`` row and the encoded video at ``output_url``.

    Input row keys: title_id, language, titles_url, dub_audio_url, output_url, options_json, and
    render_url (the ``rendered_tracks`` manifest; None: the picture passes through unchanged) and,
    for an avatar, faces_url (its framing needs the face's box).
    """

    name = "composite"
    version = "4"
    resources = Resources(cpus=1.0, memory_gb=1.0)
    output_schema = OUTPUTS

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._composite(row) for row in rows]

    def _composite(self, row: dict[str, Any]) -> dict[str, Any]:
        title_id, options = row["title_id"], json.loads(row["options_json"])
        (title,) = read_rows(row["titles_url"], TITLES)
        fps = Fraction(title["fps_num"], title["fps_den"])
        try:
            audio_s = audio_duration(row["dub_audio_url"])
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise TitleError(title_id, f"dub audio {row['dub_audio_url']} is not readable audio ({exc})") from exc
        if audio_s <= 0:
            raise TitleError(title_id, f"dub audio {row['dub_audio_url']} is empty")
        if title["mode"] == "avatar":  # the portrait lasts as long as its audio
            audio_fit = "exact"
        else:
            try:
                audio_fit = fit_policy(audio_s, title["duration_s"], float(fps), options["audio_tolerance_s"])
            except ValueError as exc:
                raise TitleError(title_id, f"[{row['language']}] {exc}") from exc

        try:
            with storage.local_output(row["output_url"], ".mp4") as local_file:
                avatar = title["mode"] == "avatar"
                pictures = (_portrait(title["source_url"], max(1, round(audio_s * fps)))
                            if avatar else _decoded(title["source_url"]))
                framing = _avatar_framing(title, options.get("avatar_framing", "full"), row.get("faces_url")) if avatar else None
                frames, width, height, faces = self._encode(title, row["dub_audio_url"], local_file, options,
                                                            pictures, row.get("render_url"), framing)
        except storage.OutputLocationError as exc:
            raise TitleError(title_id, f"[{row['language']}] {exc}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise TitleError(title_id, f"[{row['language']}] encoding failed ({exc})") from exc
        return {
            "title_id": title_id,
            "language": row["language"],
            "video_url": row["output_url"],
            "width": width,
            "height": height,
            "fps": float(fps),
            "frame_count": frames,
            "duration_s": frames / float(fps),
            "video_codec": "h264",
            "audio_codec": "aac",
            "audio_source_s": audio_s,
            "audio_fit": audio_fit,
            "faces_dubbed": faces,
        }

    def _encode(self, title: dict[str, Any], audio_url: str, path: str, options: dict[str, Any],
                pictures: Iterator[av.VideoFrame], render_url: str | None,
                framing: tuple[Callable[[np.ndarray], np.ndarray], int, int] | None = None) -> tuple[int, int, int, int]:
        fps = Fraction(title["fps_num"], title["fps_den"])
        # yuv420p needs even sides: an odd source gains one replicated row/column.
        width, height = (framing[1], framing[2]) if framing else (title["width"], title["height"])
        width, height = width + width % 2, height + height % 2
        audio = _AudioFeed(audio_url, title["title_id"])
        audio_written = 0
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            video_out = out.add_stream("libx264", rate=fps)
            video_out.width, video_out.height, video_out.pix_fmt = width, height, "yuv420p"
            video_out.options = {"crf": str(options["crf"]), "preset": options["preset"]}
            video_out.codec_context.time_base = 1 / fps
            audio_out = out.add_stream("aac", rate=AUDIO_RATE, layout=AUDIO_LAYOUT)

            def write_audio_until(sample: int, final: bool) -> None:
                nonlocal audio_written
                while sample - audio_written >= AAC_FRAME or (final and sample > audio_written):
                    count = min(AAC_FRAME, sample - audio_written)
                    frame = av.AudioFrame.from_ndarray(audio.take(count), format="fltp", layout=AUDIO_LAYOUT)
                    frame.sample_rate, frame.pts = AUDIO_RATE, audio_written
                    frame.time_base = Fraction(1, AUDIO_RATE)
                    out.mux(audio_out.encode(frame))
                    audio_written += count

            frames = pasted = 0
            crops = rendered_crops(render_url)
            pending = next(crops, None)
            for frame in pictures:
                if pending is not None and pending[0] == frames:
                    rgb = frame.to_ndarray(format="rgb24")
                    while pending is not None and pending[0] == frames:
                        paste(rgb, pending[1], pending[2])
                        pasted += 1
                        pending = next(crops, None)
                    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if framing:
                    frame = av.VideoFrame.from_ndarray(framing[0](frame.to_ndarray(format="rgb24")), format="rgb24")
                picture = self._even_yuv(frame, width, height)
                picture.pts, picture.time_base = frames, 1 / fps
                out.mux(video_out.encode(picture))
                frames += 1
                write_audio_until(round(frames * AUDIO_RATE / fps), final=False)
            out.mux(video_out.encode(None))
            write_audio_until(round(frames * AUDIO_RATE / fps), final=True)
            out.mux(audio_out.encode(None))
        return frames, width, height, pasted

    @staticmethod
    def _even_yuv(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        if (frame.width, frame.height) == (width, height):
            return frame.reformat(format="yuv420p")
        rgb = frame.to_ndarray(format="rgb24")
        padded = np.pad(rgb, ((0, height - frame.height), (0, width - frame.width), (0, 0)), mode="edge")
        return av.VideoFrame.from_ndarray(padded, format="rgb24").reformat(format="yuv420p")


def _decoded(url: str) -> Iterator[av.VideoFrame]:
    with open_media(url) as source:
        yield from source.decode(source.streams.video[0])


def _portrait(url: str, frames: int) -> Iterator[av.VideoFrame]:
    """The portrait as a still picture ``frames`` long (the rendered face is pasted onto it)."""
    with open_media(url) as source:
        still = next(source.decode(video=0)).to_ndarray(format="rgb24")
    for _ in range(frames):
        yield av.VideoFrame.from_ndarray(still, format="rgb24")


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
    tracks = read_rows(faces_url, FACE_TRACKS) if faces_url else []
    if not tracks:
        raise TitleError(title["title_id"], "avatar_framing 'crop' needs a face in the portrait")
    x0, y0, x1, y1 = max(tracks, key=lambda t: len(t["frame_index"]))["bbox"][0]
    side = 1.8 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    to_crop = np.array([[512 / side, 0, 256 - cx * 512 / side], [0, 512 / side, 256 - cy * 512 / side]])
    return (lambda rgb: cv2.warpAffine(rgb, to_crop, (512, 512), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)), 512, 512
