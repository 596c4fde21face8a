"""Peak memory of a whole dub against the title's length: a 1-minute vs a 10-minute 720p title.

    python benchmarks/memory.py [--minutes 1 10] [--work /tmp/dubline-memory] [--mode pipeline|stages]

Generates each title (a real portrait moving in a 1280×720 frame, espeak-ng speech as the dub).

``--mode pipeline`` (default) dubs it as a user would, ``dubline run`` with the default executor (a
private local Ray cluster: every stage in frame ranges and join jobs on worker processes, as the
flow plans them), and samples the resident memory of the command's whole process tree every
0.2 s: the largest process's peak (the driver or a Ray worker, named) and the tree's peak in all
(shared pages counted in every process that maps them). The ratio that matters is the largest
process's: a worker's ``memory_gb`` must cover it, whatever the title's length.

``--mode stages`` runs the stages (probe to report) one after the other with the sequential runner,
one job per stage over the whole title (no ranges: the worst case), each in a fresh process, and
reports every stage's peak resident memory and time: it tells which stage grows with length.

The peak of a stage's process is its ``VmHWM`` (Linux ``/proc/self/status``), which starts afresh
at exec. ``ru_maxrss`` does not: Linux keeps it across ``execve``, so each child would report at
least the parent's resident size when it forked (the parent holds the generated title's libraries).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from dubline.flows.run_folder import title_stage_records, wall_seconds

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


def stage_jobs(video: Path, audio: Path, work: Path) -> list:
    """The dub's stage jobs in order, reading and writing manifests under ``work``."""
    from dubline.schemas.catalogue import OPTION_DEFAULTS
    from dubline.stages.audio.stage import AudioStage
    from dubline.stages.base import StageJob
    from dubline.stages.coeffs.stage import CoeffsStage
    from dubline.stages.composite import CompositeStage
    from dubline.stages.faces import FaceStage
    from dubline.stages.probe import ProbeStage
    from dubline.stages.render import RenderStage
    from dubline.stages.report.stage import ReportStage
    from dubline.stages.selfcheck import SelfCheckStage
    from dubline.stages.shots import ShotsStage

    options = json.dumps(OPTION_DEFAULTS)
    u = {n: str(work / f"{n}.parquet")
         for n in ("titles", "shots", "faces", "audio", "coeffs", "render", "outputs", "selfcheck", "report")}
    dub = {"title_id": "m", "language": "en", "titles_url": u["titles"], "faces_url": u["faces"], "coeffs_url": u["coeffs"],
           "outputs_url": u["outputs"]}
    return [
        StageJob(ProbeStage, {}, u["titles"], "m", rows=({"title_id": "m", "mode": "dub", "source_url": str(video)},)),
        StageJob(ShotsStage, {}, u["shots"], "m", input_url=u["titles"]),
        StageJob(FaceStage, {}, u["faces"], "m", rows=({"title_id": "m", "titles_url": u["titles"], "shots_url": u["shots"], "chunks_url": str(work / "faces")},)),
        StageJob(AudioStage, {}, u["audio"], "m", rows=({"title_id": "m", "language": "en", "dub_audio_url": str(audio), "titles_url": u["titles"], "options_json": options, "subtitles_url": str(work / "m")},)),
        StageJob(CoeffsStage, {}, u["coeffs"], "m", rows=({"title_id": "m", "language": "en", "titles_url": u["titles"], "faces_url": u["faces"], "audio_url": u["audio"], "options_json": options},)),
        StageJob(RenderStage, {}, u["render"], "m", rows=({"title_id": "m", "language": "en", "faces_url": u["faces"], "coeffs_url": u["coeffs"], "chunks_url": str(work / "render")},)),
        StageJob(CompositeStage, {}, u["outputs"], "m", rows=({"title_id": "m", "language": "en", "titles_url": u["titles"], "dub_audio_url": str(audio), "output_url": str(work / "out.mp4"), "options_json": options, "render_url": u["render"]},)),
        StageJob(SelfCheckStage, {}, u["selfcheck"], "m", rows=(dub,)),
        StageJob(ReportStage, {}, u["report"], "m", rows=({**dub, "shots_url": u["shots"], "audio_url": u["audio"],
                                                            "selfcheck_url": u["selfcheck"], "report_url": str(work / "m.en"),
                                                            "stages_json": "{}"},)),
    ]


