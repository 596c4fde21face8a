"""How far smoothed landmarks trail the face: one causal One-Euro pass against the zero-phase one.

    python benchmarks/smoothing_lag.py ../shared/data/video/train/*.mp4 [--frames 400]

For each clip the largest face's raw mesh is measured on every frame (MediaPipe, the box followed
from frame to frame, as the report does), then smoothed both ways with the faces stage's
parameters. Prints per clip and filter: the lips' mean distance to the raw mesh (median, 95th
percentile and worst frame, in inter-ocular distances), the jitter (RMS second difference, px per
frame²) and the mouth gap's lag behind the raw one (frames). A filter that trails a fast head move
shows it in the worst frame; one that only removes noise keeps every column small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: Lip points measured: inner and outer midpoints, the corners, and four inner-contour points.
_LIPS = [13, 14, 0, 17, 61, 291, 78, 308, 82, 87, 312, 317]


def raw_meshes(video: Path, limit: int) -> tuple[np.ndarray, float]:
    """T×478×3 raw meshes of the largest face (stops where it is lost) and the clip's fps."""
    from dubline.stages.face_model import geometry
    from dubline.stages.face_model.landmarks import FaceLandmarker
    from dubline.stages.media import describe, frames
    from dubline.stages.lipsync.mouth import follow_largest_face

    description = describe(str(video))
    landmarker, previous, meshes = FaceLandmarker(), None, []
    for index, frame in enumerate(frames(description)):
        if index >= limit:
            break
        mesh = follow_largest_face(landmarker, frame.to_ndarray(format="rgb24"), previous)
        if mesh is None:
            break
        previous = geometry.mesh_box(mesh)
        meshes.append(mesh)
    return np.stack(meshes).astype(np.float64), float(description.clock.rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", type=Path, nargs="+")
    parser.add_argument("--frames", type=int, default=400, help="at most this many frames per clip")
    args = parser.parse_args()

    from dubline.stages.face_model import geometry
    from dubline.stages.face_model.smoothing import jitter, lag_frames, one_euro, one_euro_zero_phase
    from dubline.stages.faces.stage import FaceStage

    params = FaceStage.defaults
    filters = {"one pass": one_euro, "zero-phase": one_euro_zero_phase}
    print("| clip | frames | IOD (px) | filter | lips to raw: median | p95 | worst frame (IOD) | jitter (raw) | mouth-gap lag |")
    print("|---|---|---|---|---|---|---|---|---|")
    for video in args.videos:
        raw, fps = raw_meshes(video, args.frames)
        iod = np.linalg.norm(np.subtract(*geometry.eye_centres(raw[..., :2])), axis=1)
        gap = lambda mesh: mesh[:, geometry.LOWER_LIP_INNER, 1] - mesh[:, geometry.UPPER_LIP_INNER, 1]
        for name, smooth in filters.items():
            smoothed = smooth(raw, fps, params["smoothing_min_cutoff"], params["smoothing_beta"])
            distance = np.linalg.norm(raw[:, _LIPS, :2] - smoothed[:, _LIPS, :2], axis=-1).mean(axis=1) / iod
            print(f"| {video.stem} | {len(raw)} | {np.median(iod):.0f} | {name} | {np.median(distance):.3f} | "
                  f"{np.percentile(distance, 95):.3f} | {distance.max():.3f} | {jitter(smoothed[..., :2]):.2f} "
                  f"({jitter(raw[..., :2]):.2f}) | {lag_frames(gap(raw), gap(smoothed))} |")


if __name__ == "__main__":
    main()
