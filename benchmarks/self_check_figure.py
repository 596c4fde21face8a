"""The report's self-check curves and mouths of one dub made by two commits, before | after.

    python benchmarks/self_check_figure.py RUN_BEFORE RUN_AFTER TITLE LANGUAGE --frames 20 147 271 --out fig.png

RUN_BEFORE and RUN_AFTER are run folders (``dubline dub ... -o OUT`` makes ``OUT.dubline``) of the
same title and dub audio. Top: per run, the driven jaw_open and the one the report measured on
the output (the self-check's two curves, its r in the legend), with the filmed one for reference.
Below, per frame asked for: the filmed mouth | before | after, cut around the mouth of the first
dubbed track (from RUN_AFTER's faces manifest).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def report(run: Path, title: str, language: str) -> dict:
    return json.loads((run / "outputs" / title / f"{title}.{language}.report.json").read_text())


def decoded(url: str, wanted: set[int]) -> dict[int, np.ndarray]:
    from dubline.stages.media import describe, frames

    found = {}
    for index, frame in enumerate(frames(describe(url))):
        if index in wanted:
            found[index] = frame.to_ndarray(format="rgb24")
        if index >= max(wanted):
            break
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("title")
    parser.add_argument("language")
    parser.add_argument("--frames", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=220, help="px of each mouth crop")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dubline.schemas.manifest_io import read_rows
    from dubline.schemas.manifests import FACE_TRACKS
    from dubline.stages.face_model import geometry

    reports = [report(run, args.title, args.language) for run in (args.before, args.after)]
    tracks = [r["tracks"][0] for r in reports]
    figure, axes = plt.subplots(2, 1, figsize=(3 * args.size / 100 * len(args.frames) / 2, 4.6), dpi=100, sharex=True)
    for axis, name, track in zip(axes, ("before", "after"), tracks):
        curves = track["curves"]
        axis.plot(curves["frame_index"], curves["source"], color="0.7", label="filmed (source)")
        axis.plot(curves["frame_index"], curves["driven"], label="driven jaw_open")
        axis.plot(curves["frame_index"], curves["output"], label="measured on the output")
        axis.set_title(f"{name}: self-check r {track['lipsync_r']:.2f}", fontsize=9)
        axis.set_ylabel("jaw_open (IOD)")
        for frame in args.frames:
            axis.axvline(frame, color="red", linestyle=":", linewidth=0.8)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].set_xlabel("frame")
    figure.tight_layout()
    figure.canvas.draw()
    plot = np.asarray(figure.canvas.buffer_rgba())[..., :3]

    faces_key = json.loads((args.after / "run.json").read_text())["titles"][args.title]["stages"]["faces"]["key"]
    faces = [t for t in read_rows(str(args.after / "manifests" / "faces" / args.title / f"{faces_key}.parquet"), FACE_TRACKS)
             if t["dubbable"]]
    face = next(t for t in faces if t["track_id"] == tracks[1]["track_id"] and t["shot_index"] == tracks[1]["shot_index"])
    landmarks = np.asarray(face["landmarks"]).reshape(len(face["frame_index"]), -1, 3)
    position = {int(f): i for i, f in enumerate(face["frame_index"])}
    wanted = set(args.frames)
    source = decoded(_source_url(args.after, args.title), wanted)
    outputs = [decoded(r["video_url"], wanted) for r in reports]
    rows = []
    for frame in args.frames:
        mesh = landmarks[position[frame], :, :2]
        right, left = geometry.eye_centres(mesh[None])
        half = int(0.75 * np.linalg.norm(left - right))
        cx, cy = mesh[[geometry.UPPER_LIP_INNER, geometry.LOWER_LIP_INNER]].mean(axis=0).astype(int)
        cut = lambda image: cv2.resize(image[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half], (args.size, args.size),
                                       interpolation=cv2.INTER_AREA)
        row = np.hstack([cut(source[frame]), cut(outputs[0][frame]), cut(outputs[1][frame])])
        cv2.putText(row, f"{frame}: filmed | before | after", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
        rows.append(row)
    strip = np.vstack([np.hstack(rows[i:i + 2]) if i + 1 < len(rows) else np.hstack([rows[i], np.zeros_like(rows[i])])
                       for i in range(0, len(rows), 2)])
    plot = cv2.resize(plot, (strip.shape[1], int(plot.shape[0] * strip.shape[1] / plot.shape[1])))
    cv2.imwrite(str(args.out), cv2.cvtColor(np.vstack([plot, strip]), cv2.COLOR_RGB2BGR))
    print(args.out)


def _source_url(run: Path, title: str) -> str:
    """The title's source URL, from the run folder's catalogue."""
    import pyarrow.parquet as pq

    catalogue = pq.read_table(run / "catalogue.parquet").to_pylist()
    return next(row["source_url"] for row in catalogue if row["title_id"] == title)


if __name__ == "__main__":
    main()
