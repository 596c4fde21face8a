"""Two faces in one frame: a clip beside its own mirror image, dubbed, measured per face.

    python benchmarks/two_faces.py ../shared/data/video/talk_en_man_map.mp4 ../shared/data/video/eval/may_woman_uk.mp4 --out /tmp/two_faces

Builds CLIP | mirror(CLIP) side by side (one frame, twice the width, CLIP's own audio), dubs it
with the speech of AUDIO (any file with an audio stream) through the real flow
(`dubline dub ... --executor local`) and measures, per face (left, right), on the output:
- r_A: output mouth vs that face's filmed mouth (best lag within ±2 frames; the old speech
  showing through; issue #12 asks ≤ 0.25),
- r_driven: output mouth vs the jaw_open the coeffs stage drove that face with (lag 0, as the
  report's self-check),
- and on the frames where the face is fully driven (``driven_weight`` 1): r_A there, and the
  control r_A_if_exact, the driven jaw itself vs the filmed mouth (best within ±2 frames): the
  r_A a renderer that showed exactly the driven mouth would get, i.e. how much the new speech
  happens to move like the old one.
Both faces are measured inside the faces stage's boxes of each track (the run folder's faces
manifest), so the two mirrored faces are never confused. The two faces say the same thing in the
source, so a renderer that handles only one of them shows up as one high r_A.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dubline.flows.bench import MAX_LAG, picture
from dubline.flows.demo import write_clip
from dubline.flows.run_folder import RunFolder
from dubline.schemas.catalogue import safe_title_id
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import DRIVEN_COEFFS, FACE_TRACKS
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.media import open_media, read_audio, stream_rate
from dubline.stages.lipsync.mouth import best_lag, measure_mouths, pearson
from dubline.stages.report.stage import plain_json
from dubline.stages.speech.espeak import Speech

AUDIO_RATE = 48_000  # Hz of the side-by-side clip's audio track
SIDES = ("left", "right")


@dataclass
class FaceResult:
    """One side's face: its tracks, and its mouth on the output against the filmed and the driven one."""

    side: str
    tracks: list[int]  # track ids of the faces stage on this side
    dubbed_tracks: list[int]  # of those, the tracks the coeffs stage drove
    skip_reasons: list[str]  # why the faces stage did not dub a track on this side
    frames: int  # frames with the output mouth measured on this side
    r_a: float  # output vs filmed mouth (best lag within ±MAX_LAG)
    lag_a: int
    r_driven: float  # output vs driven jaw_open, lag 0
    driven_frames: int  # frames with driven_weight 1 on this side
    r_a_driven_frames: float  # r_A on those frames only
    r_a_if_exact: float  # on those frames, driven jaw_open vs filmed mouth (best within ±MAX_LAG)


def build_side_by_side(clip: Path, out: Path) -> None:
    """Write ``clip`` and its mirror image side by side (hstack, H.264) with ``clip``'s own audio.

    Frames are held in memory (~0.5 GB for 125 frames of 844² → 1688×844): fine for the short
    benchmark clips this is meant for.
    """
    with open_media(str(clip)) as container:
        stream = container.streams.video[0]
        fps = stream_rate(stream)
        frames = [np.hstack([rgb, rgb[:, ::-1]]) for rgb in
                  (frame.to_ndarray(format="rgb24") for frame in container.decode(stream))]
    write_clip(out, frames, fps, Speech(read_audio(str(clip), AUDIO_RATE), AUDIO_RATE, ()))


def dub(video: Path, audio: Path, out: Path) -> float:
    """``dubline dub VIDEO AUDIO`` (local executor) into ``out``/dubbed.mp4 and ``out``/run; returns seconds."""
    dubline = Path(sys.executable).with_name("dubline")
    started = time.perf_counter()
    subprocess.run([str(dubline), "dub", str(video), str(audio), "-o", str(out / "dubbed.mp4"), "--run-dir",
                    str(out / "run"), "--executor", "local", "--quiet"], check=True)
    return time.perf_counter() - started


