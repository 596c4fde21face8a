"""GFPGAN's restoration blended into dubline's face crops, in PyTorch (the enhance stage's workers).

A crop is framed by ``stages.face_model.crop.TEMPLATE``; GFPGAN was trained on FFHQ's framing, so
crops are warped into it for the network and back (``crop_to_ffhq``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dubline.stages.enhance.gfpgan import GFPGANv1Clean
from dubline.stages.face_model.crop import TEMPLATE as CROP_TEMPLATE
from dubline.stages.face_model.similarity import similarity_2d

#: Right eye, left eye, nose tip (image left to right) of FFHQ's alignment at 512 px, as used by
#: GFPGAN's own face helper (facexlib); its mouth corners are at (201.3, 371.4) and (313.1, 371.2).
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935]])
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, else fp16 on GPU; fp32 on CPU."""
    if precision != "auto":
        return DTYPES[precision]
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
