"""Fuzzed media: thousands of mutations of short real clips, audio tracks and portraits — bit flips,
truncations, cut/copied/overwritten ranges, and header fields set to absurd values (sizes,
durations, time scales, sample rates, channel counts, frame counts) — go through probe and the
decode paths: the probe stage, the readers of ``stages.media`` (frames in every view, audio), the
audio stage's decode, and portrait loading.

Every case must end, within ``CASE_LIMIT_S``, in a result or a per-title error: the stages raise
``TitleError``, the readers the errors the stages turn into one (ValueError, OSError, FFmpeg's).
A case that hangs, kills its process (a crash, an abort) or exhausts memory is a finding, and so is
any other exception. Cases run in worker processes of their own (this file run as a script), so a
hang or a crash is observed rather than suffered; each worker's address space is capped so an
absurd allocation fails instead of swapping the machine.

Sources and mutations are made here from a fixed seed: ``DUBLINE_FUZZ_CASES=N`` runs more cases
(default sized to take about a minute on 2 cores), ``DUBLINE_FUZZ_SEED`` other ones, and
``DUBLINE_FUZZ_KEEP=DIR`` keeps the inputs of findings. The summary (outcomes by kind, the slowest
case) is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import queue
import random
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pytest

CASES = int(os.environ.get("DUBLINE_FUZZ_CASES", "6000"))
SEED = int(os.environ.get("DUBLINE_FUZZ_SEED", "16"))
#: Seconds one case (all its steps) may take; a healthy one takes ~0.05-0.5 s here.
CASE_LIMIT_S = 10.0
WORKERS = 2
#: Address space of a worker process; the decoders need ~1 GB on these tiny inputs.
WORKER_MEMORY_BYTES = 4 << 30

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]

#: Outcomes of a step. Stage steps must end "ok" or "title_error"; reader steps may also end in a
#: "media_error" (ValueError, OSError, FFmpeg's and Pillow's errors: the stages' per-title errors).
STAGE_OUTCOMES = {"ok", "title_error"}
READER_OUTCOMES = STAGE_OUTCOMES | {"media_error"}

# --- sources, made by the test -----------------------------------------------------------------


def _encode(path: Path, fmt: str, video: tuple[str, str] | None, audio: tuple[str, str, int] | None,
            frames: list, speech) -> None:
    """A short clip: ``video`` (codec, pix_fmt) frames at 25 fps, ``audio`` (codec, sample format,
    rate) speech, in container ``fmt``."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=fmt) as out:
        vstream = astream = None
        if video:
            vstream = out.add_stream(video[0], rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = frames[0].shape[1], frames[0].shape[0], video[1]
            if video[0] == "libx264":
                vstream.options = {"preset": "ultrafast"}
        if audio:
            astream = out.add_stream(audio[0], rate=audio[2], layout="mono")
        if vstream:
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 25)
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if astream:
            resampler = av.AudioResampler(format=audio[1], layout="mono", rate=audio[2])
            source = av.AudioFrame.from_ndarray(speech.samples[None, :].astype(np.float32), format="fltp", layout="mono")
            source.sample_rate, source.pts, source.time_base = speech.sample_rate, 0, Fraction(1, speech.sample_rate)
            size = astream.codec_context.frame_size or 1024
            fifo = av.AudioFifo()
            for chunk in resampler.resample(source) + resampler.resample(None):
                fifo.write(chunk)
            while fifo.samples:
                out.mux(astream.encode(fifo.read(min(size, fifo.samples))))
            out.mux(astream.encode(None))


