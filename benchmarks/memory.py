"""Peak memory of a whole dub against the title's length: a 1-minute vs a 10-minute 720p title.

    python benchmarks/memory.py [--minutes 1 10] [--work /tmp/dubline-memory]

Generates each title (a real portrait moving in a 1280×720 frame, espeak-ng speech as the dub),
then runs every stage in a fresh process with the sequential runner and reports that process's
peak resident memory (ru_maxrss) and time. Memory that is flat in length gives a ratio near 1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 25
WIDTH, HEIGHT = 1280, 720
LINES = ["Welcome back to the show. Today we talk about maps, boats and the people who build them.",
         "Some of them travel far, and they bring back pictures of places nobody has seen.",
         "But many stay at home, and they paint the world from the stories of others."]


def make_title(folder: Path, minutes: float) -> tuple[Path, Path]:
    """Write a 720p clip of ``minutes`` and a dub track of the same length; streamed, never in memory."""
    import av
    import cv2

    from dubline.flows.demo import astronaut
    from dubline.stages.speech.espeak import synthesize, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    video, audio = folder / f"title_{minutes:g}min.mp4", folder / f"dub_{minutes:g}min.wav"
    frames = int(minutes * 60 * FPS)
    if not video.exists():
        face = cv2.resize(astronaut(), (400, 400))
        with av.open(str(video), "w") as out:
            stream = out.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.options = {"crf": "23", "preset": "veryfast"}
            for i in range(frames):
                canvas = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
                x = 440 + int(80 * np.sin(i / 50))
                canvas[160:560, x : x + 400] = face
                frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    if not audio.exists():
        speech = [synthesize(line, voice="en") for line in LINES]
        rate = speech[0].sample_rate
        pieces, total = [], 0
        while total < frames / FPS * rate:
            for s in speech:
                pieces += [s.samples, np.zeros(rate // 3, np.float32)]
                total += len(s.samples) + rate // 3
        joined = np.concatenate(pieces)[: int(frames / FPS * rate)]
        write_wav(type(speech[0])(joined, rate, ()), str(audio))
    return video, audio


def run_all_stages(video: Path, audio: Path, work: Path) -> dict:
    """Every stage, in this process; returns peak RSS and seconds."""
    from dubline.schemas.catalogue import OPTION_DEFAULTS
    from dubline.stages.audio.stage import AudioStage
    from dubline.stages.base import StageJob
    from dubline.stages.coeffs.stage import CoeffsStage
    from dubline.stages.composite import CompositeStage
    from dubline.stages.faces import FaceStage
    from dubline.stages.probe import ProbeStage
    from dubline.stages.render import RenderStage
    from dubline.stages.sequential import SequentialRunner
    from dubline.stages.shots import ShotsStage

    options = json.dumps(OPTION_DEFAULTS)
    u = {n: str(work / f"{n}.parquet") for n in ("titles", "shots", "faces", "audio", "coeffs", "render", "outputs")}
    jobs = [
        StageJob(ProbeStage, {}, u["titles"], "m", rows=({"title_id": "m", "mode": "dub", "source_url": str(video)},)),
        StageJob(ShotsStage, {}, u["shots"], "m", input_url=u["titles"]),
        StageJob(FaceStage, {}, u["faces"], "m", rows=({"title_id": "m", "titles_url": u["titles"], "shots_url": u["shots"], "chunks_url": str(work / "faces")},)),
        StageJob(AudioStage, {}, u["audio"], "m", rows=({"title_id": "m", "language": "en", "dub_audio_url": str(audio), "titles_url": u["titles"], "options_json": options, "subtitles_url": str(work / "m")},)),
        StageJob(CoeffsStage, {}, u["coeffs"], "m", rows=({"title_id": "m", "language": "en", "titles_url": u["titles"], "faces_url": u["faces"], "audio_url": u["audio"], "options_json": options},)),
        StageJob(RenderStage, {}, u["render"], "m", rows=({"title_id": "m", "language": "en", "faces_url": u["faces"], "coeffs_url": u["coeffs"], "chunks_url": str(work / "render")},)),
        StageJob(CompositeStage, {}, u["outputs"], "m", rows=({"title_id": "m", "language": "en", "titles_url": u["titles"], "dub_audio_url": str(audio), "output_url": str(work / "out.mp4"), "options_json": options, "render_url": u["render"]},)),
    ]
    runner, seconds, peak_after = SequentialRunner(), {}, {}
    for job in jobs:
        started = time.perf_counter()
        runner.run(job)
        seconds[job.stage.name] = round(time.perf_counter() - started, 1)
        peak_after[job.stage.name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds,
            "peak_mb_after": peak_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dubline-memory"))
    parser.add_argument("--run", nargs=3, metavar=("VIDEO", "AUDIO", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one title, all stages
        print(json.dumps(run_all_stages(Path(args.run[0]), Path(args.run[1]), Path(args.run[2]))))
        return
    results = {}
    for minutes in args.minutes:
        video, audio = make_title(args.work, minutes)
        work = args.work / f"run_{minutes:g}min"
        work.mkdir(parents=True, exist_ok=True)
        child = subprocess.run([sys.executable, __file__, "--run", str(video), str(audio), str(work)],
                               capture_output=True, text=True, check=True)
        results[minutes] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{minutes:g} min 720p: peak RSS {results[minutes]['peak_rss_mb']:.0f} MB, stage seconds "
              f"{results[minutes]['seconds']}, peak MB after each stage {results[minutes]['peak_mb_after']}", flush=True)
    if len(results) >= 2:
        short, long = min(results), max(results)
        print(f"peak memory ratio {long:g} min / {short:g} min = {results[long]['peak_rss_mb'] / results[short]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
