"""Generated head pose and blinks for avatar mode, and reference-video pose/blink."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from dubline.stages.coeffs.motion import (
    ANGLE_LIMITS,
    SAMPLE_RATE,
    blinks_from_reference,
    generate_blinks,
    generate_pose,
    pose_from_reference,
    prosody,
    style_params,
)
from dubline.stages.speech.espeak import synthesize

FPS = 25.0
BASE = np.array([2.0, -1.0, 0.5, 128.0, 120.0, 80.0])  # a portrait with an 80 px inter-ocular distance
PAD_S = 4.0
STYLES = range(10)


@pytest.fixture(scope="module")
def speech_prosody() -> np.ndarray:
    """Prosody of espeak speech between 4 s of silence on each side."""
    speech = synthesize("Well, I never thought I would say this, but the weather today is absolutely "
                        "wonderful. Shall we go outside and walk?", voice="en")
    samples = librosa.resample(speech.samples, orig_sr=speech.sample_rate, target_sr=SAMPLE_RATE)
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.float32)
    audio = np.concatenate([pad, samples, pad])
    return prosody(audio, FPS, int(len(audio) / SAMPLE_RATE * FPS))


def _speech_and_silence(frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the speech frames and the silent ones, each kept 0.5 s clear of the other."""
    speech, silence = np.zeros(frames, bool), np.zeros(frames, bool)
    margin, pad = int(0.5 * FPS), int(PAD_S * FPS)
    speech[pad + margin : frames - pad - margin] = True
    silence[int(_EASE_FRAMES) : pad - margin] = True
    silence[frames - pad + margin :] = True
    return speech, silence


_EASE_FRAMES = 0.6 * FPS  # past the ease-in from the base pose


def _long_prosody(speech_prosody: np.ndarray, seconds: float = 60.0) -> np.ndarray:
    return np.resize(speech_prosody, (int(seconds * FPS), 2))


def _rms_deg(pose: np.ndarray) -> np.ndarray:
    return np.sqrt(((pose[:, :3] - BASE[:3]) ** 2).mean(axis=0))


# --- prosody ---------------------------------------------------------------------------------


def test_prosody_is_zscored_and_zero_in_silence(speech_prosody):
    frames = len(speech_prosody)
    speech, silence = _speech_and_silence(frames)
    energy, pitch = speech_prosody.T
    assert np.all(speech_prosody[silence] == 0)
    active = energy != 0
    assert active[speech].mean() > 0.7  # espeak leaves short gaps between words
    assert abs(energy[active].mean()) < 1e-6 and energy[active].std() == pytest.approx(1.0)
    voiced = pitch != 0
    assert 0.3 < voiced[speech].mean() < 0.95 and not np.any(voiced & ~active)
    assert abs(pitch[voiced].mean()) < 1e-6 and pitch[voiced].std() == pytest.approx(1.0)


