"""Media I/O on URLs with PyAV: open any fsspec URL as a container, decode lazily."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from fractions import Fraction

import av
import av.logging
import numpy as np

from schemas import storage


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
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def decode_audio(url: str, sample_rate: int, layout: str = "stereo") -> Iterator[np.ndarray]:
    """Yield the first audio stream of ``url`` as float32 arrays (channels × samples) at ``sample_rate``."""
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
    with open_media(url) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                yield out.to_ndarray()
    for out in resampler.resample(None):
        yield out.to_ndarray()


def read_audio(url: str, sample_rate: int) -> np.ndarray:
    """The first audio stream of ``url`` as one mono float32 array at ``sample_rate``."""
    chunks = [chunk[0] for chunk in decode_audio(url, sample_rate, layout="mono")]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
