"""Similarity fits (Umeyama, IEEE TPAMI 1991): the scale, rotation and translation that map one
point set onto another with the least squared error, in 2D (a frame's face onto the crop
template, the crop template onto GFPGAN's FFHQ alignment, a driven mouth's anchors onto the
measured ones) and in 3D (head pose against a track's mean shape)."""

from __future__ import annotations

import numpy as np


def similarity_2d(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """...×2×3 affines ``[s·R | t]`` mapping source ...×N×2 onto target ...×N×2 (leading axes
    broadcast: one fit per frame of T×N×2 against a fixed N×2, or frame by frame)."""
    mu_s, mu_t = source.mean(axis=-2, keepdims=True), target.mean(axis=-2, keepdims=True)
    s, t = source - mu_s, target - mu_t
    norm = np.maximum((s**2).sum(axis=(-2, -1)), 1e-9)
    a = (s * t).sum(axis=(-2, -1)) / norm
    b = (s[..., 0] * t[..., 1] - s[..., 1] * t[..., 0]).sum(axis=-1) / norm
    rotation = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], axis=-2)  # ...×2×2, s·R
    shift = mu_t[..., 0, :] - np.einsum("...ij,...j->...i", rotation, mu_s[..., 0, :])
    return np.concatenate([rotation, shift[..., None]], axis=-1)


def similarity_3d(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit per frame: target ≈ s · source @ R.T + t.  source N×3, target T×N×3 -> rotation
    T×3×3, scale T, translation T×3 (a proper rotation: reflections are excluded)."""
    mu_s = source.mean(axis=0)
    mu_t = target.mean(axis=1)
    src = source - mu_s
    tgt = target - mu_t[:, None]
    cov = np.einsum("tni,nj->tij", tgt, src) / len(source)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones((len(target), 3))
    fix[:, 2] = d
    rotation = np.einsum("tij,tj,tjk->tik", u, fix, vt)
    scale = (sigma * fix).sum(axis=1) / (src**2).sum() * len(source)
    translation = mu_t - scale[:, None] * np.einsum("tij,j->ti", rotation, mu_s)
    return rotation, scale, translation
