"""Before/after strips of the mouths of a finished dub, at the frames that changed most.

    python benchmarks/mouth_strip.py RUN_FOLDER TITLE LANGUAGE --out strip.png [--frames 6]

For each dubbed track, the frames where the driven jaw_open differs most from the filmed one
(a filmed open mouth driven closed, and the other way round) are cut around the mouth from the
source and from the dubbed output and laid side by side: source | dub, one row per frame, with
the filmed and driven jaw_open written on each row. Prints the PNG's path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("title")
    parser.add_argument("language")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, default=200, help="px of each mouth crop")
    args = parser.parse_args()

    from dubline.flows.run_folder import RunFolder
    from dubline.schemas.manifest_io import read_rows
    from dubline.schemas.manifests import DRIVEN_COEFFS, FACE_TRACKS, TITLES
    from dubline.stages.media import describe, frames

    run = RunFolder(str(args.run.resolve()))
    entry = run.state["titles"][args.title]

    def manifest(stage: str, record: dict) -> str:
        return run.manifest_url(stage, args.title, record[stage]["key"])

    (title,) = read_rows(manifest("probe", entry["stages"]), TITLES)
    faces = {t["track_id"]: t for t in read_rows(manifest("faces", entry["stages"]), FACE_TRACKS)}
    wanted: dict[int, list[tuple[int, np.ndarray, float, float]]] = {}
    for driven in read_rows(manifest("coeffs", entry["languages"][args.language]["stages"]), DRIVEN_COEFFS):
        track = faces[driven["track_id"]]
        filmed, jaw = np.asarray(track["expression"])[:, 0], np.asarray(driven["expression"])[:, 0]
        for i in np.argsort(-np.abs(jaw - filmed))[: args.frames]:
            x0, y0, x1, y1 = np.asarray(track["bbox"])[i]
            side = max(x1 - x0, y1 - y0) * 0.6
            box = np.array([(x0 + x1) / 2 - side / 2, y0 + (y1 - y0) * 0.55, (x0 + x1) / 2 + side / 2,
                            y0 + (y1 - y0) * 0.55 + side]).round().astype(int)
            wanted.setdefault(int(driven["frame_index"][i]), []).append((driven["track_id"], box, float(filmed[i]), float(jaw[i])))
    rows = {}
    for url, column in ((title["source_url"], 0), (run.output_url(args.title, args.language), 1)):
        for index, frame in enumerate(frames(describe(url))):  # as shown: upright, on the title's clock
            if index not in wanted:
                continue
            image = frame.to_ndarray(format="rgb24")
            for track_id, box, filmed, driven in wanted[index]:
                x0, y0, x1, y1 = np.clip(box, 0, [image.shape[1], image.shape[0]] * 2)
                crop = cv2.resize(image[y0:y1, x0:x1], (args.size, args.size), interpolation=cv2.INTER_AREA)
                rows.setdefault((index, track_id), [None, None, filmed, driven])[column] = crop
    strips = []
    for (index, track_id), (source, dubbed, filmed, driven) in sorted(rows.items()):
        if source is None or dubbed is None:
            continue
        row = np.hstack([source, dubbed]).copy()
        label = f"frame {index} track {track_id}: filmed {filmed:.2f} -> driven {driven:.2f}"
        cv2.putText(row, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        strips.append(row)
    if not strips:
        raise SystemExit("no frames to show (no dubbed track?)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.vstack(strips), cv2.COLOR_RGB2BGR))
    print(args.out)


if __name__ == "__main__":
    main()
