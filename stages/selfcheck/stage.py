"""selfcheck: the face mesh of every dubbed face on the *output* video, for the lip-sync self-check.

The report correlates the mouth opening measured here with the jaw_open the coefficient stage asked
for, so a renderer or compositor that lost the motion shows up even when every stage "succeeded".
Only the frames the dub drives are measured, inside each dubbed track's boxes; on a long title, a
sample of windows of them (``lipsync.sample.sampled_boxes``). An avatar's one face is followed
instead (track 0).

A long title is measured in frame ranges (``SelfCheckJob.frame_range``), one job each, every one
decoding the output from its keyframe before the range; a join job (``SelfCheckJob.ranges``)
gives the single job's rows. The rows hold meshes, not mouth openings: the opening comes from one
rigid fit over a track's whole set of meshes (``lipsync.mouth.mouth_curve``, in the report), which
a range cannot make.
"""

from __future__ import annotations

from typing import Any

from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import DRIVEN_COEFFS, FACE_TRACKS, MOUTH_MESHES, OUTPUTS, TITLES
from dubline.stages.base import Resources, Stage, join_track_rows
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.job_rows import JobRow, Upstream
from dubline.stages.lipsync.mouth import measure_meshes
from dubline.stages.threads import Pool, worker_cpus
from dubline.stages.lipsync.sample import sampled_boxes


class SelfCheckJob(JobRow):
    language: str
    titles_url: Upstream
    faces_url: Upstream
    coeffs_url: Upstream
    outputs_url: Upstream
    #: Output frames [start, end) this job measures; None: all.
    frame_range: tuple[int, int] | None = None
    #: The range jobs' ``mouth_meshes`` manifests, in order: this job joins them instead of
    #: measuring (in a worker: a long title's meshes never pass through the driver).
    ranges: list[Upstream] = []


class SelfCheckStage(Stage):
    """One row per (title, language) -> one ``mouth_meshes`` row per measured track.

    Its job row is a ``SelfCheckJob``. A track with no face found on its sampled frames (of the
    job's range) gets no row.
    """

    name = "selfcheck"
    version = "1"
    resources = Resources(cpus=1.0, memory_gb=1.0)
    output_schema = MOUTH_MESHES
    job_row = SelfCheckJob
    counted_metrics = ("frames_measured",)

    def setup(self) -> None:
        # The sampled frames are meshed side by side, one graph per CPU given (a graph is not thread-safe).
        self._landmarkers = Pool(FaceLandmarker() for _ in range(worker_cpus()))

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows
                for out in (self._join(row["ranges"]) if row.get("ranges") else self._measure(row))]

    def _measure(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        (title,) = read_rows(row["titles_url"], TITLES)
        (output,) = read_rows(row["outputs_url"], OUTPUTS)
        start, end = row.get("frame_range") or (0, output["frame_count"])
        if title["mode"] == "avatar":  # one face, followed on every frame
            boxes = None
        else:
            faces = {t["track_id"]: t for t in read_rows(row["faces_url"], FACE_TRACKS, without=("landmarks",))}
            boxes = {track: {f: box for f, box in b.items() if start <= f < end}
                     for track, b in sampled_boxes(faces, read_rows(row["coeffs_url"], DRIVEN_COEFFS)).boxes.items()}
        meshes = measure_meshes(self._landmarkers, output["video_url"], boxes, start=start)
        rows = [{"title_id": row["title_id"], "language": row["language"], "track_id": track,
                 "frame_index": [index for index, _ in found], "landmarks": [mesh.reshape(-1) for _, mesh in found]}
                for track, found in sorted(meshes.items()) if found]
        self.count_work(frames=len({index for r in rows for index in r["frame_index"]}))
        self.report(frames_measured=sum(len(r["frame_index"]) for r in rows))  # faces × frames
        return rows

    @staticmethod
    def _join(ranges: list[str]) -> list[dict[str, Any]]:
        """The rows one job over the whole title writes, from its frame ranges' ``mouth_meshes``
        manifests (in range order): each track's frames and meshes concatenated, tracks by id."""
        return join_track_rows([read_rows(url, MOUTH_MESHES) for url in ranges], ("frame_index", "landmarks"))
