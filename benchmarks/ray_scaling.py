"""Throughput of one catalogue with 1 vs 2 Ray CPU workers.

    python benchmarks/ray_scaling.py ../shared/data/video/talk_en_man_office.mp4 ../shared/data/audio/fr_speech.wav --titles 4

Builds a catalogue of ``--titles`` titles (the clip under distinct ids, so nothing is shared
between them), then for each worker count starts a Ray head with that many CPUs (`ray start
--head --num-cpus N`), runs `dubline run` against it into a fresh run folder, and stops it.
Prints wall seconds, frames/s and the speed-up ratio, all measured in this run.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("dub_audio", type=Path)
    parser.add_argument("--titles", type=int, default=4)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    import av

    with av.open(str(args.video)) as container:
        frames = sum(1 for _ in container.decode(video=0)) * args.titles
    with tempfile.TemporaryDirectory() as tmp:
        catalogue = Path(tmp) / "catalogue.yaml"
        catalogue.write_text(yaml.safe_dump([
            {"title_id": f"title{i:02d}", "video": str(args.video.resolve()), "language": "fr",
             "dub_audio": str(args.dub_audio.resolve())}
            for i in range(args.titles)
        ]))
        seconds = {cpus: run_with_cpus(cpus, catalogue, Path(tmp) / f"run{cpus}") for cpus in args.cpus}
        done = {cpus: json.loads((Path(tmp) / f"run{cpus}" / "run.json").read_text())["invocations"][-1]["titles_done"]
                for cpus in args.cpus}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.titles} titles of {args.video.name}, "
          f"{frames} frames in all")
    for cpus, wall in seconds.items():
        print(f"{cpus} Ray CPU worker(s): {wall:7.1f} s = {frames / wall:6.1f} frames/s ({done[cpus]} titles done)")
    base = min(args.cpus)
    for cpus in args.cpus:
        if cpus != base:
            print(f"speed-up {cpus} vs {base} workers: {seconds[base] / seconds[cpus]:.2f}")


if __name__ == "__main__":
    main()
