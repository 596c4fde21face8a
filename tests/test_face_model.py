"""The shared similarity fits recover a known similarity exactly, frame by frame and against a
fixed template, in 2D and 3D (a proper rotation even where a reflection would fit better)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from dubline.stages.face_model.similarity import similarity_2d, similarity_3d


def _rotation_2d(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_similarity_2d_recovers_scale_rotation_and_shift():
    rng = np.random.default_rng(0)
    frames, points = 6, 5
    source = rng.normal(size=(frames, points, 2)) * 40 + 300
    scale, angle, shift = rng.uniform(0.5, 2, frames), rng.uniform(-1, 1, frames), rng.normal(size=(frames, 2)) * 50
    truth = np.stack([np.hstack([s * _rotation_2d(a), t[:, None]]) for s, a, t in zip(scale, angle, shift)])
    target = np.einsum("tij,tnj->tni", truth[..., :2], source) + truth[:, None, :, 2]
    assert np.allclose(similarity_2d(source, target), truth, atol=1e-9)
    # One template for every frame (leading axes broadcast), and a single pair of point sets.
    template = target[0]
    per_frame = similarity_2d(source, template)
    assert per_frame.shape == (frames, 2, 3)
    assert np.allclose(per_frame[3], similarity_2d(source[3], template), atol=1e-12)
    assert np.allclose(similarity_2d(source[0], template), truth[0], atol=1e-9)


def test_similarity_2d_is_least_squares_under_noise():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(40, 2)) * 30
    truth = np.hstack([1.3 * _rotation_2d(0.4), [[5.0], [-7.0]]])
    target = source @ truth[:, :2].T + truth[:, 2] + rng.normal(size=(40, 2)) * 0.5
    fit = similarity_2d(source, target)
    residual = lambda m: ((source @ m[:, :2].T + m[:, 2] - target) ** 2).sum()  # noqa: E731
    assert residual(fit) <= residual(truth)
    assert np.allclose(fit, truth, atol=4 * 0.5 / np.sqrt(40))  # 4 standard errors of the shift


def test_similarity_3d_recovers_a_proper_rotation():
    rng = np.random.default_rng(2)
    source = rng.normal(size=(25, 3))
    rotations = Rotation.random(4, random_state=3).as_matrix()
    scale, shift = rng.uniform(50, 200, 4), rng.normal(size=(4, 3)) * 100
    target = scale[:, None, None] * np.einsum("tij,nj->tni", rotations, source) + shift[:, None]
    rotation, fitted_scale, translation = similarity_3d(source, target)
    assert np.allclose(rotation, rotations, atol=1e-9)
    assert np.allclose(fitted_scale, scale) and np.allclose(translation, shift)
    # A mirrored target: the best proper rotation, never a reflection.
    mirrored = target * np.array([-1.0, 1.0, 1.0])
    assert np.allclose(np.linalg.det(similarity_3d(source, mirrored)[0]), 1.0)