def make_sources(folder: Path) -> dict[str, Path]:
    """Short real media: a portrait clip with speech in three containers, speech in four audio
    formats, the portrait in six image formats. Named by format."""
    import numpy as np
    from PIL import Image

    from dubline.flows.demo import astronaut, push_in, square, write_clip
    from dubline.stages.speech.espeak import synthesize, write_wav

    speech = synthesize("Hello there.", voice="en")
    portrait = square(astronaut(), 64)
    frames = [np.ascontiguousarray(f) for f in push_in(portrait, 12)]
    sources = {"mp4": folder / "clip.mp4", "webm": folder / "clip.webm", "avi": folder / "clip.avi",
               "wav": folder / "speech.wav", "flac": folder / "speech.flac", "mp3": folder / "speech.mp3",
               "ogg": folder / "speech.ogg"}
    write_clip(sources["mp4"], frames, 25, speech)  # H.264 + AAC, as the suite's clips
    _encode(sources["webm"], "webm", ("libvpx-vp9", "yuv420p"), ("libopus", "s16", 48000), frames, speech)
    _encode(sources["avi"], "avi", ("mpeg4", "yuv420p"), ("pcm_s16le", "s16", 16000), frames, speech)
    write_wav(speech, str(sources["wav"]))
    _encode(sources["flac"], "flac", None, ("flac", "s16", 22050), frames, speech)
    _encode(sources["mp3"], "mp3", None, ("libmp3lame", "fltp", 44100), frames, speech)
    _encode(sources["ogg"], "ogg", None, ("libopus", "s16", 48000), frames, speech)
    image = Image.fromarray(portrait)
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp"),
                        ("TIFF", "tif")):
        sources[suffix] = folder / f"portrait.{suffix}"
        image.save(sources[suffix], fmt)
    return sources


KIND = {"mp4": "video", "webm": "video", "avi": "video", "wav": "audio", "flac": "audio", "mp3": "audio",
        "ogg": "audio", "png": "image", "jpg": "image", "webp": "image", "gif": "image", "bmp": "image",
        "tif": "image"}


# --- mutations ---------------------------------------------------------------------------------