def measure(source: Path, run: Path, output: Path) -> list[FaceResult]:
    """Per side of the frame, r_A and r_driven of the dub in ``run`` (the run folder) of ``source``."""
    state = json.loads((run / "run.json").read_text())
    title_id = safe_title_id(source.stem)
    title = state["titles"][title_id]
    (language,) = title["languages"]
    folder = RunFolder(str(run))
    faces = read_rows(folder.manifest_url("faces", title_id, title["stages"]["faces"]["key"]), FACE_TRACKS)
    coeffs_key = title["languages"][language]["stages"]["coeffs"]["key"]
    driven = {d["track_id"]: d for d in read_rows(folder.manifest_url("coeffs", title_id, coeffs_key), DRIVEN_COEFFS)}

    clock = picture(str(source))
    width = picture_width(source)
    side_of = {t["track_id"]: SIDES[int(np.mean([(b[0] + b[2]) / 2 for b in t["bbox"]]) >= width / 2)]
               for t in faces if len(t["frame_index"])}
    boxes = {t["track_id"]: dict(zip(t["frame_index"], np.asarray(t["bbox"])))
             for t in faces if t["track_id"] in side_of}
    landmarker = FaceLandmarker()
    filmed = measure_mouths(landmarker, str(source), boxes)
    dubbed = measure_mouths(landmarker, str(output), boxes)
    landmarker.close()

    results = []
    for side in SIDES:
        tracks = [t for t in faces if side_of.get(t["track_id"]) == side]
        on_side = {name: np.full(clock.frames, np.nan) for name in ("filmed", "output", "driven", "weight")}
        for track in tracks:
            tid = track["track_id"]
            curves = {"filmed": (filmed[tid].frame_index, filmed[tid].jaw_open),
                      "output": (dubbed[tid].frame_index, dubbed[tid].jaw_open)}
            if tid in driven:
                curves["driven"] = (driven[tid]["frame_index"], np.asarray(driven[tid]["expression"])[:, 0])
                curves["weight"] = (driven[tid]["frame_index"], np.asarray(driven[tid]["driven_weight"]))
            for name, (frame_index, values) in curves.items():  # a side's tracks never share a frame
                on_side[name][np.asarray(frame_index)] = values
        r_a, lag_a = best_lag(on_side["output"], on_side["filmed"], MAX_LAG)
        fully = on_side["weight"] >= 1.0
        only_driven = {name: np.where(fully, curve, np.nan) for name, curve in on_side.items()}
        results.append(FaceResult(
            side=side, tracks=[t["track_id"] for t in tracks],
            dubbed_tracks=[t["track_id"] for t in tracks if t["track_id"] in driven],
            skip_reasons=[t["skip_reason"] for t in tracks if t["skip_reason"]],
            frames=int(np.isfinite(on_side["output"]).sum()), r_a=r_a, lag_a=lag_a,
            r_driven=pearson(on_side["driven"], on_side["output"]),
            driven_frames=int(fully.sum()),
            r_a_driven_frames=best_lag(only_driven["output"], only_driven["filmed"], MAX_LAG)[0],
            r_a_if_exact=best_lag(only_driven["driven"], only_driven["filmed"], MAX_LAG)[0],
        ))
    return results


def picture_width(video: Path) -> int:
    """Picture width of ``video`` in pixels."""
    with open_media(str(video)) as container:
        return int(container.streams.video[0].codec_context.width)


def format_table(results: list[FaceResult]) -> str:
    """A Markdown table, one row per face."""
    def cell(value: float) -> str:
        return f"{value:.2f}" if np.isfinite(value) else "–"

    def ids(tracks: list[int]) -> str:
        return ", ".join(map(str, tracks)) or "none"

    lines = ["| face | tracks | dubbed | frames measured | r_A (filmed mouth) | lag | r vs driven jaw "
             "| frames driven | r_A on them | r_A if exactly the driven jaw | not dubbed because |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.side} | {ids(r.tracks)} | {ids(r.dubbed_tracks)} | {r.frames} | {cell(r.r_a)} "
                     f"| {r.lag_a} | {cell(r.r_driven)} | {r.driven_frames} | {cell(r.r_a_driven_frames)} "
                     f"| {cell(r.r_a_if_exact)} | {'; '.join(r.skip_reasons) or '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", type=Path, help="talking-head clip (one face)")
    parser.add_argument("audio", type=Path, help="dub speech: a WAV or any clip with an audio track")
    parser.add_argument("--out", type=Path, required=True, help="work folder (side-by-side clip, run folder, output)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    source = args.out / f"{args.clip.stem}_mirrored.mp4"
    build_side_by_side(args.clip, source)
    seconds = dub(source, args.audio, args.out)
    results = measure(source, args.out / "run", args.out / "dubbed.mp4")
    print(f"{source.name} ({picture_width(source)} px wide) dubbed with {args.audio.name} in {seconds:.0f} s")
    print(format_table(results))
    (args.out / "two_faces.json").write_text(json.dumps(plain_json([asdict(r) for r in results]), indent=1))
    print(f"wrote {args.out / 'two_faces.json'}")


if __name__ == "__main__":
    main()
