"""enhance: GFPGAN v1.4 on the re-rendered mouth region of every face crop (SadTalker's enhancer).

Each rendered crop (RGBA: alpha marks the re-rendered lower face, feathered) is restored by the
network as a whole face and blended back only where the render changed it:

    out = rgb · (1 − s·a) + gfpgan(x) · s·a        (s = ``strength``, a = the crop's alpha)

so pixels outside the alpha stay the render's and the alpha itself is kept. Crops whose alpha is
empty are passed through without running the network. By default the new chunks are lossless WebP
that keeps the RGB under transparent pixels (``exact``): bit-identical outside the alpha and no
second generation of lossy compression inside it.

What the network sees (x): GFPGAN restores a *whole* aligned face, but the render's lossy WebP
does not keep the RGB where alpha is 0 (libwebp replaces transparent pixels by whatever
compresses best: smeared rows, not the eyes and nose), and it stores only the changed region.
When the input row names the faces stage's ``faces_url``, each rendered region is put back into
the original aligned crop of its frame, so the network sees the full face with the new mouth.

Without weights (the default: they are the user's, nothing is downloaded) the stage passes the
render's tracks through unchanged and records why in its dropped counts; it never pretends.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import FACE_TRACKS, FRAME_CHUNK, RENDERED_TRACKS
from dubline.stages.base import Resources, Stage
from dubline.stages.job_rows import JobRow, Place, Upstream
from dubline.stages.chunk_images import decode_rgba, encode_rgba
from dubline.stages.enhance.gfpgan import GFPGANv1Clean, load_gfpgan
from dubline.stages.face_model.crop import TEMPLATE as CROP_TEMPLATE
from dubline.stages.face_model.similarity import similarity_2d

#: The reason recorded in the stage stats (and so in the run report) when no weights are given.
SKIPPED_NO_WEIGHTS = "enhancement skipped: no GFPGAN weights configured"
#: Right eye, left eye, nose tip (image left to right) of FFHQ's alignment at 512 px, as used by
#: GFPGAN's own face helper (facexlib); its mouth corners are at (201.3, 371.4) and (313.1, 371.2).
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935]])
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU."""
    if precision != "auto":
        return _PRECISIONS[precision]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def crop_to_ffhq(side: int) -> np.ndarray:
    """3×3 similarity taking pixels of a ``side``-px dubline face crop (``stages.face_model.crop.
    TEMPLATE``: eyes and nose tip) to pixels of a ``side``-px FFHQ-aligned face (GFPGAN's training
    alignment, the facexlib 5-point template: eyes and nose tip used)."""
    source = CROP_TEMPLATE * side
    target = FFHQ_TEMPLATE_512 * (side / 512.0)
    return np.vstack([similarity_2d(source, target), [0.0, 0.0, 1.0]])


def _warp(images: torch.Tensor, out_to_in: np.ndarray, padding: str) -> torch.Tensor:
    """Resample N×C×H×W ``images`` (square) so output pixel p shows input pixel ``out_to_in`` @ p.

    Pixel centres are integers (OpenCV's convention); affine_grid works in [-1, 1] with
    align_corners=False, i.e. n = (2p + 1) / side − 1.
    """
    side = images.shape[-1]
    to_norm = np.array([[2.0 / side, 0.0, 1.0 / side - 1.0], [0.0, 2.0 / side, 1.0 / side - 1.0], [0.0, 0.0, 1.0]])
    theta = (to_norm @ out_to_in @ np.linalg.inv(to_norm))[:2]
    theta_t = torch.as_tensor(theta, dtype=images.dtype, device=images.device).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta_t, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


@torch.inference_mode()
def blend_enhanced(net: GFPGANv1Clean, crops: np.ndarray, strength: float, device: torch.device,
                   align: bool = True) -> np.ndarray:
    """N×S×S×4 uint8 RGBA crops -> N×S×S×4 with RGB blended towards GFPGAN's restoration by alpha.

    The network sees ``net.out_size`` square RGB in [-1, 1]: crops of another size are resized,
    and with ``align`` warped from dubline's crop framing into FFHQ's (the face sits lower and a
    little larger there); the restoration goes back the same way. Crop pixels the FFHQ frame does
    not cover (a band along the bottom, below the chin, and ~2 % at each side) keep their RGB.
    """
    size, side = crops.shape[1], net.out_size
    rgba = torch.from_numpy(np.ascontiguousarray(crops)).to(device).permute(0, 3, 1, 2).float()  # N×4×S×S
    rgb, alpha = rgba[:, :3], rgba[:, 3:] / 255.0
    x = rgb / 127.5 - 1.0
    if size != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=size > side)
    to_ffhq = crop_to_ffhq(side)
    if align:
        x = _warp(x, np.linalg.inv(to_ffhq), "border")
    restored = net.restore(x).float()
    covered = torch.ones_like(restored[:, :1])
    if align:
        restored = _warp(torch.cat([restored, covered], dim=1), to_ffhq, "zeros")
        restored, covered = restored[:, :3], restored[:, 3:]
    if size != side:
        both = F.interpolate(torch.cat([restored, covered], dim=1), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=size < side)
        restored, covered = both[:, :3], both[:, 3:]
    restored = restored / covered.clamp_min(1e-3)  # zero padding came in with weight 1 − covered
    restored = (restored.clamp(-1.0, 1.0) + 1.0) * 127.5
    weight = strength * alpha * covered.clamp(0.0, 1.0)
    out = rgb * (1.0 - weight) + restored * weight
    out = torch.cat([out.round().clamp(0, 255), rgba[:, 3:]], dim=1)
    return out.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
        if self.params["precision"] != "auto" and self.params["precision"] not in _PRECISIONS:
            raise ValueError(f"enhance: precision must be auto, fp32, fp16 or bf16, not {self.params['precision']!r}")
        quality = self.params["webp_quality"]
        if quality is not None and not 0 <= int(quality) <= 100:
            raise ValueError(f"enhance: webp_quality must be None (lossless) or 0..100, not {quality}")
        self._net: GFPGANv1Clean | None = None

    @classmethod
    def passes_through(cls, params: dict[str, Any]) -> bool:
        return not params.get("weights", cls.defaults["weights"])  # the rendered crops, as they are

    def setup(self) -> None:
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._dtype = pick_dtype(self.params["precision"], self._device)
        if self.params["weights"]:
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
