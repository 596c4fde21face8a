"""Throughput of one catalogue with 1 vs 2 Ray CPU workers.

    python benchmarks/ray_scaling.py ../shared/data/video/talk_en_man_office.mp4 ../shared/data/audio/fr_speech.wav --titles 4
    python benchmarks/ray_scaling.py ../shared/data/video/talk_en_man_map.mp4 ../shared/data/audio/fr_speech.wav --title-seconds 120

Builds a catalogue of ``--titles`` titles (the clip under distinct ids, so nothing is shared
between them) or, with ``--title-seconds S``, of ONE title of S seconds (the clip and the dub
audio looped, re-encoded once with FFmpeg), then for each worker count starts a Ray head with
that many CPUs (`ray start --head --num-cpus N`), runs `dubline run` against it into a fresh run
folder, and stops it. Prints wall seconds, frames/s, the speed-up ratio and each stage's wall
seconds (all measured in this run), and how far the outputs of the runs are apart (PSNR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dubline.flows.run_folder import title_stage_records, wall_seconds


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_with_cpus(cpus: int, catalogue: Path, out: Path) -> float:
    """Wall seconds of `dubline run` on a fresh local Ray head with ``cpus`` CPUs."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    # --block keeps this head in the foreground of its own process: ending that process stops this
    # head and only it (`ray stop` would stop every Ray on the machine, other users' included).
    head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", f"--num-cpus={cpus}", "--num-gpus=0",
                             "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:  # the head is up once its GCS port answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the Ray head on port {port} did not start")
                time.sleep(0.5)
        started = time.perf_counter()
        subprocess.run([str(bin_dir / "dubline"), "run", str(catalogue), "--out", str(out), "--ray-address",
                        f"127.0.0.1:{port}", "--quiet"], check=True, capture_output=True, env=env)
        return time.perf_counter() - started
    finally:
        head.terminate()
        head.wait(timeout=60)


def looped(source: Path, seconds: float, out: Path, audio: bool) -> Path:
    """``source`` looped to ``seconds`` (video: libx264 CRF 16; audio: 16-bit WAV) at ``out``."""
    import imageio_ffmpeg

    codec = ["-c:a", "pcm_s16le"] if audio else ["-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "16"]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", "-1", "-i", str(source),
                    "-t", f"{seconds}", *codec, str(out)], check=True)
    return out


def stage_seconds(run: Path) -> dict[str, tuple[float, float]]:
    """Each stage's (wall seconds, job seconds) over a run's titles and languages: wall from its
    first job's start to its join; job seconds its jobs' own times added up (job/wall: workers busy)."""
    totals: dict[str, tuple[float, float]] = {}
    for title in json.loads((run / "run.json").read_text())["titles"].values():
        for name, record in title_stage_records(title):
            wall, jobs = totals.get(name, (0.0, 0.0))
            totals[name] = (wall + wall_seconds(record), jobs + (record["seconds"] or 0.0))
    return totals


def timeline(run: Path) -> str:
    """When each stage of a run ran, seconds from its first stage's start: "faces 14.2-51.8; …"."""
    spans = []
    for title in json.loads((run / "run.json").read_text())["titles"].values():
        for name, record in title_stage_records(title):
            spans.append((record["finished_at"] - wall_seconds(record), record["finished_at"], name))
    first = min(start for start, _, _ in spans)
    return "; ".join(f"{name} {start - first:.1f}-{end - first:.1f}" for start, end, name in sorted(spans))


def psnr(first: Path, second: Path) -> float:
    """PSNR (dB) between two videos' decoded frames, over all frames; inf when identical."""
    import av
    import numpy as np

    error, count = 0.0, 0
    with av.open(str(first)) as a, av.open(str(second)) as b:
        for x, y in zip(a.decode(video=0), b.decode(video=0)):
            diff = x.to_ndarray(format="rgb24").astype(np.float64) - y.to_ndarray(format="rgb24")
            error, count = error + float((diff * diff).sum()), count + diff.size
    mse = error / max(count, 1)
    return float("inf") if mse == 0 else 10 * float(np.log10(255 ** 2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("dub_audio", type=Path)
    parser.add_argument("--titles", type=int, default=4)
    parser.add_argument("--title-seconds", type=float, default=None,
                        help="one title of this length (the clip and audio looped) instead of --titles copies")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import av

    with tempfile.TemporaryDirectory() as tmp:
        if args.title_seconds:
            args.video = looped(args.video, args.title_seconds, Path(tmp) / "title.mp4", audio=False)
            args.dub_audio = looped(args.dub_audio, args.title_seconds, Path(tmp) / "dub.wav", audio=True)
            args.titles = 1
        with av.open(str(args.video)) as container:
            frames = sum(1 for _ in container.decode(video=0)) * args.titles
        catalogue = Path(tmp) / "catalogue.yaml"
        catalogue.write_text(yaml.safe_dump([
            {"title_id": f"title{i:02d}", "video": str(args.video.resolve()), "language": "fr",
             "dub_audio": str(args.dub_audio.resolve())}
            for i in range(args.titles)
        ]))
        seconds = {cpus: run_with_cpus(cpus, catalogue, Path(tmp) / f"run{cpus}") for cpus in args.cpus}
        done = {cpus: json.loads((Path(tmp) / f"run{cpus}" / "run.json").read_text())["invocations"][-1]["titles_done"]
                for cpus in args.cpus}
        stages = {cpus: stage_seconds(Path(tmp) / f"run{cpus}") for cpus in args.cpus}
        timelines = {cpus: timeline(Path(tmp) / f"run{cpus}") for cpus in args.cpus}
        base = min(args.cpus)
        outputs = {cpus: sorted((Path(tmp) / f"run{cpus}" / "outputs").rglob("*.mp4")) for cpus in args.cpus}
        apart = {cpus: min(psnr(a, b) for a, b in zip(outputs[base], outputs[cpus])) for cpus in args.cpus if cpus != base}
    what = (f"one title of {args.title_seconds:.0f} s" if args.title_seconds else f"{args.titles} titles of {args.video.name}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {what}, {frames} frames in all")
    for cpus, wall in seconds.items():
        print(f"{cpus} Ray CPU worker(s): {wall:7.1f} s = {frames / wall:6.1f} frames/s ({done[cpus]} titles done)")
    print("stage wall seconds: " + "; ".join(
        f"{name} " + " / ".join(f"{stages[c].get(name, (0.0, 0.0))[0]:.1f}" for c in args.cpus) for name in stages[base]))
    print("stage job seconds (its jobs added up): " + "; ".join(
        f"{name} " + " / ".join(f"{stages[c].get(name, (0.0, 0.0))[1]:.1f}" for c in args.cpus) for name in stages[base]))
    for cpus in args.cpus:
        print(f"timeline, {cpus} CPU(s): {timelines[cpus]}")
    for cpus in args.cpus:
        if cpus != base:
            print(f"speed-up {cpus} vs {base} workers: {seconds[base] / seconds[cpus]:.2f}; "
                  f"outputs apart by PSNR {apart[cpus]:.1f} dB (inf: identical)")


if __name__ == "__main__":
    main()
