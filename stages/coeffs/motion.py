"""Head pose and eye blinks for avatar mode (SadTalker's PoseVAE and blink roles), and the
reference-video variants (``--ref_pose``, ``--ref_blink``).

Pose rows are T×6 in the face stage's units (see ``stages.face_model.geometry.PoseFit.pose_rows``):
yaw, pitch, roll in degrees (yaw > 0 towards image right, pitch > 0 chin up, roll > 0
counter-clockwise), tx, ty in px, scale in px per inter-ocular distance (IOD). Blink rows are T×2
(left, right) eye closure in [0, 1], 0 open.

Generated pose = base pose + slow seeded wander (filtered noise per channel; its amplitudes,
tempo and spectrum make up the *pose style*) + audio-driven motion (nods on energy and pitch
accents, small turns on pitch accents), eased in from the base pose and soft-limited to the angles
real talking heads use. Generated blinks are a renewal process with human statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from dubline.stages.speech.features import SAMPLE_RATE

_ENERGY_HOP, _ENERGY_WINDOW = 160, 400  # 10 ms hop, 25 ms window: same framing as the log-mel
# pyin at a 20 ms hop: a quarter of the cost of 10 ms and still finer than any video frame
# rate's need for an intonation contour (measured: ~0.04× real time on one core).
_PITCH_HOP, _PITCH_WINDOW = 320, 1024
_F0_RANGE = (65.0, 400.0)  # Hz, adult speech
_SILENCE_FLOOR_DB = -60.0  # dBFS: below this a frame is silent whatever the utterance's level
_SILENCE_BELOW_LOUD_DB = 35.0  # ... and so is a frame this far below the utterance's loud frames

#: Soft limits of the generated angles (yaw, pitch, roll), degrees: the range of talking heads.
ANGLE_LIMITS = np.array([10.0, 6.0, 4.0])
_EASE_IN_S = 0.4  # generated motion starts from the portrait's own pose
_WANDER_GRID_HZ = 10.0
_WANDER_BAND_HZ = (0.05, 0.5)  # before the style's tempo factor
_DRIVE_CAP = 3.0  # z-score; louder outliers should not whip the head
_NOD_FAST_S, _NOD_SLOW_S = 0.10, 0.40  # difference of Gaussians: peak ≈ 1 Hz, half gain 0.4–2.2 Hz

_MIN_BLINK_GAP_S = 1.0
_BLINK_GAP_SHAPE = 2.0  # gamma shape of the gap beyond the minimum: CV of intervals ≈ 0.5
_BLINK_DURATION_S = (0.1, 0.4)
_FIRST_BLINK_AFTER_S = 0.3  # open eyes at the start, as in the portrait

# Salts keep a pose style and a blink seed with the same number independent.
_POSE_SALT, _BLINK_SALT = 0x9E3779B9, 0x85EBCA6B


def _frame_means(values: np.ndarray, valid: np.ndarray, rate: float, fps: float, frames: int) -> np.ndarray:
    """Mean of the valid ``values`` (sampled at ``rate`` Hz) over each video frame; NaN where none.

    A frame shorter than one sample takes the sample it starts in, so any frame rate works.
    """
    edges = np.round(np.arange(frames + 1) / fps * rate).astype(int)
    start = np.minimum(edges[:-1], len(values))
    stop = np.minimum(np.maximum(edges[1:], start + 1), len(values))
    total = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    count = np.concatenate([[0], np.cumsum(valid)])
    n = count[stop] - count[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (total[stop] - total[start]) / n, np.nan)


def _zscore(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """z-scores over ``mask`` frames, 0 elsewhere (and everywhere if fewer than two frames)."""
    out = np.zeros(len(values))
    if mask.sum() < 2:
        return out
    sel = values[mask]
    out[mask] = (sel - sel.mean()) / max(sel.std(), 1e-6)
    return out


def prosody(samples16k: np.ndarray, fps: float, frames: int) -> np.ndarray:
    """T×2 per-video-frame (energy, pitch) of mono 16 kHz speech, each z-scored per utterance.

    Energy is the frame's RMS level in dB; pitch is log-F0 from pyin. Both are 0 on silent frames
    (and pitch also on unvoiced ones), so 0 means "nothing to react to" downstream.
    """
    if fps <= 0 or frames < 0:
        raise ValueError(f"need fps > 0 and frames >= 0, got {fps}, {frames}")
    y = np.asarray(samples16k, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"samples must be mono (1-D), got shape {y.shape}")
    if len(y) == 0 or frames == 0:
        return np.zeros((frames, 2))
    import librosa  # avatar mode only: ~0.5 s of imports that no dub needs

    power = librosa.feature.rms(y=y, frame_length=_ENERGY_WINDOW, hop_length=_ENERGY_HOP, center=True)[0] ** 2
    power = _frame_means(power, np.ones(len(power), bool), SAMPLE_RATE / _ENERGY_HOP, fps, frames)
    energy_db = 10 * np.log10(np.nan_to_num(power, nan=0.0) + 1e-10)  # past the audio's end: silence
    loud = np.percentile(energy_db, 95)
    active = energy_db > max(_SILENCE_FLOOR_DB, loud - _SILENCE_BELOW_LOUD_DB)

    f0, voiced, _ = librosa.pyin(
        y, fmin=_F0_RANGE[0], fmax=_F0_RANGE[1], sr=SAMPLE_RATE, frame_length=_PITCH_WINDOW,
        hop_length=_PITCH_HOP, center=True,
    )
    voiced &= np.isfinite(f0)
    log_f0 = _frame_means(np.log2(np.where(voiced, f0, 1.0)), voiced, SAMPLE_RATE / _PITCH_HOP, fps, frames)
    pitched = active & np.isfinite(log_f0)
    return np.stack([_zscore(energy_db, active), _zscore(np.nan_to_num(log_f0), pitched)], axis=1)


@dataclass(frozen=True)
class PoseStyle:
    """What a ``pose_style`` number stands for; drawn reproducibly from it."""

    angle_rms: np.ndarray  # (3,) wander RMS of yaw, pitch, roll, degrees: the style's preferred axes
    tempo: float  # multiplies the wander frequencies
    slope: float  # wander spectrum ∝ f^-slope: higher = lazier, smoother drifts
    nod_gain: float  # degrees of chin-down per unit of band-passed speech drive
    turn_gain: np.ndarray  # (2,) signed degrees of yaw, roll per unit of band-passed pitch accent
    drift_iod: float  # tx/ty wander RMS in IODs (px scale with the face)


def style_params(pose_style: int) -> PoseStyle:
    """The reproducible style behind a ``pose_style`` seed."""
    rng = np.random.default_rng([pose_style, _POSE_SALT])
    # RMS ranges chosen so that a minute's peaks (≈2–2.5 RMS, before the soft limit) span
    # yaw 3–10°, pitch 2–6° (with the nods), roll 1–4°.
    lo, hi = np.array([1.6, 1.0, 0.55]), np.array([5.0, 2.6, 1.8])
    return PoseStyle(
        angle_rms=lo + (hi - lo) * rng.uniform(size=3),
        tempo=float(np.exp(rng.uniform(np.log(0.6), np.log(1.7)))),
        slope=float(rng.uniform(0.3, 1.2)),
        nod_gain=float(rng.uniform(3.0, 6.0)),
        turn_gain=rng.choice([-1.0, 1.0], size=2) * rng.uniform([1.0, 0.3], [2.5, 1.0]),
        drift_iod=float(rng.uniform(0.008, 0.025)),
    )


def _wander(rng: np.random.Generator, t: np.ndarray, rms: float, tempo: float, slope: float) -> np.ndarray:
    """A smooth zero-mean random drift at times ``t`` (s): Gaussian noise shaped to a band-limited
    1/f^slope spectrum. Noise rather than a few sinusoids gives many degrees of freedom, so
    trajectories of different styles stay uncorrelated. It is made on a fixed 10 Hz grid (the
    band ends well below 5 Hz) and spline-interpolated, so it does not depend on the frame rate.
    """
    lo, hi = tempo * np.array(_WANDER_BAND_HZ)
    # At least a few periods of the slowest component, so short clips get a short stretch of a
    # long drift (and its natural RMS), not an inflated one.
    n = int(np.ceil(max(t[-1], 4.0 / lo) * _WANDER_GRID_HZ)) + 2
    f = np.fft.rfftfreq(n, 1.0 / _WANDER_GRID_HZ)
    f[0] = lo  # the DC bin is removed by the high-pass anyway; avoids 0 ** -slope
    gain = f**-slope * (1.0 - np.exp(-((f / lo) ** 4))) * np.exp(-((f / hi) ** 4))
    gain[0] = 0.0
    series = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * gain, n)
    series *= rms / series.std()
    from scipy.interpolate import CubicSpline  # avatar mode only (scipy.interpolate: ~0.5 s of imports)

    return CubicSpline(np.arange(n) / _WANDER_GRID_HZ, series)(t)


def _band(drive: np.ndarray, fps: float, tempo: float) -> np.ndarray:
    """Band-pass at head-nod rates: keeps stress/phrase swells, drops syllable flicker and level."""
    fast, slow = _NOD_FAST_S / np.sqrt(tempo), _NOD_SLOW_S / np.sqrt(tempo)
    return gaussian_filter1d(drive, fast * fps, mode="nearest") - gaussian_filter1d(drive, slow * fps, mode="nearest")


def _visit(angles: Sequence[float], frames: int) -> np.ndarray:
    """Angles visited in order, evenly over the clip, linearly interpolated (SadTalker --input_yaw)."""
    angles = np.asarray(angles, dtype=float)
    if angles.ndim != 1 or len(angles) == 0:
        raise ValueError("an angle override needs at least one angle")
    return np.interp(np.arange(frames), np.linspace(0, max(frames - 1, 0), len(angles)), angles)


def generate_pose(
    base_pose: np.ndarray,
    prosody: np.ndarray,
    fps: float,
    pose_style: int,
    still: bool = False,
    yaw: Sequence[float] | None = None,
    pitch: Sequence[float] | None = None,
    roll: Sequence[float] | None = None,
) -> np.ndarray:
    """T×6 head pose around ``base_pose`` (6,) driven by ``prosody`` (T×2, see ``prosody``).

    ``pose_style`` seeds a reproducible style. ``still`` keeps the base pose (SadTalker --still).
    ``yaw``/``pitch``/``roll`` replace that axis with base + the listed angles visited in order
    (SadTalker --input_yaw etc.); they apply in still mode too, as in SadTalker.
    """
    base = np.asarray(base_pose, dtype=float)
    drive = np.asarray(prosody, dtype=float)
    if base.shape != (6,) or drive.ndim != 2 or drive.shape[1] != 2 or fps <= 0:
        raise ValueError(f"need base_pose (6,), prosody T×2 and fps > 0; got {base.shape}, {drive.shape}, {fps}")
    frames = len(drive)
    offsets = np.zeros((frames, 6))
    if not still and frames:
        wander_rng = np.random.default_rng([pose_style, _POSE_SALT, 1])
        offsets = _generated_offsets(base, drive, fps, style_params(pose_style), wander_rng)
    pose = base + offsets
    for axis, angles in enumerate((yaw, pitch, roll)):
        if angles is not None:
            pose[:, axis] = base[axis] + _visit(angles, frames)
    return pose


def _generated_offsets(base: np.ndarray, drive: np.ndarray, fps: float, style: PoseStyle,
                       rng: np.random.Generator) -> np.ndarray:
    """T×6 offsets from the base pose: wander + audio-driven nods and turns, eased in, limited."""
    frames = len(drive)
    t = np.arange(frames) / fps
    wander = np.stack([_wander(rng, t, rms, style.tempo, style.slope) for rms in style.angle_rms]
                      + [_wander(rng, t, 1.0, style.tempo, style.slope) for _ in range(3)], axis=1)
    offsets = np.zeros((frames, 6))
    offsets[:, :3] = wander[:, :3]
    # Speech moves the head: loud or high-pitched stretches bring a chin-down nod, pitch accents
    # a small turn and tilt. Only the positive side drives: quiet speech is not "anti-emphasis".
    energy, accent = np.clip(drive, 0.0, _DRIVE_CAP).T
    offsets[:, 1] -= style.nod_gain * _band(energy + 0.5 * accent, fps, style.tempo)
    offsets[:, [0, 2]] += style.turn_gain * _band(accent, fps, style.tempo)[:, None]
    # Translation drift scales with the face (px per IOD); scale breathes by a fraction of a percent.
    offsets[:, 3:5] = style.drift_iod * base[5] * wander[:, 3:5]
    offsets[:, 5] = 0.004 * base[5] * wander[:, 5]
    offsets[:, :3] = ANGLE_LIMITS * np.tanh(offsets[:, :3] / ANGLE_LIMITS)  # slope ≤ 1: stays smooth
    ease = np.clip(t / _EASE_IN_S, 0.0, 1.0)
    return offsets * (ease * ease * (3 - 2 * ease))[:, None]


def generate_blinks(frames: int, fps: float, seed: int, rate_per_min: float = 17.0) -> np.ndarray:
    """T×2 (left, right) eye closure with human blink statistics, reproducible for ``seed``.

    Onset-to-onset intervals are 1 s plus a gamma-distributed gap (mean interval 60/rate); each
    blink lasts 100–400 ms (mean ≈ 200 ms), closes in about a third of that and reopens more
    slowly; some blinks are incomplete. Both eyes blink together, with a few percent of asymmetry.
    Blinks are drawn in order, so a longer clip starts with the same blinks as a shorter one.
    """
    mean_gap = 60.0 / rate_per_min if rate_per_min > 0 else np.inf
    if fps <= 0 or frames < 0 or not mean_gap > _MIN_BLINK_GAP_S:
        raise ValueError(f"need fps > 0, frames >= 0 and a rate in (0, {60 / _MIN_BLINK_GAP_S:g})/min")
    rng = np.random.default_rng([seed, _BLINK_SALT])
    gap_scale = (mean_gap - _MIN_BLINK_GAP_S) / _BLINK_GAP_SHAPE
    out = np.zeros((frames, 2))
    end_s = frames / fps
    onset = _FIRST_BLINK_AFTER_S + rng.uniform() * (_MIN_BLINK_GAP_S + rng.gamma(_BLINK_GAP_SHAPE, gap_scale))
    while onset < end_s:
        duration = _BLINK_DURATION_S[0] + (_BLINK_DURATION_S[1] - _BLINK_DURATION_S[0]) * rng.beta(2.0, 4.0)
        closing = duration * rng.uniform(0.28, 0.4)
        depth = 1.0 if rng.uniform() < 0.85 else rng.uniform(0.6, 0.9)
        eyes = depth * (1.0 - rng.uniform(0.0, 0.04, size=2))
        first, last = int(np.ceil(onset * fps)), min(frames, int(np.floor((onset + duration) * fps)) + 1)
        u = np.arange(first, last) / fps - onset
        # Raised-cosine close over `closing`, raised-cosine reopen over the (longer) rest.
        shape = np.where(u < closing, 0.5 - 0.5 * np.cos(np.pi * u / closing),
                         0.5 + 0.5 * np.cos(np.pi * (u - closing) / (duration - closing)))
        out[first:last] = np.clip(shape, 0.0, 1.0)[:, None] * eyes
        onset += _MIN_BLINK_GAP_S + rng.gamma(_BLINK_GAP_SHAPE, gap_scale)
    return out


def _ping_pong(length: int, frames: int) -> np.ndarray:
    """Indices 0, 1, …, length-1, length-2, …, 0, 1, … : loops a clip without a jump at the seam."""
    if length < 1:
        raise ValueError("reference track is empty")
    if length == 1:
        return np.zeros(frames, int)
    k = np.arange(frames) % (2 * length - 2)
    return np.where(k < length, k, 2 * length - 2 - k)


def pose_from_reference(reference_pose: np.ndarray, frames: int, base_pose: np.ndarray) -> np.ndarray:
    """T×6: a reference face track's head motion (about its own mean) applied around ``base_pose``.

    Angles move by the reference's offsets in degrees; translation and scale move by the same
    amount *relative to face size*, so a small face in the reference drives a large portrait alike.
    """
    ref = np.asarray(reference_pose, dtype=float)
    base = np.asarray(base_pose, dtype=float)
    if ref.ndim != 2 or ref.shape[1] != 6 or base.shape != (6,):
        raise ValueError(f"need reference_pose T×6 and base_pose (6,), got {ref.shape}, {base.shape}")
    looped = ref[_ping_pong(len(ref), frames)]
    mean = ref.mean(axis=0)
    face = base[5] / mean[5]  # portrait px per reference px
    out = np.empty((frames, 6))
    out[:, :3] = base[:3] + looped[:, :3] - mean[:3]
    out[:, 3:5] = base[3:5] + face * (looped[:, 3:5] - mean[3:5])
    out[:, 5] = base[5] * looped[:, 5] / mean[5]
    return out


def blinks_from_reference(reference_blink: np.ndarray, frames: int) -> np.ndarray:
    """T×2: a reference face track's blinks as they are, ping-pong looped to ``frames``."""
    ref = np.asarray(reference_blink, dtype=float)
    if ref.ndim != 2 or ref.shape[1] != 2:
        raise ValueError(f"need reference_blink T×2, got {ref.shape}")
    return np.clip(ref[_ping_pong(len(ref), frames)], 0.0, 1.0)
