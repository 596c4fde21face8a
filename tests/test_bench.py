"""The lip-sync benchmark: golden values of its measures, the fitting of B's audio, and the command end to end.

Every expected value here comes from the construction of the inputs (a known lag, a known pixel
difference, a known number of samples), never from the benchmark's own output.
"""

from __future__ import annotations

import json
import math
import os
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dubline.flows.bench import (
    AUDIO_RATE,
    SHIFT_S,
    PairResult,
    Picture,
    _on_clock,
    build_catalogue,
    fitted_dub_audio,
    footage_offset,
    format_table,
    picture,
    psnr_outside_lower_face,
    summarize,
    write_results,
)
from dubline.flows.cli import main
from dubline.flows.demo import astronaut, grace_hopper, write_clip, write_portrait_clip
from dubline.stages.coeffs.model import WEIGHTS, SpeechToMouth
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.media import read_audio
from dubline.stages.lipsync.mouth import MouthCurve, best_lag, measure_mouths, pearson
from dubline.stages.speech.whisper_models import BASE_PACKAGED
from dubline.stages.speech.espeak import Speech, synthesize


def _read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV as float samples in [-1, 1)."""
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, AUDIO_RATE)
        return np.frombuffer(f.readframes(f.getnframes()), "<i2") / 32768.0


# --- best_lag -----------------------------------------------------------------------------------


def test_best_lag_finds_a_two_frame_delay_and_its_sign():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=200)
    late = np.concatenate([np.zeros(2), reference[:-2]])  # the same curve, two frames late
    r, lag = best_lag(late, reference, max_lag=2)
    assert lag == 2 and r == pytest.approx(1.0, abs=1e-9)
    r, lag = best_lag(reference, late, max_lag=2)
    assert lag == -2 and r == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(pearson(np.ones(10), reference[:10]))  # a still mouth has no correlation
    very_late = np.concatenate([np.zeros(5), reference[:-5]])
    r, lag = best_lag(very_late, reference, max_lag=2, centre=4)  # a window around 4 frames finds it
    assert lag == 5 and r == pytest.approx(1.0, abs=1e-9)


def test_best_lag_skips_unknown_frames_instead_of_counting_them():
    """Frames where the face was lost (NaN in x) or B's mouth is unknown (NaN in y) are left out:
    an exact copy one frame late still gives r = 1, which a NaN read as 0 (or as a gap closed up) would not."""
    rng = np.random.default_rng(1)
    mouth_b = rng.normal(size=150)
    mouth_b[110:] = np.nan  # B's clip ended: the rest of A's frames have no reference
    output = np.concatenate([[0.3], mouth_b[:-1]])  # one frame late
    output[40:55] = np.nan  # the face was lost
    r, lag = best_lag(output, mouth_b, max_lag=2)
    assert lag == 1 and r == pytest.approx(1.0, abs=1e-12)


def test_best_lag_golden_r_over_the_frames_both_curves_know():
    """With noise, r at the found lag equals Pearson's r of the pairs (x[t + lag], y[t]) whose both
    values are known, computed here by hand from its definition."""
    rng = np.random.default_rng(2)
    y = np.sin(np.arange(120) / 3.0) + 0.2 * rng.normal(size=120)
    x = np.concatenate([[np.nan, np.nan], y[:-2]]) + 0.5 * rng.normal(size=120)  # two frames late, noisy
    x[70:80] = np.nan
    y[100:] = np.nan
    pairs = np.array([(x[t + 2], y[t]) for t in range(118) if np.isfinite(x[t + 2]) and np.isfinite(y[t])])
    dx, dy = pairs[:, 0] - pairs[:, 0].mean(), pairs[:, 1] - pairs[:, 1].mean()
    expected = (dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum())
    r, lag = best_lag(x, y, max_lag=2)
    assert lag == 2 and r == pytest.approx(expected, abs=1e-12)
    assert 0.6 < expected < 0.95  # the noise is real: this is not the trivial r = 1


def test_best_lag_without_overlap_is_undefined():
    x = np.r_[np.ones(5), np.full(5, np.nan)]
    y = np.r_[np.full(5, np.nan), np.arange(5.0)]
    r, lag = best_lag(x + np.arange(10), y, max_lag=2)  # at most 2 frames where both are known
    assert np.isnan(r) and lag == 0


# --- B's mouth on A's clock ---------------------------------------------------------------------


def test_resampling_onto_another_frame_clock():
    curve = MouthCurve(np.arange(5), np.array([0.0, 1.0, 2.0, 3.0, 4.0]))  # 5 frames at 10 fps: t = 0 … 0.4 s
    values = _on_clock(curve, fps=10.0, frames=6, target_fps=20.0)  # t = 0, 0.05, … 0.25 s
    assert np.allclose(values, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert np.isnan(_on_clock(curve, 10.0, 12, 20.0)[-1])  # past the end of B's clip: unknown


def test_resampling_leaves_lost_faces_and_the_end_of_bs_audio_unknown():
    curve = MouthCurve(np.array([0, 1, 2, 5, 6, 7, 8, 9]), np.arange(8.0))  # face lost on frames 3 and 4
    values = _on_clock(curve, fps=10.0, frames=10, target_fps=10.0, end_s=0.85)
    expected = [0, 1, 2, np.nan, np.nan, 3, 4, 5, 6, np.nan]  # t = 0.9 s is past B's audio
    np.testing.assert_allclose(values, expected, atol=1e-9)  # NaN where expected is NaN
    assert np.isnan(_on_clock(MouthCurve(np.zeros(0, np.int64), np.zeros(0)), 25.0, 4, 25.0)).all()


# --- B's audio fitted to A's picture ------------------------------------------------------------


def test_dub_audio_is_padded_with_silence_or_cut_to_exactly_as_picture():
    picture_a = Picture(fps=25.0, frames=50)  # 2 s: 96 000 samples
    short_b = np.linspace(-0.5, 0.5, AUDIO_RATE, dtype=np.float32)  # 1 s
    padded = fitted_dub_audio(short_b, picture_a)
    assert len(padded) == 96_000
    np.testing.assert_array_equal(padded[:AUDIO_RATE], short_b)
    assert not padded[AUDIO_RATE:].any()

    long_b = np.linspace(-0.5, 0.5, 3 * AUDIO_RATE, dtype=np.float32)  # 3 s
    np.testing.assert_array_equal(fitted_dub_audio(long_b, picture_a), long_b[:96_000])

    delay = int(SHIFT_S * AUDIO_RATE)
    shifted = fitted_dub_audio(long_b, picture_a, delay_s=SHIFT_S)
    assert len(shifted) == 96_000 and not shifted[:delay].any()
    np.testing.assert_array_equal(shifted[delay:], long_b[: 96_000 - delay])
    # Shifting a short B keeps all of it: 0.5 s of silence, B's second, then silence to 2 s.
    shifted_short = fitted_dub_audio(short_b, picture_a, delay_s=SHIFT_S)
    np.testing.assert_array_equal(shifted_short[delay : delay + AUDIO_RATE], short_b)
    assert not shifted_short[:delay].any() and not shifted_short[delay + AUDIO_RATE :].any()

    # A 29.97 fps picture: the length is the picture's duration rounded to a sample.
    assert len(fitted_dub_audio(short_b, Picture(30000 / 1001, 112))) == round(112 * 1001 / 30000 * AUDIO_RATE)


def test_catalogue_pairs_clips_of_any_lengths(tmp_path):
    """Three clips (1.2 s at 25 fps, 4 s at 25 fps, 2 s at 30 fps: more than the flow's 2 s
    tolerance apart): every dub WAV lasts exactly as long as its video A, and holds B's audio."""
    tone = np.sin(2 * np.pi * 220 * np.arange(5 * 16_000) / 16_000).astype(np.float32) * 0.3
    frame = np.zeros((32, 32, 3), np.uint8)
    lengths = {"short": (25, 30), "long": (25, 100), "ntsc": (30, 60)}  # fps, frames
    clips = []
    for name, (fps, frames) in lengths.items():
        clips.append(tmp_path / f"{name}.mp4")
        write_clip(clips[-1], [frame] * frames, fps, Speech(tone[: frames * 16_000 // fps], 16_000, ()))
    catalogue, pairs = build_catalogue(clips, tmp_path / "inputs", "en")

    assert len(pairs) == 6 and ("short", "long") in pairs and ("long", "short") in pairs
    rows = {row["title_id"]: row for row in yaml.safe_load(catalogue.read_text())}
    assert set(rows) == {f"{a}--{b}{s}" for a, b in pairs for s in ("", "--shifted")}
    for a, b in pairs:
        fps, frames = lengths[a]
        audio_b = read_audio(str(tmp_path / f"{b}.mp4"), AUDIO_RATE)
        for suffix, delay in (("", 0), ("--shifted", int(SHIFT_S * AUDIO_RATE))):
            row = rows[f"{a}--{b}{suffix}"]
            assert row["video"] == str((tmp_path / f"{a}.mp4").resolve()) and row["language"] == "en"
            samples = _read_wav(Path(row["dub_audio"]))
            assert len(samples) == frames * AUDIO_RATE // fps  # exactly A's picture
            held = min(len(samples) - delay, len(audio_b))
            assert not samples[:delay].any()
            np.testing.assert_allclose(samples[delay : delay + held], audio_b[:held], atol=1 / 32768)
            assert not samples[delay + held :].any()  # silence after B's audio


# --- PSNR outside the lower face ---------------------------------------------------------------


def _write_lossless(path: Path, frames: list[np.ndarray]) -> None:
    """RGB frames in a lossless FFV1 file, so decoded pixels are exactly the ones written."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def test_psnr_counts_only_pixels_outside_the_mask(tmp_path):
    """Output = source + 4 everywhere, + 100 inside a rectangle. Masked, frame 0 shows only the +4
    (36.09 dB); frame 1 has no mask, so its rectangle counts too."""
    height, width, (x0, y0, x1, y1) = 48, 64, (10, 20, 29, 35)
    rng = np.random.default_rng(3)
    source = [rng.integers(0, 140, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    output = []
    for frame in source:
        changed = frame + np.uint8(4)
        changed[y0 : y1 + 1, x0 : x1 + 1] += np.uint8(100)  # a filled polygon includes its edge pixels
        output.append(changed)
    _write_lossless(tmp_path / "source.mkv", source)
    _write_lossless(tmp_path / "output.mkv", output)
    rectangle = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)
    inside = (x1 - x0 + 1) * (y1 - y0 + 1)
    outside = height * width - inside

    both_masked = psnr_outside_lower_face(str(tmp_path / "source.mkv"), str(tmp_path / "output.mkv"),
                                          {0: rectangle, 1: rectangle})
    assert both_masked == pytest.approx(10 * math.log10(255**2 / 16), abs=1e-9)  # 36.09 dB

    mse = (16 * outside + 16 * outside + 104**2 * inside) / (2 * outside + inside)
    first_masked = psnr_outside_lower_face(str(tmp_path / "source.mkv"), str(tmp_path / "output.mkv"), {0: rectangle})
    assert first_masked == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert psnr_outside_lower_face(str(tmp_path / "source.mkv"), str(tmp_path / "source.mkv"), {}) == float("inf")


# --- a clip's own audio/picture offset ---------------------------------------------------------

TRAIN_CLIP = Path(os.environ.get("DUBLINE_SAMPLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
                  ) / "video" / "train" / "vox_man_threequarter.mp4"


@pytest.mark.skipif(not TRAIN_CLIP.exists(), reason="needs ../shared/data")
def test_footage_offset_follows_a_picture_moved_against_its_sound():
    """Real speech and its filmed mouth: moving the picture 3 frames earlier moves the measured offset
    by exactly 3 (the offset is the clip's, whatever MouthNet's own timing)."""
    landmarker = FaceLandmarker()
    curve = measure_mouths(landmarker, str(TRAIN_CLIP))[0]
    landmarker.close()
    clock = picture(str(TRAIN_CLIP))
    speech = SpeechToMouth(WEIGHTS, BASE_PACKAGED)
    as_filmed = footage_offset(speech, TRAIN_CLIP, curve, clock)
    kept = curve.frame_index >= 3
    early = MouthCurve(curve.frame_index[kept] - 3, curve.jaw_open[kept])  # frame t now shows what was filmed at t + 3
    # A VoxCeleb clip in sync within the lip-sync tolerance; the dub's lead is added back: the same
    # +1 as benchmarks/mouth_lead.py measures with an un-led prediction.
    assert as_filmed == 1
    assert footage_offset(speech, TRAIN_CLIP, early, clock) == as_filmed + 3


# --- the summary and its tables -----------------------------------------------------------------


def _pair(a: str, b: str, r_b: float, lag: int, r_a: float, psnr: float, passthrough: float,
          shifted: float, self_check: float = 0.9, offset: int = 0) -> PairResult:
    return PairResult(a=a, b=b, r_b=r_b, lag=lag, footage_offset_b=offset, lag_vs_footage=lag - offset,
                      r_b_at_footage_offset=r_b + 0.05, frames_b=100, r_a=r_a, psnr_outside_db=psnr, self_check_r=self_check,
                      control_passthrough_r_b=passthrough, control_shifted_r_b=shifted,
                      beats_controls=bool(r_b > passthrough and r_b > shifted))


def test_summary_means_per_video_a_and_strict_json(tmp_path):
    results = [
        _pair("x", "y", 0.6, 1, 0.1, 41.0, 0.0, 0.2, offset=2),
        _pair("x", "z", float("nan"), 0, 0.3, 43.0, 0.1, 0.1),  # an undefined r_B is left out of the mean
        _pair("y", "x", 0.2, -2, 0.5, 39.0, 0.3, float("nan"), self_check=0.7),  # fails the passthrough control
    ]
    summary = summarize(results)
    assert summary["per_video_a"]["x"]["r_b"] == pytest.approx(0.6)
    assert summary["per_video_a"]["x"]["r_a"] == pytest.approx(0.2)
    assert summary["per_video_a"]["x"]["abs_lag"] == pytest.approx(1.0)  # the pair without r_B has no lag
    assert (summary["per_video_a"]["x"]["pairs"], summary["per_video_a"]["x"]["beats_controls"]) == (2, 1)
    assert summary["per_video_a"]["y"]["r_b"] == pytest.approx(0.2)
    assert summary["mean"]["r_b"] == pytest.approx(0.4) and summary["mean"]["abs_lag"] == pytest.approx(1.5)
    assert summary["mean"]["control_shifted_r_b"] == pytest.approx(0.15)
    assert summary["pairs_beating_controls"] == 1 and summary["beats_controls"] is False
    assert summary["mean"]["min_self_check_r"] == pytest.approx(0.7)
    assert summary["mean"]["abs_lag_vs_footage"] == pytest.approx(1.5)  # |1 - 2| and |-2 - 0|
    assert summary["mean"]["r_b_at_footage_offset"] == pytest.approx(0.45)
    assert summary["per_video_a"]["x"]["min_self_check_r"] == pytest.approx(0.9)

    table = format_table(summary)
    assert "| x | y | 0.60 | 1 | +2 | -1 | 0.65 | 100 | 0.10 | 41.0 | 0.90 | 0.00 | 0.20 |" in table
    assert "0.83 (min 0.70)" in table
    assert "| x | z | – | 0 | +0 | +0 | – |" in table  # NaN shows as a dash
    assert "| x | 0.60 | 0.20 | 1.0 | 42.0 | 0.90 | 1 of 2 |" in table
    assert "in 1 of 3 pairs" in table

    write_results(summary, tmp_path / "lipsync.json")
    written = json.loads((tmp_path / "lipsync.json").read_text())
    assert written["pairs"][1]["r_b"] is None and written["per_video_a"]["y"]["control_shifted_r_b"] is None


# --- the command end to end ---------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("prefect_harness")
def test_lipsync_command_dubs_clips_of_different_lengths(tmp_path):
    """A 1 s clip and a 3.2 s one (beyond the flow's 2 s audio tolerance) dub each other; r_B is
    taken only over the frames where B's mouth and audio exist. Both clips are still portraits, so
    their filmed mouths do not move (their r are noise): this checks lengths and frames, not lip sync."""
    clips = tmp_path / "clips"
    clips.mkdir()
    a_frames = write_portrait_clip(clips / "a.mp4", [astronaut()], 1.0, size=256,
                                   audio=synthesize("Hello.", voice="en"))
    b_frames = write_portrait_clip(clips / "b.mp4", [grace_hopper()], 3.2, size=256,
                                   audio=synthesize("Maps and boats, and a line of ships.", voice="en"))
    result = CliRunner().invoke(main, ["bench", "lipsync", "--clips", str(clips), "--out", str(tmp_path / "bench"),
                                       "--executor", "local", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "bench" / "lipsync.json").read_text())
    pairs = {(p["a"], p["b"]): p for p in summary["pairs"]}
    assert list(pairs) == [("a", "b"), ("b", "a")]
    assert a_frames - 2 <= pairs[("a", "b")]["frames_b"] <= a_frames  # all of A's frames lie within B's clip
    assert a_frames - 2 <= pairs[("b", "a")]["frames_b"] <= a_frames < b_frames  # only A's first second of B's picture
    for pair in summary["pairs"]:
        assert pair["psnr_outside_db"] > 35  # only the encoder touches pixels outside the lower face (CRF 18)
    assert set(summary["per_video_a"]) == {"a", "b"}
    assert "| a | b |" in result.output and "| b | a |" in result.output
    state = json.loads((tmp_path / "bench" / "run" / "run.json").read_text())
    assert set(state["titles"]) == {"a--b", "a--b--shifted", "b--a", "b--a--shifted"}
    for (a, b), pair in pairs.items():  # each pair carries its dub's own report figure
        own = state["titles"][f"{a}--{b}"]["languages"]["en"]["lipsync_r"]
        assert (pair["self_check_r"] is None) if own is None else pair["self_check_r"] == pytest.approx(own)


def test_lipsync_command_needs_two_clips(tmp_path):
    result = CliRunner().invoke(main, ["bench", "lipsync", "--clips", str(tmp_path)])
    assert result.exit_code != 0 and "at least two video clips, found 0" in result.output