#: Header fields worth an absurd value, per format: (marker, offset after the marker's start,
#: width in bytes, byte order, name). MP4 offsets count from the box type; 0 is the type itself.
FIELDS: dict[str, list[tuple[bytes, int, int, str, str]]] = {
    "mp4": [(b"mvhd", 16, 4, ">", "mvhd.timescale"), (b"mvhd", 20, 4, ">", "mvhd.duration"),
            (b"mdhd", 16, 4, ">", "mdhd.timescale"), (b"mdhd", 20, 4, ">", "mdhd.duration"),
            (b"tkhd", 80, 4, ">", "tkhd.width"), (b"tkhd", 84, 4, ">", "tkhd.height"),
            (b"tkhd", 24, 4, ">", "tkhd.duration"), (b"stts", 8, 4, ">", "stts.entries"),
            (b"stts", 12, 4, ">", "stts.sample_count"), (b"stts", 16, 4, ">", "stts.sample_delta"),
            (b"stsz", 8, 4, ">", "stsz.sample_size"), (b"stsz", 12, 4, ">", "stsz.sample_count"),
            (b"stsc", 8, 4, ">", "stsc.entries"), (b"stco", 8, 4, ">", "stco.entries"),
            (b"stco", 12, 4, ">", "stco.first_offset"), (b"avc1", 28, 2, ">", "avc1.width"),
            (b"avc1", 30, 2, ">", "avc1.height"), (b"mp4a", 20, 2, ">", "mp4a.channels"),
            (b"mp4a", 28, 4, ">", "mp4a.sample_rate"), (b"avcC", 10, 2, ">", "avcC.sps_length"),
            (b"elst", 8, 4, ">", "elst.entries"), (b"elst", 12, 4, ">", "elst.segment_duration"),
            (b"elst", 16, 4, ">", "elst.media_time"), (b"moov", -4, 4, ">", "moov.size"),
            (b"mdat", -4, 4, ">", "mdat.size"), (b"trak", -4, 4, ">", "trak.size")],
    # Matroska/WebM: EBML IDs, then a 1-byte size, then the value
    "webm": [(b"\xb0", 2, 1, ">", "PixelWidth"), (b"\xba", 2, 1, ">", "PixelHeight"),
             (b"\x2a\xd7\xb1", 4, 3, ">", "TimecodeScale"), (b"\x44\x89", 3, 4, ">", "Duration"),
             (b"\xb5", 2, 4, ">", "SamplingFrequency"), (b"\x9f", 2, 1, ">", "Channels"),
             (b"\x23\xe3\x83", 4, 3, ">", "DefaultDuration"), (b"\x1f\x43\xb6\x75", 4, 4, ">", "Cluster.size")],
    "avi": [(b"avih", 8, 4, "<", "avih.microsec_per_frame"), (b"avih", 24, 4, "<", "avih.total_frames"),
            (b"avih", 40, 4, "<", "avih.width"), (b"avih", 44, 4, "<", "avih.height"),
            (b"strh", 28, 4, "<", "strh.scale"), (b"strh", 32, 4, "<", "strh.rate"),
            (b"strh", 40, 4, "<", "strh.length"), (b"strf", 12, 4, "<", "strf.width/channels+rate"),
            (b"strf", 16, 4, "<", "strf.height/byte_rate"), (b"strf", 22, 2, "<", "strf.bits"),
            (b"movi", -4, 4, "<", "movi.size"), (b"idx1", 4, 4, "<", "idx1.size")],
    "wav": [(b"RIFF", 4, 4, "<", "riff.size"), (b"fmt ", 8, 2, "<", "fmt.format"),
            (b"fmt ", 10, 2, "<", "fmt.channels"), (b"fmt ", 12, 4, "<", "fmt.sample_rate"),
            (b"fmt ", 16, 4, "<", "fmt.byte_rate"), (b"fmt ", 20, 2, "<", "fmt.block_align"),
            (b"fmt ", 22, 2, "<", "fmt.bits_per_sample"), (b"data", 4, 4, "<", "data.size")],
    "flac": [(b"fLaC", 8, 2, ">", "streaminfo.min_block"), (b"fLaC", 10, 2, ">", "streaminfo.max_block"),
             (b"fLaC", 18, 4, ">", "streaminfo.rate/channels/bits"), (b"fLaC", 22, 4, ">", "streaminfo.total_samples")],
    "mp3": [(b"\xff\xfb", 2, 1, ">", "frame.bitrate/rate"), (b"\xff\xfb", 3, 1, ">", "frame.channel_mode"),
            (b"Xing", 8, 4, ">", "xing.frames"), (b"Info", 8, 4, ">", "info.frames")],
    "ogg": [(b"OpusHead", 9, 1, "<", "opus.channels"), (b"OpusHead", 10, 2, "<", "opus.pre_skip"),
            (b"OpusHead", 12, 4, "<", "opus.input_rate"), (b"OggS", 6, 8, "<", "ogg.granule"),
            (b"OggS", 26, 1, "<", "ogg.segments")],
    "png": [(b"IHDR", 4, 4, ">", "IHDR.width"), (b"IHDR", 8, 4, ">", "IHDR.height"),
            (b"IHDR", 12, 1, ">", "IHDR.bit_depth"), (b"IHDR", 13, 1, ">", "IHDR.colour_type"),
            (b"IDAT", -4, 4, ">", "IDAT.length")],
    "jpg": [(b"\xff\xc0", 5, 2, ">", "SOF0.height"), (b"\xff\xc0", 7, 2, ">", "SOF0.width"),
            (b"\xff\xc0", 9, 1, ">", "SOF0.components"), (b"\xff\xc0", 4, 1, ">", "SOF0.precision"),
            (b"\xff\xdb", 2, 2, ">", "DQT.length"), (b"\xff\xc4", 2, 2, ">", "DHT.length"),
            (b"\xff\xda", 2, 2, ">", "SOS.length")],
    "webp": [(b"RIFF", 4, 4, "<", "riff.size"), (b"VP8", 4, 4, "<", "chunk.size"),
             (b"VP8", 14, 2, "<", "vp8.width"), (b"VP8", 16, 2, "<", "vp8.height")],
    "gif": [(b"GIF8", 6, 2, "<", "screen.width"), (b"GIF8", 8, 2, "<", "screen.height"),
            (b"GIF8", 10, 1, "<", "screen.flags"), (b"\x2c\x00", 5, 2, "<", "image.width"),
            (b"\x2c\x00", 7, 2, "<", "image.height")],
    "bmp": [(b"BM", 2, 4, "<", "file.size"), (b"BM", 10, 4, "<", "pixel_offset"), (b"BM", 18, 4, "<", "width"),
            (b"BM", 22, 4, "<", "height"), (b"BM", 28, 2, "<", "bits_per_pixel"), (b"BM", 30, 4, "<", "compression"),
            (b"BM", 46, 4, "<", "palette_colours")],
    "tif": [(b"II*\x00", 4, 4, "<", "first_ifd_offset"), (b"\x00\x01\x03\x00", 8, 2, "<", "ImageWidth"),
            (b"\x01\x01\x03\x00", 8, 2, "<", "ImageLength"), (b"\x02\x01\x03\x00", 8, 2, "<", "BitsPerSample"),
            (b"\x11\x01\x04\x00", 8, 4, "<", "StripOffsets"), (b"\x17\x01\x04\x00", 8, 4, "<", "StripByteCounts")],
}