def test_prosody_of_silence_and_short_audio():
    assert np.all(prosody(np.zeros(SAMPLE_RATE, np.float32), FPS, 50) == 0)
    assert prosody(np.zeros(0, np.float32), FPS, 7).shape == (7, 2)
    tone = np.sin(2 * np.pi * 150 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    out = prosody(tone, FPS, 50)  # audio ends at frame 25: the rest reads as silence
    assert out.shape == (50, 2) and np.all(out[26:] == 0)
    with pytest.raises(ValueError):
        prosody(np.zeros((2, 100), np.float32), FPS, 5)


# --- generated pose --------------------------------------------------------------------------


def test_pose_is_reproducible_per_style(speech_prosody):
    first = generate_pose(BASE, speech_prosody, FPS, pose_style=7)
    assert first.shape == (len(speech_prosody), 6)
    np.testing.assert_array_equal(first, generate_pose(BASE, speech_prosody, FPS, pose_style=7))
    assert not np.allclose(first, generate_pose(BASE, speech_prosody, FPS, pose_style=8))
    np.testing.assert_allclose(first[0], BASE)  # eased in from the portrait's own pose


def test_styles_differ_clearly():
    frames = int(60 * FPS)
    poses = [generate_pose(BASE, np.zeros((frames, 2)), FPS, style) for style in STYLES]
    yaw = np.array([pose[:, 0] for pose in poses])
    corr = np.abs(np.corrcoef(yaw)[np.triu_indices(len(poses), 1)])
    assert corr.mean() < 0.3 and corr.max() < 0.6  # measured: 0.16, 0.45
    rms = np.array([_rms_deg(pose) for pose in poses])
    # Amplitudes spread on every axis, and styles prefer different axes (the most-moving axis
    # relative to its limit is not the same for all).
    assert np.all(rms.max(axis=0) / rms.min(axis=0) > 1.5)  # measured: yaw 2.0×, pitch 2.2×, roll 2.8×
    assert len(set(np.argmax(rms / ANGLE_LIMITS, axis=1))) > 1
    assert len({round(style_params(style).tempo, 3) for style in STYLES}) == len(STYLES)


def test_pose_magnitudes_are_those_of_talking_heads(speech_prosody):
    drive = _long_prosody(speech_prosody)
    for style in STYLES:
        offset = generate_pose(BASE, drive, FPS, style) - BASE
        peak = np.abs(offset).max(axis=0)
        assert 3 <= peak[0] <= 10 and 2 <= peak[1] <= 6 and 1 <= peak[2] <= 4, (style, peak[:3])
        assert np.all(np.abs(offset[:, :3]) < ANGLE_LIMITS)
        assert peak[3] < 0.1 * BASE[5] and peak[4] < 0.1 * BASE[5]  # a few px: < 8 px here
        assert peak[5] < 0.02 * BASE[5]  # scale nearly constant


def test_pose_is_smooth(speech_prosody):
    drive = _long_prosody(speech_prosody)
    for style in STYLES:
        step = np.abs(np.diff(generate_pose(BASE, drive, FPS, style), axis=0)).max(axis=0)
        assert np.all(step[:3] < 1.5) and np.all(step[3:5] < 1.0), (style, step)  # ° and px per frame


def test_wander_does_not_depend_on_frame_rate():
    at_25 = generate_pose(BASE, np.zeros((250, 2)), 25.0, 4)
    at_50 = generate_pose(BASE, np.zeros((500, 2)), 50.0, 4)
    np.testing.assert_allclose(at_50[::2], at_25, atol=1e-9)


def test_speech_bursts_drive_nods(speech_prosody):
    frames = len(speech_prosody)
    speech, silence = _speech_and_silence(frames)
    for style in range(5):
        pose = generate_pose(BASE, speech_prosody, FPS, style)
        velocity = np.diff(pose[:, 1], prepend=pose[0, 1])
        ratio = np.sqrt((velocity[speech] ** 2).mean() / (velocity[silence] ** 2).mean())
        assert ratio > 2.0, (style, ratio)  # measured: 3.0–11×
        audio_part = pose - generate_pose(BASE, np.zeros_like(speech_prosody), FPS, style)
        assert np.abs(audio_part[speech, 1]).max() > 1.5  # nods of degrees, not a flicker
        assert np.abs(audio_part[: int(1.5 * FPS)]).max() < 1e-9  # nothing moves long before the speech


def test_still_mode_keeps_the_base_pose(speech_prosody):
    still = generate_pose(BASE, speech_prosody, FPS, 3, still=True)
    np.testing.assert_array_equal(still, np.tile(BASE, (len(speech_prosody), 1)))
    turning = generate_pose(BASE, speech_prosody, FPS, 3, still=True, yaw=[0, 20])
    np.testing.assert_array_equal(turning[:, 1:], still[:, 1:])
    assert turning[-1, 0] == pytest.approx(BASE[0] + 20)


def test_angle_overrides_visit_the_requested_angles(speech_prosody):
    frames = len(speech_prosody)
    free = generate_pose(BASE, speech_prosody, FPS, 5)
    pose = generate_pose(BASE, speech_prosody, FPS, 5, yaw=[-10, 10, 0], roll=[3])
    yaw = pose[:, 0] - BASE[0]
    assert yaw[0] == pytest.approx(-10) and yaw[-1] == pytest.approx(0)
    assert yaw[(frames - 1) // 2] == pytest.approx(10, abs=0.2) and yaw.max() == pytest.approx(10, abs=0.2)
    assert np.all(np.diff(yaw[: (frames - 1) // 2]) > 0)  # linear sweep, no jumps
    np.testing.assert_allclose(pose[:, 2], BASE[2] + 3)
    np.testing.assert_array_equal(pose[:, [1, 3, 4, 5]], free[:, [1, 3, 4, 5]])
    with pytest.raises(ValueError):
        generate_pose(BASE, speech_prosody, FPS, 5, pitch=[])


# --- generated blinks ------------------------------------------------------------------------


def _blink_runs(closure: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    edges = np.diff(np.concatenate([[0], (closure > threshold).astype(int), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def test_blinks_have_human_rate_and_duration():
    for seed in range(5):
        # 1 kHz sampling to measure durations to the millisecond; 5 minutes each.
        fine = generate_blinks(300_000, 1000.0, seed)
        starts, stops = _blink_runs(fine[:, 0], 0.0)
        rate = len(starts) / 5
        durations = (stops - starts) / 1000.0
        assert 12 <= rate <= 24, (seed, rate)  # measured: 15.4–19.0 per minute
        assert durations.min() >= 0.095 and durations.max() <= 0.4, (seed, durations.min(), durations.max())
        assert 0.15 < durations.mean() < 0.3  # measured: 0.19–0.20 s
        assert np.diff(starts).min() >= 1000  # at least 1 s between blinks
        # At video rate every blink is seen: at least one frame half closed or more.
        video = generate_blinks(300 * 25, 25.0, seed)
        v_starts, v_stops = _blink_runs(video[:, 0], 0.25)
        assert len(v_starts) == len(starts)
        assert min(video[a:b, 0].max() for a, b in zip(v_starts, v_stops)) >= 0.5


def test_blink_profile_closes_fast_and_opens_slowly():
    fine = generate_blinks(120_000, 1000.0, 11)
    starts, stops = _blink_runs(fine[:, 0], 0.0)
    for a, b in zip(starts, stops):
        peak = a + int(np.argmax(fine[a:b, 0]))
        assert peak - a < b - peak


def test_blinks_are_binocular_bounded_and_reproducible():
    blinks = generate_blinks(3000, FPS, 2)
    assert blinks.shape == (3000, 2) and blinks.min() >= 0 and blinks.max() <= 1
    assert np.abs(blinks[:, 0] - blinks[:, 1]).max() <= 0.05
    assert np.all(blinks[: int(0.3 * FPS)] == 0)  # open eyes at the start, as in the portrait
    np.testing.assert_array_equal(blinks, generate_blinks(3000, FPS, 2))
    np.testing.assert_array_equal(blinks[:1000], generate_blinks(1000, FPS, 2))  # prefix-stable
    assert not np.array_equal(blinks, generate_blinks(3000, FPS, 3))
    faster = generate_blinks(300 * 25, FPS, 2, rate_per_min=25.0)
    assert len(_blink_runs(faster[:, 0], 0.25)[0]) / 5 > 20
    with pytest.raises(ValueError):
        generate_blinks(100, FPS, 0, rate_per_min=70.0)


# --- reference pose and blink ----------------------------------------------------------------


def test_reference_pose_is_applied_around_the_base_and_ping_pong_looped():
    t = np.arange(40)
    reference = np.stack([10 + 5 * np.sin(t / 6), -3 + 2 * np.cos(t / 5), 1 + 0 * t,
                          300 + 4 * np.sin(t / 7), 200 + 0 * t, 40 + 0.4 * np.sin(t / 4)], axis=1)
    out = pose_from_reference(reference, 100, BASE)
    relative = reference - reference.mean(axis=0)
    np.testing.assert_allclose(out[:40, :3], BASE[:3] + relative[:, :3])
    face = BASE[5] / reference[:, 5].mean()  # the portrait's face is about twice as large
    np.testing.assert_allclose(out[:40, 3], BASE[3] + face * relative[:, 3])
    np.testing.assert_allclose(out[:40, 5], BASE[5] * reference[:, 5] / reference[:, 5].mean())
    np.testing.assert_allclose(out[40:79], out[38::-1])  # back ...
    np.testing.assert_allclose(out[78:], out[:22])  # ... and forth
    assert np.abs(np.diff(out[:, 0])).max() <= np.abs(np.diff(reference[:, 0])).max() + 1e-9  # no seam
    np.testing.assert_allclose(pose_from_reference(reference, 10, BASE), out[:10])
    np.testing.assert_allclose(pose_from_reference(reference[:1], 5, BASE), np.tile(BASE, (5, 1)))
    with pytest.raises(ValueError):
        pose_from_reference(reference[:, :3], 10, BASE)


def test_reference_blinks_are_looped_as_they_are():
    reference = np.zeros((30, 2))
    reference[10:15] = [[0.2, 0.25], [0.8, 0.8], [1.0, 0.95], [0.6, 0.6], [0.1, 0.1]]
    out = blinks_from_reference(reference, 70)
    np.testing.assert_array_equal(out[:30], reference)
    np.testing.assert_array_equal(out[30:59], reference[28::-1])
    np.testing.assert_array_equal(out[58:], reference[:12])
    assert blinks_from_reference(reference, 0).shape == (0, 2)
    with pytest.raises(ValueError):
        blinks_from_reference(np.zeros((0, 2)), 5)
