"""Frames per second of every stage of a dub, run in-process on one clip.

    python benchmarks/stage_throughput.py ../shared/data/video/talk_en_man_office.mp4 ../shared/data/audio/fr_speech.wav --language fr

Runs probe, shots, faces, audio, coeffs, render and composite with the sequential runner (no Ray,
no Prefect: the stages' own cost) and prints seconds and frames per second per stage next to a
plain PyAV decode of the same clip, all measured in this run on this machine, and the share of
the dub's time that goes to turning the dub audio into a mouth (audio + coeffs). A stage's time
includes loading its models (``setup``), which a long title or a running worker amortises.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path)
    parser.add_argument("dub_audio", type=Path)
    parser.add_argument("--language", default="en", help="language of the dub audio (BCP-47)")
    args = parser.parse_args()

    from dubline.schemas.catalogue import OPTION_DEFAULTS
    from dubline.schemas.manifest_io import read_rows
    from dubline.schemas.manifests import TITLES
    from dubline.stages.audio.stage import AudioStage
    from dubline.stages.base import StageJob
    from dubline.stages.coeffs.stage import CoeffsStage
    from dubline.stages.composite import CompositeStage
    from dubline.stages.faces import FaceStage
    from dubline.stages.media import rgb_frames
    from dubline.stages.probe import ProbeStage
    from dubline.stages.render import RenderStage
    from dubline.stages.sequential import SequentialRunner
    from dubline.stages.shots import ShotsStage

    video, dub = str(args.video.resolve()), str(args.dub_audio.resolve())
    started = time.perf_counter()
    frames = sum(1 for _ in rgb_frames(video))
    decode_s = time.perf_counter() - started
    options = json.dumps(OPTION_DEFAULTS)
    runner = SequentialRunner()
    with tempfile.TemporaryDirectory() as tmp:
        u = {n: f"{tmp}/{n}.parquet" for n in ("titles", "shots", "faces", "audio", "coeffs", "render", "outputs")}
        jobs = [
            StageJob(ProbeStage, {}, u["titles"], "b", rows=({"title_id": "b", "mode": "dub", "source_url": video},)),
            StageJob(ShotsStage, {}, u["shots"], "b", input_url=u["titles"]),
            StageJob(FaceStage, {}, u["faces"], "b", rows=({"title_id": "b", "titles_url": u["titles"], "shots_url": u["shots"], "chunks_url": f"{tmp}/faces"},)),
            StageJob(AudioStage, {}, u["audio"], "b", rows=({"title_id": "b", "language": args.language, "dub_audio_url": dub, "dub_script_url": None, "titles_url": u["titles"], "options_json": options, "subtitles_url": f"{tmp}/b"},)),
            StageJob(CoeffsStage, {}, u["coeffs"], "b", rows=({"title_id": "b", "language": args.language, "titles_url": u["titles"], "faces_url": u["faces"], "audio_url": u["audio"], "options_json": options},)),
            StageJob(RenderStage, {}, u["render"], "b", rows=({"title_id": "b", "language": args.language, "faces_url": u["faces"], "coeffs_url": u["coeffs"], "chunks_url": f"{tmp}/render"},)),
            StageJob(CompositeStage, {}, u["outputs"], "b", rows=({"title_id": "b", "language": args.language, "titles_url": u["titles"], "dub_audio_url": dub, "output_url": f"{tmp}/out.mp4", "options_json": options, "render_url": u["render"]},)),
        ]
        timings = []
        for job in jobs:
            started = time.perf_counter()
            runner.run(job)
            timings.append((job.stage.name, time.perf_counter() - started))
        (title,) = read_rows(u["titles"], TITLES)
    print(f"clip: {args.video.name} ({title['width']}x{title['height']}, {frames} frames); dub: {args.dub_audio.name}; "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(f"{'stage':<22}{'seconds':>9}{'frames/s':>10}")
    print(f"{'plain decode':<22}{decode_s:>9.2f}{frames / decode_s:>10.1f}")
    for name, seconds in timings:
        print(f"{name:<22}{seconds:>9.2f}{frames / seconds:>10.1f}")
    total = sum(s for _, s in timings)
    print(f"{'all stages':<22}{total:>9.2f}{frames / total:>10.1f}")
    mouth = sum(s for name, s in timings if name in ("audio", "coeffs"))
    print(f"audio + coeffs: {mouth:.2f} s, {100 * mouth / total:.0f} % of all stages")


if __name__ == "__main__":
    main()