def _absurd(width: int, rng: random.Random) -> int:
    top = (1 << (8 * width)) - 1
    return rng.choice([0, 1, 2, 3, top, top >> 1, (top >> 1) + 1, rng.randrange(top + 1), 7, 255 & top, 65535 & top,
                       16_000_000 & top])


def _field_edit(data: bytearray, fmt: str, rng: random.Random) -> str:
    found = [(marker, offset, width, order, name, at) for marker, offset, width, order, name in FIELDS[fmt]
             for at in _occurrences(data, marker)[:3] if 0 <= at + offset and at + offset + width <= len(data)]
    if not found:
        return _bit_flips(data, rng, header_only=True)
    marker, offset, width, order, name, at = rng.choice(found)
    value = _absurd(width, rng)
    old = int.from_bytes(data[at + offset:at + offset + width], "big" if order == ">" else "little")
    data[at + offset:at + offset + width] = value.to_bytes(width, "big" if order == ">" else "little")
    note = f"{name} at byte {at + offset} := {value:#x} (was {old:#x})"
    if fmt == "png" and marker == b"IHDR" and rng.random() < 0.7:  # else libpng stops at the CRC
        data[at + 17:at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 17])))
        note += ", CRC fixed"
    return note


def _occurrences(data: bytearray, marker: bytes) -> list[int]:
    out, start = [], 0
    while (at := data.find(marker, start)) >= 0:
        out.append(at)
        start = at + 1
    return out


def _bit_flips(data: bytearray, rng: random.Random, header_only: bool = False) -> str:
    span = min(len(data), 1024) if header_only else len(data)
    flips = sorted((rng.randrange(span), rng.randrange(8)) for _ in range(rng.choice([1, 2, 3, 8, 32])))
    for at, bit in flips:
        data[at] ^= 1 << bit
    return f"{'header ' if header_only else ''}bit flips (byte, bit): {flips}"


def _truncate(data: bytearray, rng: random.Random) -> str:
    keep = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 256)), len(data) - rng.randrange(1, 64)])
    keep = max(0, min(keep, len(data) - 1))
    del data[keep:]
    return f"truncated to {keep} bytes"


def _range_edit(data: bytearray, rng: random.Random) -> str:
    at, size = rng.randrange(len(data)), rng.choice([1, 4, 16, 256, 4096])
    size = min(size, len(data) - at)
    action = rng.choice(["zeroed", "randomised", "deleted", "copied to"])
    if action == "zeroed":
        data[at:at + size] = bytes(size)
    elif action == "randomised":
        data[at:at + size] = bytes(rng.randrange(256) for _ in range(size))
    elif action == "deleted":
        del data[at:at + size]
    else:
        to = rng.randrange(len(data))
        data[to:to] = data[at:at + size]
        return f"bytes {at}..{at + size} copied to {to}"
    return f"bytes {at}..{at + size} {action}" + (f" with seed {rng.random():.6f}" if action == "randomised" else "")


MUTATIONS: list[tuple[float, Callable[..., str]]] = [
    (0.40, lambda d, fmt, rng: _field_edit(d, fmt, rng)),
    (0.20, lambda d, fmt, rng: _bit_flips(d, rng, header_only=True)),
    (0.10, lambda d, fmt, rng: _bit_flips(d, rng)),
    (0.15, lambda d, fmt, rng: _truncate(d, rng)),
    (0.15, lambda d, fmt, rng: _range_edit(d, rng)),
]


def mutate(data: bytes, fmt: str, rng: random.Random) -> tuple[bytes, str]:
    """One to three mutations of ``data``; returns the bytes and what was done, exactly."""
    out, notes = bytearray(data), []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not out:
            break
        weights, operators = zip(*MUTATIONS)
        notes.append(rng.choices(operators, weights)[0](out, fmt, rng))
    return bytes(out), "; ".join(notes)


