"""End-to-end frames/s of `dubline dub` (no enhancement) against a plain ffmpeg transcode of the same clip.

    python benchmarks/end_to_end.py ../shared/data/video/talk_en_man_office.mp4 ../shared/data/audio/fr_speech.wav --language fr

Both run in this process's machine, one after the other, `--repeats` times each (median):
- baseline: the `imageio-ffmpeg` binary transcoding the clip with libx264 at dubline's default
  preset and CRF, muxing the same dub audio as AAC;
- dubline: `dubline dub CLIP AUDIO` in a fresh run folder each time (Prefect flow, every stage; a
  private local Ray, or in-process with `--executor local`), timed from the command's start to its
  exit, and its stages' own seconds from run.json.
Prints frames/s of each, the ratio, and the per-stage time breakdown of the median dubline run,
with its fixed cost: start-up (the command's start to when the probe's worker began its job:
imports, Prefect's temporary server, Ray, the flow run's creation, the probe worker's start)
and shutdown (the last stage seen done by the driver to the command's exit), from the stages'
``finished_at`` in run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dubline.flows.run_folder import in_pipeline_order, title_stage_records, wall_seconds

PRESET, CRF = "veryfast", 18  # dubline's defaults (schemas.catalogue.OPTION_DEFAULTS)


def frame_count(video: Path) -> int:
    import av

    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def ffmpeg_transcode(video: Path, audio: Path, out: Path) -> float:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(video), "-i", str(audio),
               "-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def dubline_dub(video: Path, audio: Path, work: Path, executor: str = "ray",
                language: str = "en") -> tuple[float, dict[str, float], tuple[float, float]]:
    """Seconds of the whole command, each stage's wall seconds, and (start-up, shutdown) seconds;
    ``executor``: the command's ``--executor`` (ray: a private local Ray, the default; local: in
    this process, one stage job at a time); ``language``: the dub audio's (``--language``)."""
    dubline = Path(sys.executable).with_name("dubline")
    started_at, started = time.time(), time.perf_counter()
    subprocess.run([str(dubline), "dub", str(video), str(audio), "-o", str(work / "out.mp4"), "--run-dir",
                    str(work / "run"), "--executor", executor, "--language", language, "--quiet"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    state = json.loads((work / "run" / "run.json").read_text())
    (title,) = state["titles"].values()
    records = dict(title_stage_records(title))
    stages = {name: wall_seconds(record) for name, record in records.items()}
    probe = records["probe"]
    start_up = probe["finished_at"] - probe["seconds"] - started_at
    shutdown = started_at + seconds - max(s["finished_at"] for s in records.values())
    return seconds, stages, (start_up, shutdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("dub_audio", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="`dubline dub --executor`: ray (the default, a private local Ray) or local (in-process)")
    parser.add_argument("--language", default="en", help="`dubline dub --language`: the dub audio's language (en)")
    args = parser.parse_args()

    frames = frame_count(args.video)
    baseline, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            baseline.append(ffmpeg_transcode(args.video, args.dub_audio, Path(tmp) / f"plain{repeat}.mp4"))
            work = Path(tmp) / f"dub{repeat}"
            work.mkdir()
            runs.append(dubline_dub(args.video, args.dub_audio, work, args.executor, args.language))
    plain_s = statistics.median(baseline)
    runs.sort(key=lambda run: run[0])
    dub_s, stages, (start_up, shutdown) = runs[len(runs) // 2]
    in_stages = sum(stages.values())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; clip {args.video.name}: {frames} frames; "
          f"median of {args.repeats}; dubline dub --executor {args.executor} --language {args.language}")
    print(f"ffmpeg transcode (libx264 {PRESET}, crf {CRF}): {plain_s:6.2f} s = {frames / plain_s:7.1f} frames/s")
    print(f"dubline dub, whole command:            {dub_s:6.2f} s = {frames / dub_s:7.1f} frames/s "
          f"(ratio to ffmpeg {plain_s / dub_s:.3f})")
    print(f"dubline dub, time inside stages:       {in_stages:6.2f} s = {frames / in_stages:7.1f} frames/s "
          f"(ratio to ffmpeg {plain_s / in_stages:.3f}); start-up and orchestration {dub_s - in_stages:.1f} s")
    print(f"fixed cost: {start_up + shutdown:.1f} s = start-up {start_up:.1f} s (command start to the first job) "
          f"+ shutdown {shutdown:.1f} s (last stage done to exit)")
    print("per stage (s): " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in in_pipeline_order(stages)))


if __name__ == "__main__":
    main()
