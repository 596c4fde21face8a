"""Media I/O on URLs with PyAV: open any fsspec URL as a container, decode lazily."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction

import av
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