# --- the worker: this file run as a script -----------------------------------------------------


def _steps(kind: str, path: str, titles_url: str) -> list[tuple[str, Callable[[], object]]]:
    """The decode paths a case goes through, by the kind of its source."""
    from dubline.stages import media
    from dubline.stages.audio.stage import AudioStage
    from dubline.stages.probe import ProbeStage

    probed: dict = {}

    def probe(mode: str) -> None:
        (row,) = ProbeStage().process_batch([{"title_id": "fuzz", "mode": mode, "source_url": path}])
        probed["row"] = row

    def frames(view: str) -> int:
        if "row" not in probed:
            return 0
        video = media.ShownVideo.from_title(probed["row"])
        if view == "rgb":
            return sum(1 for _ in media.rgb_frames(video, "rgb"))
        return sum(1 for _ in media.frames(video, view))

    def audio_stage() -> None:
        stage = AudioStage(whisper_model=None)
        stage.setup()
        stage.process_batch([{
            "title_id": "fuzz", "language": "en", "dub_audio_url": path, "dub_script_url": None,
            "titles_url": titles_url, "options_json": json.dumps({"audio_tolerance_s": 2.0}),
            "subtitles_url": path + ".subtitles"}])

    if kind == "selftest":  # the harness's own test: a step that hangs, one that kills the process
        return [("hang", lambda: time.sleep(3600))] if path == "hang" else [("crash", os.abort)]
    if kind == "image":
        return [("probe", lambda: probe("avatar")), ("frames:sdr", lambda: frames("sdr")),
                ("load_still", lambda: media.load_still(path))]
    if kind == "video":
        return [("probe", lambda: probe("dub")), ("frames:sdr", lambda: frames("sdr")),
                ("frames:native", lambda: frames("native")), ("frames:rgb", lambda: frames("rgb")),
                ("audio", audio_stage)]
    return [("audio", audio_stage), ("audio_duration", lambda: media.audio_duration(path))]


def _outcome(exc: BaseException | None, result: object = None) -> tuple[str, str]:
    import av
    from PIL import Image

    from dubline.stages.base import TitleError

    if exc is None:
        return "ok", "" if result is None else str(result)[:100]
    text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"[:400]
    if isinstance(exc, TitleError):
        return "title_error", str(exc)[:400]
    if isinstance(exc, MemoryError):
        return "memory", text
    if isinstance(exc, (ValueError, OSError, av.error.FFmpegError, Image.DecompressionBombError)):
        return "media_error", text
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return "unexpected", f"{text} (at {Path(where.filename).name}:{where.lineno})"


