"""render: re-drive each dubbed face's lower face in its aligned crops (SadTalker's renderer role).

Dub mode, per frame of a track:
1. Shape (``shape``): the lower face's target landmarks come from the driven coefficients alone
   (the track's face model under the filmed head pose); above the mouth they blend into the
   measured mesh, so eyes, brows, blinks and pose stay as filmed.
2. Base (``warp``): the current crop warped onto that shape on the mesh triangulation; the warp
   ends in a narrow band around the lower face, so nothing farther out changes.
3. Mouth (``bank``, ``mouth``): lips, teeth and interior from the track's own frame whose mouth
   shape best matches the driven one (a Viterbi path with a cost per change of donor, changes
   cross-faded), warped onto the target for the residual difference, its light matched to the
   current frame, blended in through a feathered mask around the lips. A frame lends its mouth
   only if the face mesh measured on its own crop agrees with its smoothed landmarks on the
   opening: smoothing can move the lips off the pixels at a sudden move (a mouth shut for one
   frame read as half open), and such a donor lends lips that are not where its landmarks say.
Avatar mode (a portrait: one source frame) warps that frame, the whole face following the driven
pose and expression; the portrait lends its own lips and a drawn interior fills wider openings.

Only the frames a track is driven on are rendered (``driven_weight`` > 0, see the coeffs stage's
``speakers``): a listener, or a speaker between turns, gets no crop, so composite leaves those
pixels as decoded. Where the weight fades in or out at a turn's edges the crop's alpha fades with
it, so the driven mouth blends into the filmed one over a few frames instead of popping.

Output crops carry an alpha mask (feathered) saying where composite pastes them back.

A long title is rendered in frame ranges (``RenderJob.frame_range``), one job each, on as many
workers as there are: a job renders the chunks of face crops that start in its range, from the
same whole-track plan (shapes, donor path) every range computes, so the joined output
(``join_ranges``) is the one a single job writes, chunk for chunk.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dubline.schemas.manifest_io import count_rows, read_rows, write_manifest
from dubline.schemas.manifests import DRIVEN_COEFFS, FACE_TRACKS, FRAME_CHUNK, RENDERED_TRACKS
from dubline.stages.base import Resources, Stage, join_track_rows
from dubline.stages.job_rows import JobRow, Place, Upstream
from dubline.stages.chunk_images import decode_rgb, encode_rgba
from dubline.stages.face_model import geometry
from dubline.stages.face_model.geometry import project
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.render.bank import Blend, choose_donors, crossfades, pick_candidates, shut_targets
from dubline.stages.render.mouth import Donor, inner_gap, iod, mouth_box, mouth_layer, mouth_region, region_triangles
from dubline.stages.render.shape import MouthModel, driven_landmarks, lower_face_weights, mouth_model
from dubline.stages.render.warp import box_grid, lower_face_grid, remap
from dubline.stages.threads import ordered_map

_AVATAR_CHUNK = 48  # frames per rendered chunk of an avatar
#: IOD beyond the moving points where the warp has faded out. In dub mode it is inside the region
#: dubbing may change (the lower face grown by 0.35 IOD from its centre, ``lipsync.mouth``); an
#: avatar's whole head moves with the generated pose, so the neck follows over a wider band.
_BAND_DUB, _BAND_AVATAR = 0.1, 0.5
#: IOD by which a donor candidate's smoothed inner-lip gap may differ from the one the face mesh
#: measures on its crop: about the smoothed track's usual distance to the raw mesh (95th
#: percentile 0.024-0.036 IOD on the train clips, ``benchmarks/smoothing_lag.py``). Beyond it the
#: smoothing has moved the lips off the pixels (a mouth shut for one frame read as half open).
_OWN_GAP_TOLERANCE = 0.03
#: Face-oval vertices of MediaPipe's mesh: how far they move is what the warp carries outside the face.
_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
              148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


def _to_crop(affine: list[float]) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64).reshape(2, 3))


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@dataclass
class TrackPlan:
    """What to render for one track: shapes, sources and the donor crops, read once."""

    targets: np.ndarray  # T×478×2 target landmarks, frame px
    sources: list[int]  # T source frame positions in the track
    moving: np.ndarray  # 478 bool: points that may move
    band: float  # IOD of fade-out beyond the moving points
    blends: list[Blend]  # T donor blends (indices into ``donors``)
    donors: list[Donor]  # the donors' crops and crop landmarks
    model: MouthModel | None  # None for an avatar


#: Dropped-item reason of a track whose lips the blendshape fit follows poorly (the anatomical
#: prior weighs at least ``WEAK_FIT_PRIOR_WEIGHT``): worth a look, so the run summary repeats it.
WEAK_BLENDSHAPE_FIT = "tracks with a weak blendshape fit (anatomical prior weighs half or more)"
#: The prior's weight from which a track is counted as a weak fit (``shape.mouth_model``): held-out
#: lip R² 0.5 or less, or on a track too short to hold frames out, a jaw that moves half as much as
#: a map needs to learn from. A trace of prior (R² just under 0.7) is not worth a warning.
WEAK_FIT_PRIOR_WEIGHT = 0.5


class RenderJob(JobRow):
    language: str
    faces_url: Upstream
    coeffs_url: Upstream
    chunks_url: Place | None = None  # the crops' folder, beside the output manifest
    #: Title frames [start, end) whose chunks this job renders (a chunk belongs to the range
    #: holding its first frame); None: all.
    frame_range: tuple[int, int] | None = None

class RenderStage(Stage):
    """One row per (title, language) -> ``rendered_tracks`` rows + RGBA frame chunks.

    Its job row is a ``RenderJob``. A track that is driven on no frame (of the job's range) gets no
    output row.
    """

    name = "render"
    # 7: only driven frames, alpha faded with the driven weight; 8: frame ranges; 9: steady donors,
    # seam only when shut; 10: donors checked against the mesh on their own crops; 11: lossless crops;
    # 12: shut targets take shut donors at once
    version = "12"
    resources = Resources(cpus=1.0, memory_gb=2.0)  # OpenCV warps on a box around the mouth: no GPU
    output_schema = RENDERED_TRACKS
    job_row = RenderJob
    # None: lossless WebP (encode_rgba), 2.2 ms a crop, no second generation of loss in composite;
    # lossy q92 took 10 ms (a sixth of the render's time) for files ~3× smaller
    defaults = {"webp_quality": None}
    counted_metrics = ("frames_rendered",)

    def setup(self) -> None:
        from dubline.stages.render.warp import mesh_triangles

        mesh_triangles()  # MediaPipe's tessellation, read once per worker
        self._landmarker = FaceLandmarker()

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._render_title(row)]

    def _render_title(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        # A range job reads only the tracks whose frames overlap its range (a track outside it has
        # no chunk starting there): memory per job stays flat in the title's length.
        frames = tuple(row["frame_range"]) if row.get("frame_range") else None
        tracks = {t["track_id"]: t for t in read_rows(row["faces_url"], FACE_TRACKS, frames=frames)}
        outputs, figures = [], []
        for driven in read_rows(row["coeffs_url"], DRIVEN_COEFFS, frames=frames):
            if not np.any(driven["driven_weight"] > 0):
                continue  # a face that never speaks keeps its filmed mouth: nothing to render
            track = tracks[driven["track_id"]]
            part = self._render_track(track, driven, f"{row['chunks_url']}/track{track['track_id']:04d}",
                                      row.get("frame_range"))
            if part is None:
                continue
            urls, chunk_index, rendered, track_figures = part
            figures.append(track_figures)
            outputs.append({k: driven[k] for k in ("title_id", "language", "shot_index", "track_id")}
                           | {"frame_index": rendered, "chunk_urls": urls, "chunk_index": chunk_index})
        self.count_work(frames=len({i for o in outputs for i in o["frame_index"]}),
                        faces=sum(len(o["frame_index"]) for o in outputs))
        if outputs:
            self.report(frames_rendered=sum(len(o["frame_index"]) for o in outputs),
                        **_summary(figures),
                        **{f"track{d['track_id']}_{k}": f[k] for d, f in zip(outputs, figures)
                           for k in ("lip_fit_r2", "prior_weight") if np.isfinite(f[k])})
        return outputs

    @staticmethod
    def join_ranges(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The output of one job over the whole title from its frame ranges' outputs (in range
        order): each track's frames and chunks concatenated, tracks in the single job's order
        (the coefficients', by track id)."""
        return join_track_rows(parts, ("frame_index", "chunk_urls", "chunk_index"))

    def _plan(self, track: dict[str, Any], driven: dict[str, Any], starts: list[int]) -> TrackPlan:
        """Target shapes and donors of a track (see the module docstring); ``starts``: each
        face-crop chunk's first position in the track (the donor candidates' crops are read)."""
        frames = len(driven["frame_index"])
        measured = np.asarray(track["landmarks"]).reshape(len(track["frame_index"]), -1, 3)[..., :2].astype(np.float64)
        identity = np.asarray(track["identity"])
        target_coeffs = np.hstack([np.asarray(driven["expression"]), np.asarray(driven["blink"])])
        target_pose = np.asarray(driven["pose"], dtype=np.float64)
        if _is_avatar(track, driven):  # the portrait is every frame's source
            blendshapes = np.asarray(track["blendshapes"])
            source_coeffs = np.hstack([np.asarray(track["expression"]), np.asarray(track["blink"])])
            source_pose = np.asarray(track["pose"], dtype=np.float64)
            # The map's own error cancels in the difference: only the change of expression and pose moves points.
            delta = project(identity, blendshapes, target_coeffs, target_pose) - project(
                identity, blendshapes, source_coeffs, source_pose)
            return TrackPlan(measured[0] + delta, [0] * frames, np.ones(len(identity) // 3, bool), _BAND_AVATAR,
                             [Blend((0,), (1.0,))] * frames, self._donors(track, [0], [0], measured), None)
        model = mouth_model(track)
        weights = lower_face_weights(model.mean_shape)
        targets = driven_landmarks(model, measured, track["pose"], target_coeffs, weights)
        expression = np.asarray(track["expression"])
        pose = np.asarray(track["pose"])
        candidates = pick_candidates(expression).tolist()
        crops = self._donors(track, starts, candidates, measured)
        kept = self._agreeing(crops)
        positions = np.array(candidates)[kept]
        path = choose_donors(np.asarray(driven["expression"]), pose, expression[positions], pose[positions])
        used, path = np.unique(path, return_inverse=True)
        blends = crossfades(path, crisp=shut_targets(driven["expression"]))  # a closure is not faded into
        return TrackPlan(targets, list(range(frames)), weights > 0, _BAND_DUB, blends,
                         [crops[kept[u]] for u in used], model)

    def _render_track(self, track: dict[str, Any], driven: dict[str, Any], prefix: str,
                      frame_range: tuple[int, int] | None
                      ) -> tuple[list[str], list[int], list[int], dict[str, float]] | None:
        """Render one track's crops for the driven coefficients on its driven frames, in the
        chunks that start in ``frame_range`` (title frames [start, end); None: all); returns the
        URLs of the chunks written (one per face-crop chunk with a driven frame), those chunks'
        positions among the face-crop chunks (so each stays paired with its face crops), the
        frame indices rendered and figures; None when no driven frame of the track is in a chunk
        of the range."""
        frames = len(driven["frame_index"])
        avatar = _is_avatar(track, driven)
        starts = (list(range(0, frames, _AVATAR_CHUNK)) if avatar
                  else np.cumsum([0] + [count_rows(url) for url in track["chunk_urls"]])[:-1].tolist())
        bounds = [*starts[1:], frames]
        owned = [k for k, start in enumerate(starts)
                 if frame_range is None or frame_range[0] <= driven["frame_index"][start] < frame_range[1]]
        weights = np.asarray(driven["driven_weight"], dtype=np.float32)
        positions = [i for k in owned for i in range(starts[k], bounds[k]) if weights[i] > 0]
        if not positions:
            return None
        plan = self._plan(track, driven, starts)  # of the whole track: every range makes the same choices
        measured = np.asarray(track["landmarks"]).reshape(len(track["frame_index"]), -1, 3)[..., :2]
        region = mouth_region(self._mean_shape(track) if avatar else plan.model.mean_shape)
        triangles = region_triangles(region)

        urls, flicker_in, flicker_out = [], FlickerMeter(), FlickerMeter()
        portrait = self._source_rows(track)[:1] if avatar else []
        chunks = ((portrait * (bounds[k] - starts[k]) if avatar else read_rows(track["chunk_urls"][k], FRAME_CHUNK))
                  for k in owned)
        def render_row(item: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], float, np.ndarray, np.ndarray]:
            """One driven frame: its output row, its outside shift (IOD) and the two flicker
            samples (source, output). Frames are independent given the plan."""
            i, row = item
            to_crop = _to_crop(row["affine"])
            source = _apply(to_crop, measured[plan.sources[i]])
            target = _apply(to_crop, plan.targets[i])
            crop = decode_rgb(row["image"])
            blend = [(plan.donors[d], w) for d, w in zip(plan.blends[i].donors, plan.blends[i].weights)]
            image, alpha = self._frame(crop, source, target, plan, blend, region, triangles)
            alpha *= weights[i]
            outside = float(np.linalg.norm(target[list(_FACE_OVAL)] - source[list(_FACE_OVAL)], axis=1).max()) / iod(source)
            # Only the changed region is stored: its box, with the affine moved to match.
            x0, y0, width, height = cv2.boundingRect((alpha > 0).astype(np.uint8))
            y0, y1, x0, x1 = (y0, y0 + height, x0, x0 + width) if width else (0, 1, 0, 1)
            rgba = np.dstack([image[y0:y1, x0:x1], (alpha[y0:y1, x0:x1] * 255).astype(np.uint8)])
            to_frame = np.asarray(row["affine"], dtype=np.float64).reshape(2, 3)
            to_frame[:, 2] += to_frame[:, :2] @ [x0, y0]
            index = driven["frame_index"][i] if avatar else row["frame_index"]
            # The title's track number: a faces range job numbered its own crops' tracks.
            out_row = {**row, "track_id": track["track_id"], "frame_index": index,
                       "image": encode_rgba(rgba, self.params["webp_quality"]),
                       "image_format": "webp", "affine": to_frame.astype(np.float32).ravel().tolist()}
            return out_row, outside, _lower_face(crop, alpha), _lower_face(image, alpha)

        outside, rendered, written = [], [], []
        for k, chunk in zip(owned, chunks):
            out_rows = []
            driven_rows = ((i, row) for i, row in enumerate(chunk, start=starts[k]) if weights[i] > 0)
            for out_row, shift, sample_in, sample_out in ordered_map(render_row, driven_rows):
                outside.append(shift)
                rendered.append(int(out_row["frame_index"]))
                out_rows.append(out_row)
                flicker_in.add(sample_in)
                flicker_out.add(sample_out)
            if out_rows:
                url = f"{prefix}_{k:04d}.parquet"
                write_manifest(out_rows, FRAME_CHUNK, url)
                urls.append(url)
                written.append(k)
        changes = sum(plan.blends[i].donors[-1] != plan.blends[i - 1].donors[-1] for i in positions if i > 0)
        figures = {
            "flicker_source": flicker_in.value, "flicker_output": flicker_out.value,
            "outside_shift_iod": float(np.mean(outside)), "outside_shift_iod_max": float(np.max(outside)),
            "donor_changes_per_100_frames": 100.0 * changes / len(positions),
            "lip_fit_r2": float("nan") if avatar else plan.model.lip_fit_r2,
            "prior_weight": 0.0 if avatar else plan.model.prior_weight,
        }
        if not avatar and plan.model.prior_weight >= WEAK_FIT_PRIOR_WEIGHT and positions[0] == int(np.argmax(weights > 0)):
            self.drop(WEAK_BLENDSHAPE_FIT)  # counted once per track: by the range with its first driven frame
        return urls, written, rendered, figures

    @staticmethod
    def _mean_shape(track: dict[str, Any]) -> np.ndarray:
        """The track's mean canonical mesh (478·3) from its map at its mean coefficients."""
        coefficients = np.hstack([np.asarray(track["expression"]), np.asarray(track["blink"])]).mean(axis=0)
        return np.asarray(track["identity"]) + coefficients @ np.asarray(track["blendshapes"]).reshape(len(coefficients), -1)

    @staticmethod
    def _source_rows(track: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for url in track["chunk_urls"] for r in read_rows(url, FRAME_CHUNK)]

    def _agreeing(self, candidates: list[Donor]) -> list[int]:
        """Indices of the ``candidates`` whose smoothed landmarks are where their crop shows the
        lips: the face mesh measured on each crop's own pixels opens the inner lips within
        ``_OWN_GAP_TOLERANCE`` IOD of the smoothed landmarks (or finds no face there to say
        otherwise). When none agrees, all stay.
        """
        kept = []
        for index, donor in enumerate(candidates):
            mesh = self._landmarker.mesh(donor.image, geometry.mesh_box(donor.landmarks))
            if mesh is None or abs(inner_gap(mesh[:, :2]) / iod(mesh[:, :2]) - donor.gap) <= _OWN_GAP_TOLERANCE:
                kept.append(index)
        return kept or list(range(len(candidates)))

    @staticmethod
    def _donors(track: dict[str, Any], starts: list[int], positions: list[int], measured: np.ndarray) -> list[Donor]:
        """The crops and crop landmarks of the frames at track ``positions``, reading only the
        chunks that hold them (``starts``: each chunk's first position)."""
        donors: dict[int, Donor] = {}
        for k in sorted({bisect_right(starts, p) - 1 for p in positions}):
            for position, row in enumerate(read_rows(track["chunk_urls"][k], FRAME_CHUNK), start=starts[k]):
                if position in positions:
                    landmarks = _apply(_to_crop(row["affine"]), measured[position])
                    donors[position] = Donor(decode_rgb(row["image"]), landmarks, inner_gap(landmarks) / iod(landmarks))
        return [donors[p] for p in positions]

    @staticmethod
    def _frame(crop: np.ndarray, source: np.ndarray, target: np.ndarray, plan: TrackPlan,
               donors: list[tuple[Donor, float]], region: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One output crop and its alpha (S×S×3 uint8, S×S float32 in [0, 1]).

        crop: the source crop; source, target: 478×2 crop px.
        """
        size = crop.shape[0]
        scale = iod(source)
        box, grid = lower_face_grid(source, target, plan.moving, plan.band * scale, size)
        x0, y0, x1, y1 = box
        base = remap(crop, grid)
        shift = grid - box_grid(box)
        changed = ((shift * shift).sum(axis=-1) > 0.09).astype(np.uint8)  # moved by more than 0.3 px
        alpha_box = cv2.GaussianBlur(cv2.dilate(changed, np.ones((3, 3), np.uint8)).astype(np.float32), (0, 0), 1.5)
        mx0, my0, mx1, my1 = mouth_box(target, region, size)
        mx0, my0, mx1, my1 = max(mx0, x0), max(my0, y0), min(mx1, x1), min(my1, y1)
        if mx1 - mx0 > 4 and my1 - my0 > 4:
            inner = (slice(my0 - y0, my1 - y0), slice(mx0 - x0, mx1 - x0))
            mouth, mask = mouth_layer(base[inner], donors, target, triangles, (mx0, my0, mx1, my1), scale)
            base[inner] = np.clip(base[inner] * (1 - mask[..., None]) + mouth * mask[..., None], 0, 255).round().astype(np.uint8)
            alpha_box[inner] = np.maximum(alpha_box[inner], mask)
        image = crop.copy()
        image[y0:y1, x0:x1] = base
        alpha = np.zeros(crop.shape[:2], np.float32)
        alpha[y0:y1, x0:x1] = np.clip(alpha_box, 0.0, 1.0)
        return image, alpha


def _is_avatar(track: dict[str, Any], driven: dict[str, Any]) -> bool:
    """Whether one portrait frame is driven over many frames (avatar mode)."""
    return len(track["frame_index"]) == 1 and len(driven["frame_index"]) > 1


def _summary(figures: list[dict[str, float]]) -> dict[str, float]:
    """Stage figures over a title's tracks: means, and the worst case of fit and outside shift.

    lip_fit_r2_min (held-out R² of the lips from the coefficients; absent when no track was long
    enough to tell) and prior_weight_max (0: own map, 1: anatomical prior) say how much the
    driven shapes rest on the prior; outside_shift_iod is how far the face outline moves, i.e.
    what the warp carries outside the face (IOD).
    """
    values = {k: np.array([f[k] for f in figures], dtype=np.float64) for k in figures[0]}
    summary = {k: float(values[k].mean()) for k in ("flicker_source", "flicker_output", "outside_shift_iod",
                                                    "donor_changes_per_100_frames")}
    summary |= {"outside_shift_iod_max": float(values["outside_shift_iod_max"].max()),
                "prior_weight_max": float(values["prior_weight"].max())}
    if np.isfinite(values["lip_fit_r2"]).any():
        summary["lip_fit_r2_min"] = float(np.nanmin(values["lip_fit_r2"]))
    return summary


def _lower_face(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The pasted region of a crop, every 4th pixel (enough for a flicker figure)."""
    return image[::4, ::4].astype(np.float32) * (alpha[::4, ::4, None] > 0.5)


class FlickerMeter:
    """Running mean of |I_t − (I_t−1 + I_t+1)/2| over the pasted region, in grey levels.

    Keeps two frames, so its memory does not grow with the track.
    """

    def __init__(self) -> None:
        self._previous: list[np.ndarray] = []
        self._total = 0.0
        self._count = 0

    def add(self, frame: np.ndarray) -> None:
        if len(self._previous) == 2:
            before, middle = self._previous
            support = (middle > 0).any(axis=-1)
            if support.any():
                second = np.abs(middle - (before + frame) / 2).mean(axis=-1)
                self._total += float(second[support].sum())
                self._count += int(support.sum())
        self._previous = [*self._previous[-1:], frame]

    @property
    def value(self) -> float:
        return self._total / self._count if self._count else 0.0