def peak_rss_mb() -> int:
    """This process's peak resident set size, MB: ``VmHWM``, or ``ru_maxrss`` where /proc is absent."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_stage(video: Path, audio: Path, work: Path, index: int) -> dict:
    """The ``index``-th stage job, in this process; returns its name, peak RSS (MB) and seconds."""
    from dubline.stages.sequential import SequentialRunner

    job = stage_jobs(video, audio, work)[index]
    started = time.perf_counter()
    SequentialRunner().run(job)
    return {"stage": job.stage.name, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": peak_rss_mb()}


def run_pipeline(video: Path, audio: Path, work: Path) -> dict:
    """``dubline run`` of the title into ``work`` (private local Ray), its process tree sampled every 0.2 s:
    seconds, the largest process's peak RSS (MB) and name, the tree's peak RSS in all (MB)."""
    import psutil
    import yaml

    catalogue = work / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "m", "video": str(video.resolve()), "language": "en",
                                          "dub_audio": str(audio.resolve())}]))
    dubline = Path(sys.executable).parent / "dubline"
    started = time.perf_counter()
    log = work / "dubline.log"
    with log.open("w") as sink:
        command = psutil.Popen([str(dubline), "run", str(catalogue), "--out", str(work / "run"), "--quiet"],
                               stdout=sink, stderr=subprocess.STDOUT)
    peaks: dict[int, tuple[int, str, float]] = {}  # pid -> (peak RSS bytes, name, Unix time of the peak)
    total = 0
    try:
        while command.poll() is None:  # the tree: the driver, Prefect's server, Ray's processes and workers
            tree, in_all = [command, *command.children(recursive=True)], 0
            for process in tree:
                try:
                    rss = process.memory_info().rss
                    if rss > peaks.get(process.pid, (0, "", 0.0))[0]:
                        peaks[process.pid] = (rss, _label(process, command.pid), time.time())
                except (psutil.Error, IndexError):  # ended meanwhile (an empty command line too)
                    continue
                in_all += rss
            total = max(total, in_all)
            time.sleep(0.2)
    finally:  # interrupted: stop the whole tree, not the driver alone
        for process in [*command.children(recursive=True), command] if command.poll() is None else []:
            with contextlib.suppress(psutil.Error):
                process.kill()
    if command.returncode != 0 or not peaks:
        raise SystemExit(f"dubline run failed ({command.returncode}): {log.read_text()[-2000:]}")
    spans = _stage_spans(work / "run" / "run.json")
    top = [f"{rss / 2**20:.0f} MB {name} during {'+'.join(s for s, (a, b) in spans.items() if a <= at <= b) or '-'}"
           for rss, name, at in sorted(peaks.values(), reverse=True)[:4]]
    return {"seconds": round(time.perf_counter() - started, 1), "largest_mb": round(max(peaks.values())[0] / 2**20),
            "tree_mb": round(total / 2**20), "largest_processes": top}


def _stage_spans(run_json: Path) -> dict[str, tuple[float, float]]:
    """Stage name -> (start, end) Unix seconds in a run of one title and language, from its run.json
    (start: its first job's, less a worker's start-up; end: when the driver saw it done)."""
    spans = {}
    for title in json.loads(run_json.read_text())["titles"].values():
        for name, record in title_stage_records(title):
            spans[name] = (record["finished_at"] - wall_seconds(record), record["finished_at"])
    return spans


def _label(process, driver_pid: int) -> str:
    """"driver", "Ray worker" or the program's name, for a process of ``dubline run``'s tree."""
    if process.pid == driver_pid:
        return "driver (dubline run)"
    command = " ".join(process.cmdline())
    if "default_worker.py" in command or command.startswith("ray::"):
        return "Ray worker"
    return Path(process.cmdline()[1] if "python" in process.cmdline()[0] and len(process.cmdline()) > 1
                else process.cmdline()[0]).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dubline-memory"))
    parser.add_argument("--mode", choices=("pipeline", "stages"), default="pipeline")
    parser.add_argument("--run", nargs=4, metavar=("VIDEO", "AUDIO", "WORK", "STAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one stage of one title
        print(json.dumps(run_stage(Path(args.run[0]), Path(args.run[1]), Path(args.run[2]), int(args.run[3]))))
        return
    if args.mode == "pipeline":
        runs = {}
        for minutes in args.minutes:
            video, audio = make_title(args.work, minutes)
            work = args.work / f"pipeline_{minutes:g}min"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            runs[minutes] = run_pipeline(video, audio, work)
            print(f"{minutes:g} min 720p: {runs[minutes]}", flush=True)
        if len(runs) >= 2:
            short, long = min(runs), max(runs)
            print(f"largest process {long:g} min / {short:g} min = {runs[long]['largest_mb'] / runs[short]['largest_mb']:.2f}; "
                  f"process tree in all = {runs[long]['tree_mb'] / runs[short]['tree_mb']:.2f}")
        return
    peaks: dict[float, dict[str, int]] = {}
    for minutes in args.minutes:
        video, audio = make_title(args.work, minutes)
        work = args.work / f"run_{minutes:g}min"
        work.mkdir(parents=True, exist_ok=True)
        peaks[minutes], seconds = {}, {}
        for index in range(len(stage_jobs(video, audio, work))):
            child = subprocess.run([sys.executable, __file__, "--run", str(video), str(audio), str(work), str(index)],
                                   capture_output=True, text=True, check=True)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            peaks[minutes][result["stage"]], seconds[result["stage"]] = result["peak_rss_mb"], result["seconds"]
        print(f"{minutes:g} min 720p: peak RSS {max(peaks[minutes].values())} MB; per stage, MB "
              f"{peaks[minutes]}; seconds {seconds}", flush=True)
    if len(peaks) >= 2:
        short, long = min(peaks), max(peaks)
        ratios = {stage: round(peaks[long][stage] / peaks[short][stage], 2) for stage in peaks[short]}
        print(f"per stage {long:g} min / {short:g} min: {ratios}")
        print(f"peak memory ratio {long:g} min / {short:g} min = "
              f"{max(peaks[long].values()) / max(peaks[short].values()):.2f}")


if __name__ == "__main__":
    main()