def _work(titles_url: str) -> None:
    """Run cases read from stdin (one JSON line each), answering on stdout: a STEP line before each
    step (so the parent knows where a hang or a crash happened) and a DONE line with the outcomes."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    _steps("video", "", titles_url)  # imports everything before the first case's clock starts
    print("READY", flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        results = []
        for name, step in _steps(case["kind"], case["path"], titles_url):
            print(f"STEP {name}", flush=True)
            started = time.perf_counter()
            result = exc = None
            try:
                result = step()
            except Exception as error:  # noqa: BLE001 - what the step raised is the finding
                exc = error
            outcome, detail = _outcome(exc, result if isinstance(result, int) else None)
            results.append([name, outcome, detail, round(time.perf_counter() - started, 4)])
        print("DONE " + json.dumps(results), flush=True)


if __name__ == "__main__":
    _work(sys.argv[1])
    sys.exit(0)


# --- the harness -------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    source: str
    mutation: str
    path: Path
    steps: list = field(default_factory=list)  # [name, outcome, detail, seconds]
    seconds: float = 0.0

    @property
    def kind(self) -> str:
        return KIND.get(self.source, self.source)

    def findings(self) -> list[str]:
        found = []
        for name, outcome, detail, _ in self.steps:
            allowed = STAGE_OUTCOMES if name in ("probe", "audio") else READER_OUTCOMES
            if outcome not in allowed:
                found.append(f"case {self.index} ({self.source}: {self.mutation}) - {name}: {outcome}: {detail}")
        return found


class Worker:
    """A worker process and a thread that turns its stdout into a queue of lines."""

    def __init__(self, titles_url: str, log: Path):
        self.log = log
        self.process = subprocess.Popen([sys.executable, __file__, titles_url], cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log.open("ab"), text=True,
                                        start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._next(120) == "READY", log.read_text()[-2000:]

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next(self, timeout: float) -> str | None:
        return self.lines.get(timeout=max(timeout, 0.001))

    def run(self, case: Case, limit_s: float) -> bool:
        """Run ``case``; False when the worker hung (ran past ``limit_s``) or died and must be replaced."""
        started = time.monotonic()
        self.process.stdin.write(json.dumps({"kind": case.kind, "path": str(case.path)}) + "\n")
        self.process.stdin.flush()
        step = "start"
        while True:
            try:
                line = self._next(started + limit_s - time.monotonic())
            except queue.Empty:
                case.steps.append([step, "hang", f"still running after {limit_s:g} s", limit_s])
                case.seconds = limit_s
                return False
            if line is None:  # the process died
                code = self.process.wait(timeout=30)
                what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                tail = self.log.read_text(errors="replace")[-300:].replace("\n", " | ")
                case.steps.append([step, "crash", f"the process ended ({what}); stderr: {tail}",
                                   time.monotonic() - started])
                case.seconds = time.monotonic() - started
                return False
            if line.startswith("STEP "):
                step = line[5:]
            elif line.startswith("DONE "):
                case.steps = json.loads(line[5:])
                case.seconds = time.monotonic() - started
                return True

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the worker and its threads
        self.process.wait(timeout=30)


def run_cases(cases: list[Case], titles_url: str, logs: Path, limit_s: float = CASE_LIMIT_S) -> None:
    todo: queue.Queue[Case] = queue.Queue()
    for case in cases:
        todo.put(case)

    def drive(slot: int) -> None:
        worker = Worker(titles_url, logs / f"worker{slot}.log")
        try:
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                if not worker.run(case, limit_s):
                    worker.stop()
                    worker = Worker(titles_url, logs / f"worker{slot}.log")
        finally:
            worker.stop()

    threads = [threading.Thread(target=drive, args=(slot,)) for slot in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def summarize(cases: list[Case]) -> dict:
    outcomes = Counter(outcome for case in cases for _, outcome, _, _ in case.steps)
    per_case = Counter(max((o for _, o, _, _ in case.steps), key=_severity) for case in cases)
    slowest = max(cases, key=lambda c: c.seconds)
    return {
        "cases": len(cases),
        "steps": sum(len(c.steps) for c in cases),
        "outcomes_per_step": dict(outcomes),
        "worst_outcome_per_case": dict(per_case),
        "cases_by_source": dict(Counter(c.source for c in cases)),
        "slowest_case": {"index": slowest.index, "source": slowest.source, "mutation": slowest.mutation,
                         "seconds": round(slowest.seconds, 2),
                         "steps": [[n, o, round(s, 2)] for n, o, _, s in slowest.steps]},
    }


def _severity(outcome: str) -> int:
    return ["ok", "title_error", "media_error", "unexpected", "memory", "crash", "hang"].index(outcome)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[dict[str, Path], str]:
    """The sources, and the ``titles`` manifest of the clean clip (the audio stage's picture)."""
    from dubline.schemas.manifest_io import write_manifest
    from dubline.schemas.manifests import TITLES
    from dubline.stages.probe import ProbeStage

    folder = tmp_path_factory.mktemp("fuzz_sources")
    made = make_sources(folder)
    (title,) = ProbeStage().process_batch([{"title_id": "fuzz", "mode": "dub", "source_url": str(made["mp4"])}])
    titles_url = str(folder / "titles.parquet")
    write_manifest([title], TITLES, titles_url)
    return made, titles_url


def test_clean_sources_pass_every_step(sources, tmp_path):
    made, titles_url = sources
    cases = [Case(i, name, "none", path) for i, (name, path) in enumerate(made.items())]
    run_cases(cases, titles_url, tmp_path)
    for case in cases:
        assert [(name, outcome) for name, outcome, _, _ in case.steps] == [(name, "ok") for name, *_ in case.steps], \
            (case.source, case.steps)
        # the steps did real work: every frame of the 12-frame clips, the portrait's one, in each view
        frames = {name: detail for name, _, detail, _ in case.steps if name.startswith("frames:")}
        assert frames == ({"frames:sdr": "12", "frames:native": "12", "frames:rgb": "12"} if case.kind == "video"
                          else {"frames:sdr": "1"} if case.kind == "image" else {}), case.source


def test_the_harness_sees_a_hang_and_a_crash_and_goes_on(sources, tmp_path):
    made, titles_url = sources
    cases = [Case(0, "selftest", "none", Path("hang")), Case(1, "selftest", "none", Path("crash")),
             Case(2, "wav", "none", made["wav"])]
    run_cases(cases, titles_url, tmp_path, limit_s=2.0)
    assert [(c.steps[0][0], c.steps[0][1]) for c in cases] == [("hang", "hang"), ("crash", "crash"), ("audio", "ok")]
    assert 2.0 <= cases[0].seconds < 3 and "signal SIGABRT" in cases[1].steps[0][2]
    assert len(cases[0].findings()) == len(cases[1].findings()) == 1 and cases[2].findings() == []


#: Cases that once found a bug, kept as regression tests: (source, what escaped) -> (seed, case index).
FORMER_FINDINGS = {
    ("png", "SyntaxError"): (16, 658),  # IDAT.length at byte 33 := 0xff: Pillow's SyntaxError escaped
    ("png", "MemoryError"): (16, 320),  # IDAT.length := 0xe50da2bc: Pillow allocated the declared 3.8 GB
    ("tif", "TypeError"): (7, 2882),  # header bit flips [(133, 0), (289, 6)]: "Missing dimensions" escaped
    ("flac", "ZeroDivisionError"): (7, 6619),  # truncated to 37 bytes: a sample rate of 0
    ("wav", "_ArrayMemoryError"): (16, 1999),  # fmt.sample_rate := 1 Hz: decoded and resampled to hours
    ("wav", "AttributeError"): (16, 5899),  # fmt.sample_rate := 1 Hz, truncated: no codec context
}


@pytest.mark.parametrize("finding", sorted(FORMER_FINDINGS), ids=lambda f: f"{f[0]}-{f[1]}")
def test_former_findings_end_cleanly(finding, sources, tmp_path):
    made, titles_url = sources
    source, (seed, index) = finding[0], FORMER_FINDINGS[finding]
    data, note = mutate(made[source].read_bytes(), source, random.Random(f"{seed}:{index}"))
    path = tmp_path / f"former.{source}"
    path.write_bytes(data)
    case = Case(index, source, note, path)
    run_cases([case], titles_url, tmp_path)
    assert case.findings() == []


def test_mutated_media_end_in_a_result_or_a_title_error_in_bounded_time(sources, tmp_path):
    made, titles_url = sources
    originals = {name: path.read_bytes() for name, path in made.items()}
    names = sorted(made)
    cases = []
    for index in range(CASES):
        rng = random.Random(f"{SEED}:{index}")  # a case is reproduced from its seed and index alone
        source = names[index % len(names)]
        data, note = mutate(originals[source], source, rng)
        path = tmp_path / f"case{index:05d}.{source}"
        path.write_bytes(data)
        cases.append(Case(index, source, note, path))
    started = time.monotonic()
    run_cases(cases, titles_url, tmp_path)
    summary = summarize(cases)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    print("\nfuzz summary: " + json.dumps(summary, indent=1))
    findings = [finding for case in cases for finding in case.findings()]
    keep = os.environ.get("DUBLINE_FUZZ_KEEP")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for case in cases:
            if case.findings():
                (Path(keep) / case.path.name).write_bytes(case.path.read_bytes())
        (Path(keep) / "findings.txt").write_text("".join(f"{finding}\n" for finding in findings))
    assert all(case.steps for case in cases)
    # the mutations reached past the first checks: some cases still decode, many are refused
    assert summary["outcomes_per_step"].get("ok", 0) > len(cases) // 4
    assert summary["outcomes_per_step"].get("title_error", 0) > len(cases) // 10
    assert findings == []
