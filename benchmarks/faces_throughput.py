"""Face-analysis throughput per CPU core, next to plain decoding of the same clip.

    python benchmarks/faces_throughput.py ../shared/data/video/talk_en_man_office.mp4 [--cores 1] [--repeats 3]

The process is pinned to ``--cores`` cores before any model loads, so MediaPipe's and FFmpeg's
threads share them. Prints frames per second (median of the repeats) of: plain PyAV decode to
RGB, the faces stage's first pass (decode + detection + mesh + tracking + fitting), and the whole
stage including aligned crops and chunk writing; and their ratios to plain decode.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, set(range(args.cores)))

    from dubline.stages.base import StageJob
    from dubline.stages.faces import FaceStage
    from dubline.stages.media import rgb_frames
    from dubline.stages.probe import ProbeStage
    from dubline.stages.sequential import SequentialRunner
    from dubline.stages.shots import ShotsStage

    url = str(args.video.resolve())
    decode_fps = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        frames = sum(1 for _ in rgb_frames(url))
        decode_fps.append(frames / (time.perf_counter() - started))

    runner = SequentialRunner()
    analysis_fps, stage_fps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        titles, shots = f"{tmp}/titles.parquet", f"{tmp}/shots.parquet"
        runner.run(StageJob(ProbeStage, {}, titles, "bench", rows=({"title_id": "bench", "mode": "dub", "source_url": url},)))
        runner.run(StageJob(ShotsStage, {}, shots, "bench", input_url=titles))
        for i in range(args.repeats + 1):  # the first run warms up the models
            row = {"title_id": "bench", "titles_url": titles, "shots_url": shots, "chunks_url": f"{tmp}/chunks{i}"}
            stats = runner.run(StageJob(FaceStage, {}, f"{tmp}/faces{i}.parquet", "bench", rows=(row,)))
            if i:
                analysis_fps.append(stats.metrics["analysis_fps"])
                stage_fps.append(stats.metrics["frames_processed"] / stats.seconds)

    decode, analysis, stage = (statistics.median(v) for v in (decode_fps, analysis_fps, stage_fps))
    print(f"clip: {args.video.name}, {frames} frames; machine: {platform.processor() or platform.machine()}, "
          f"{args.cores} core(s) pinned of {os.cpu_count()}")
    print(f"{'measure':<40}{'frames/s':>10}{'vs decode':>11}")
    print(f"{'plain decode (PyAV -> RGB)':<40}{decode:>10.1f}{1.0:>10.2f}x")
    print(f"{'faces: detect+mesh+track+fit':<40}{analysis:>10.1f}{analysis / decode:>10.2f}x")
    print(f"{'faces: whole stage (+ crops, chunks)':<40}{stage:>10.1f}{stage / decode:>10.2f}x")
    print(f"per core: {stage / args.cores:.1f} frames/s; jitter {stats.metrics['jitter_raw_px']:.2f} -> "
          f"{stats.metrics['jitter_smoothed_px']:.2f} px/frame^2; reprojection {stats.metrics['reprojection_px']:.2f} px")


if __name__ == "__main__":
    main()
