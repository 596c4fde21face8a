"""enhance: GFPGAN v1.4 on the re-rendered mouth region of every face crop (SadTalker's enhancer).

Each rendered crop (RGBA: alpha marks the re-rendered lower face, feathered) is restored by the
network as a whole face and blended back only where the render changed it:

    out = rgb · (1 − s·a) + gfpgan(x) · s·a        (s = ``strength``, a = the crop's alpha)

so pixels outside the alpha stay the render's and the alpha itself is kept. Crops whose alpha is
empty are passed through without running the network. By default the new chunks are lossless WebP
that keeps the RGB under transparent pixels (``exact``): bit-identical outside the alpha and no
second generation of lossy compression inside it.

What the network sees (x): GFPGAN restores a *whole* aligned face, but the render stores only the
changed region (and, when its ``webp_quality`` makes it lossy, libwebp replaces transparent
pixels by whatever compresses best: smeared rows, not the eyes and nose).
When the input row names the faces stage's ``faces_url``, each rendered region is put back into
the original aligned crop of its frame, so the network sees the full face with the new mouth.

Without weights (the default: they are the user's, nothing is downloaded) the stage passes the
render's tracks through unchanged and records why in its dropped counts; it never pretends.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import FACE_TRACKS, FRAME_CHUNK, RENDERED_TRACKS
from dubline.stages.base import Resources, Stage
from dubline.stages.job_rows import JobRow, Place, Upstream
from dubline.stages.chunk_images import decode_rgba, encode_rgba

if TYPE_CHECKING:  # PyTorch: loaded by the stage's workers (``setup``), never by the flow's driver
    from dubline.stages.enhance.gfpgan import GFPGANv1Clean

#: The reason recorded in the stage stats (and so in the run report) when no weights are given.
SKIPPED_NO_WEIGHTS = "enhancement skipped: no GFPGAN weights configured"
#: ``precision`` values: auto picks bf16/fp16 on a GPU, fp32 on a CPU (``restore.pick_dtype``).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class EnhanceJob(JobRow):
    language: str
    render_url: Upstream  # the render stage's ``rendered_tracks``
    faces_url: Upstream | None = None  # its original crops fill in what the render's RGB lacks
    chunks_url: Place | None = None  # the new crops' folder, beside the output manifest

class EnhanceStage(Stage):
    """One row per (title, language) -> ``rendered_tracks`` rows pointing at enhanced chunks.

    Its job row is an ``EnhanceJob`` (``faces_url``: the original crops fill in what the render's
    RGB lacks, see above).
    Parameters: ``weights`` (path or fsspec URL of GFPGANv1.4 .pth/.safetensors, or None: skip),
    ``strength`` (0..1 blend towards the restoration inside the alpha), ``batch_size`` (crops
    per forward pass), ``precision`` (auto | fp32 | fp16 | bf16; auto = bf16/fp16 on GPU, fp32 on
    CPU), ``webp_quality`` (None: lossless WebP keeping every pixel outside the alpha; 0..100:
    lossy like the render's, several times smaller, RGB under alpha 0 not kept), ``align_ffhq``
    (warp crops into FFHQ's face framing for the network and back; GFPGAN was trained on it).
    """

    name = "enhance"
    version = "2"
    resources = Resources(cpus=1.0, gpus=0.5, memory_gb=3.0)
    output_schema = RENDERED_TRACKS
    job_row = EnhanceJob
    param_files = ("weights",)
    defaults = {"weights": None, "strength": 0.5, "batch_size": 8, "precision": "auto", "webp_quality": None,
                "align_ffhq": True}

    def __init__(self, **params: Any):
        super().__init__(**params)
        strength = float(self.params["strength"])
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"enhance: strength must be within 0..1, not {strength}")
        if int(self.params["batch_size"]) < 1:
            raise ValueError(f"enhance: batch_size must be at least 1, not {self.params['batch_size']}")
        if self.params["precision"] not in PRECISIONS:
            raise ValueError(f"enhance: precision must be auto, fp32, fp16 or bf16, not {self.params['precision']!r}")
        quality = self.params["webp_quality"]
        if quality is not None and not 0 <= int(quality) <= 100:
            raise ValueError(f"enhance: webp_quality must be None (lossless) or 0..100, not {quality}")
        self._net: GFPGANv1Clean | None = None

    @classmethod
    def passes_through(cls, params: dict[str, Any]) -> bool:
        return not params.get("weights", cls.defaults["weights"])  # the rendered crops, as they are

    def setup(self) -> None:
        if not self.params["weights"]:
            return  # passes through (in the flow's driver, see ``passes_through``): no network, no PyTorch
        import torch

        from dubline.stages.enhance.gfpgan import load_gfpgan
        from dubline.stages.enhance.restore import pick_dtype

        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._dtype = pick_dtype(self.params["precision"], self._device)
        self._net = load_gfpgan(self.params["weights"], self._device, self._dtype)

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [out for row in rows for out in self._enhance_title(row)]

    def _enhance_title(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        tracks = read_rows(row["render_url"], RENDERED_TRACKS)
        if self._net is None:
            self.drop(SKIPPED_NO_WEIGHTS)
            return tracks
        faces = {t["track_id"]: t["chunk_urls"] for t in read_rows(row["faces_url"], FACE_TRACKS, without=("landmarks",))} \
            if row.get("faces_url") else {}
        started, counts = time.perf_counter(), Counter[str]()
        outputs = []
        for track in tracks:
            urls = []
            originals = faces.get(track["track_id"], [])
            for k, chunk_url in zip(track["chunk_index"], track["chunk_urls"]):
                url = f"{row['chunks_url'].rstrip('/')}/enhanced_track{track['track_id']:04d}_{k:04d}.parquet"
                if url == chunk_url:
                    raise ValueError(f"enhance: output chunk {url} would overwrite its input")
                # each rendered chunk was rendered from the face-crop chunk at its chunk_index
                counts += self._enhance_chunk(chunk_url, url, originals[k] if k < len(originals) else None)
                urls.append(url)
            outputs.append({**track, "chunk_urls": urls})
        seconds = time.perf_counter() - started
        self.count_work(faces=counts["enhanced"])
        self.report(crops_enhanced=counts["enhanced"], crops_without_alpha=counts["passed"],
                    crops_with_source_face=counts["with_face"],
                    seconds_per_crop=seconds / counts["enhanced"] if counts["enhanced"] else 0.0)
        return outputs

    def _enhance_chunk(self, chunk_url: str, url: str, faces_url: str | None) -> Counter[str]:
        """Enhance one frame chunk into ``url``; count crops enhanced, passed through (empty
        alpha) and shown to the network over their original face crop.

        Rendered crops are cut to their changed region; with the original face crops they are
        put back into the full aligned crop for the network, then cut again.
        """
        from dubline.stages.enhance.restore import blend_enhanced

        assert self._net is not None
        rows = read_rows(chunk_url, FRAME_CHUNK)
        originals: dict[int, dict[str, Any]] = {}
        if faces_url is not None:
            face_rows = read_rows(faces_url, FRAME_CHUNK)
            originals = {r["frame_index"]: r for r in face_rows}
            if len(face_rows) == 1:  # a portrait: its one crop is the source of every frame
                originals = {r["frame_index"]: face_rows[0] for r in rows}
        crops, affines, with_face = [], [], []
        for row in rows:
            crop, affine = decode_rgba(row["image"]), _affine(row["affine"])
            original = originals.get(row["frame_index"])
            if original is not None:
                crop, affine = _into_full_crop(crop, affine, original)
            crops.append(crop)
            affines.append(affine)
            with_face.append(original is not None)
        todo = [i for i, crop in enumerate(crops) if crop[..., 3].any()]
        out_rows = list(rows)  # crops with an empty alpha keep their bytes
        counts = Counter(enhanced=len(todo), passed=len(rows) - len(todo),
                         with_face=sum(with_face[i] for i in todo))
        size = int(self.params["batch_size"])
        for start in range(0, len(todo), size):
            index = todo[start : start + size]
            shapes = {crops[i].shape for i in index}
            groups = [[i for i in index if crops[i].shape == shape] for shape in shapes]
            for group in groups:
                blended = blend_enhanced(self._net, np.stack([crops[i] for i in group]), float(self.params["strength"]),
                                         self._device, align=bool(self.params["align_ffhq"]))
                for i, rgba in zip(group, blended):
                    cut, affine = _cut_to_alpha(rgba, affines[i])
                    out_rows[i] = {**rows[i], "image": encode_rgba(cut, self.params["webp_quality"]),
                                   "image_format": "webp", "affine": affine.astype(np.float32).ravel().tolist()}
        write_manifest(out_rows, FRAME_CHUNK, url)
        return counts


def _affine(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(2, 3)


def _into_full_crop(patch: np.ndarray, patch_affine: np.ndarray, original: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Place a rendered patch (cut to its changed region) back into its full original crop."""
    full_affine = _affine(original["affine"])
    x0, y0 = np.rint(np.linalg.solve(full_affine[:, :2], patch_affine[:, 2] - full_affine[:, 2])).astype(int)
    face = decode_rgba(original["image"])
    full = np.dstack([face[..., :3], np.zeros(face.shape[:2], np.uint8)])
    h, w = patch.shape[:2]
    full[y0 : y0 + h, x0 : x0 + w] = patch[: full.shape[0] - y0, : full.shape[1] - x0]
    return full, full_affine


def _cut_to_alpha(rgba: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The alpha's bounding box of an RGBA crop, with the crop->frame affine moved to match."""
    ys, xs = np.nonzero(rgba[..., 3])
    if not len(ys):
        return rgba[:1, :1], affine
    y0, x0 = ys.min(), xs.min()
    moved = affine.copy()
    moved[:, 2] += affine[:, :2] @ [x0, y0]
    return rgba[y0 : ys.max() + 1, x0 : xs.max() + 1], moved
