"""Lip-sync benchmark: cross-dub real talking-head clips and measure whose mouth the output follows.

For every ordered pair (A, B) of clips, video A is dubbed with the audio of clip B through the
real catalogue flow. B's audio is fitted to A's picture first (cut when longer, padded with
silence when shorter), so clips of any lengths pair up. The mouth opening measured on the output
(face mesh) should follow B's own recorded mouth (``r_B``, B's curve resampled to A's frame
clock, best lag within ±2 frames) and no longer A's (``r_A``). ``r_B`` and its controls are
computed only over A's frames where B's recorded mouth and B's audio both exist; ``r_A`` over
all of A's frames. Two controls run in the same flow: *passthrough* (A's source unchanged) and
the dub with B's audio delayed by 0.5 s; a working lip sync beats both on ``r_B``.
Footage is often a few frames out of sync, and a dub that follows B's sound then shows B's own
offset as ``lag`` against B's filmed mouth: ``footage_offset_b`` is that offset, measured on B
alone (the lag at which the mouth MouthNet predicts from B's own audio follows B's filmed mouth
best, within ±0.3 s), and ``lag_vs_footage`` the lag left after it (what the dub itself adds:
about −``MOUTH_LEAD_S`` by design, as a dub shows each mouth that long before its sound);
``r_b_at_footage_offset`` is ``r_B`` with its ±2 frames centred on that offset.
``psnr_outside_db`` compares the output with the source outside the lower face (only the
encoder's loss should show). ``self_check_r`` is the dub's own report figure (driven jaw vs the
mouth measured on the output), carried over from the run.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dubline.schemas.catalogue import safe_title_id
from dubline.schemas.catalogue_folder import VIDEO_EXTENSIONS
from dubline.stages.coeffs.model import WEIGHTS, SpeechToMouth
from dubline.stages.coeffs.mouth import MOUTH_LEAD_S
from dubline.stages.coeffs.speakers import MAX_AV_OFFSET_S
from dubline.stages.coeffs.stage import own_audio_mouth
from dubline.stages.face_model.landmarks import FaceLandmarker
from dubline.stages.media import audio_duration, describe, read_audio, rgb_frames
from dubline.stages.lipsync.mouth import MouthCurve, best_lag, measure_mouths
from dubline.stages.report.stage import plain_json
from dubline.stages.speech.espeak import Speech, write_wav
from dubline.stages.speech.fit import fit_samples
from dubline.stages.speech.whisper_models import BASE_PACKAGED

SHIFT_S = 0.5
MAX_LAG = 2
AUDIO_RATE = 48_000  # Hz of the benchmark's dub WAVs


@dataclass
class PairResult:
    """One cross-dub: video ``a`` with the audio of ``b``. Correlations are NaN when undefined."""

    a: str
    b: str
    r_b: float  # output mouth vs B's recorded mouth, over the frames where B's mouth and audio exist
    lag: int  # frames at the r_B peak (> 0: output late)
    footage_offset_b: int  # frames (A's clock) by which B's filmed mouth leads B's own sound
    lag_vs_footage: int  # lag - footage_offset_b: the lag the dub adds to B's sound (its lead shows as < 0)
    r_b_at_footage_offset: float  # r_B best within ±2 frames of footage_offset_b
    frames_b: int  # A's frames where both the output mouth and B's recorded mouth are known (r_B's sample)
    r_a: float  # output mouth vs A's original mouth, over all of A's frames
    psnr_outside_db: float  # output vs source outside the lower face
    self_check_r: float  # the dub report's lip-sync self-check (driven jaw vs output mouth)
    control_passthrough_r_b: float  # A's source mouth vs B's
    control_shifted_r_b: float  # dub with B's audio 0.5 s late, vs B's mouth
    beats_controls: bool


@dataclass(frozen=True)
class Picture:
    """A clip's video clock: nominal frame rate and the number of frames (as the probe stage counts them)."""

    fps: float
    frames: int


def _safe(name: str) -> str:
    return safe_title_id(name, max_length=56)  # two of them and "--shifted" stay within 128


def _write_wav(samples: np.ndarray, path: Path) -> None:
    write_wav(Speech(samples, AUDIO_RATE, ()), str(path))


def picture(url: str) -> Picture:
    """Frame rate and frame count of ``url`` as shown: the frame clock every stage works on."""
    clock = describe(url).clock
    return Picture(float(clock.rate), clock.frame_count)


def fitted_dub_audio(audio_b: np.ndarray, picture_a: Picture, delay_s: float = 0.0) -> np.ndarray:
    """B's audio (mono, ``AUDIO_RATE``) delayed by ``delay_s`` and then cut or padded with silence
    at the end to exactly A's picture duration, so the flow accepts any pair of clip lengths."""
    delayed = np.concatenate([np.zeros(round(delay_s * AUDIO_RATE), np.float32), audio_b])
    return fit_samples(delayed, picture_a.frames, picture_a.fps, AUDIO_RATE)


def build_catalogue(clips: list[Path], work: Path, language: str) -> tuple[Path, list[tuple[str, str]]]:
    """The benchmark's catalogue: per ordered pair (A, B) a dub of A with B's audio, and with B's
    audio 0.5 s late, both fitted to A's picture (``work/A--B.wav``, ``work/A--B.shifted.wav``).
    Returns the catalogue path and the pairs (by safe clip name)."""
    work.mkdir(parents=True, exist_ok=True)
    pictures = {clip: picture(str(clip)) for clip in clips}
    audio = {clip: read_audio(str(clip), AUDIO_RATE) for clip in clips}
    rows, pairs = [], []
    for a, b in itertools.permutations(clips, 2):
        pair = f"{_safe(a.stem)}--{_safe(b.stem)}"
        pairs.append((_safe(a.stem), _safe(b.stem)))
        for suffix, delay_s in (("", 0.0), ("--shifted", SHIFT_S)):
            wav = work / f"{pair}{suffix.replace('--', '.')}.wav"
            _write_wav(fitted_dub_audio(audio[b], pictures[a], delay_s), wav)
            rows.append({"title_id": pair + suffix, "video": str(a.resolve()), "language": language,
                         "dub_audio": str(wav.resolve())})
    catalogue = work / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump(rows))
    return catalogue, pairs


def _on_clock(curve: MouthCurve, fps: float, frames: int, target_fps: float, end_s: float = np.inf) -> np.ndarray:
    """``curve`` (at ``fps``) linearly resampled to ``frames`` frames at ``target_fps``.

    NaN where it is not known: outside the curve, across frames where the face was not measured
    (both neighbouring source frames must exist), and from ``end_s`` seconds on (where B's audio ends).
    """
    t = np.arange(frames) / target_fps
    if len(curve.frame_index) == 0:
        return np.full(frames, np.nan)
    position = t * fps  # in source frames
    measured = np.isin(np.floor(position + 1e-6), curve.frame_index) & np.isin(np.ceil(position - 1e-6),
                                                                               curve.frame_index)
    values = np.interp(position, curve.frame_index, curve.jaw_open)
    values[~measured | (t >= end_s)] = np.nan
    return values


def _dense(curve: MouthCurve, frames: int) -> np.ndarray:
    """``curve`` on frames 0 … ``frames`` − 1 of its own clip, NaN where the face was not measured."""
    values = np.full(frames, np.nan)
    inside = curve.frame_index < frames
    values[curve.frame_index[inside]] = curve.jaw_open[inside]
    return values


def psnr_outside_lower_face(source_url: str, output_url: str, hulls: dict[int, np.ndarray]) -> float:
    """PSNR (dB) of the output against the source over every pixel outside the lower-face polygon
    (``hulls``: frame -> N×2 polygon in pixels; frames without one are compared whole)."""
    import cv2

    squared, count = 0.0, 0
    # Both as shown (upright, on their clocks) in the source's own code values ("rgb" view).
    shown = zip(rgb_frames(describe(source_url), "rgb"), rgb_frames(describe(output_url), "rgb"))
    for (index, x), (_, y) in shown:
        y = y[: x.shape[0], : x.shape[1]]  # the encoder pads odd sizes by one pixel
        keep = np.ones(x.shape[:2], np.uint8)
        if index in hulls:
            cv2.fillPoly(keep, [hulls[index]], 0)
        diff = (x.astype(np.float64) - y)[keep.astype(bool)]
        squared += float((diff**2).sum())
        count += diff.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def footage_offset(speech: SpeechToMouth, clip: Path, curve: MouthCurve, clock: Picture) -> int:
    """Frames (of ``clip``'s clock, within about ±``MAX_AV_OFFSET_S``) by which the clip's filmed
    mouth ``curve`` leads its own sound (> 0: the picture is early): where the mouth ``speech``
    predicts from the clip's audio, at rest outside its voice activity, follows the filmed one best.
    That mouth is made ``MOUTH_LEAD_S`` early, as in a dub; the lead is added back."""
    mouth, heard = own_audio_mouth(speech, str(clip), clock.fps, clock.frames)
    _, lag = best_lag(mouth[:, 0] * heard, _dense(curve, clock.frames), round(MAX_AV_OFFSET_S * clock.fps))
    return lag + round(MOUTH_LEAD_S * clock.fps)


def measure(clips: list[Path], pairs: list[tuple[str, str]], outputs: dict[str, str],
            self_checks: dict[str, float | None]) -> list[PairResult]:
    """Measure every pair; ``outputs`` maps title ids of the benchmark catalogue to dubbed videos,
    ``self_checks`` to their reports' lip-sync self-check r (None where it measured nothing)."""
    landmarker = FaceLandmarker()
    by_name = {_safe(c.stem): c for c in clips}
    speech = SpeechToMouth(WEIGHTS, BASE_PACKAGED)
    sources = {}  # name -> (mouth curve with lower-face hulls, picture, audio seconds, footage offset s)
    for name, clip in by_name.items():
        curve, clock = measure_mouths(landmarker, str(clip), keep_hulls=True)[0], picture(str(clip))
        sources[name] = (curve, clock, audio_duration(str(clip)), footage_offset(speech, clip, curve, clock) / clock.fps)
    results = []
    for a, b in pairs:
        curve_a, picture_a, _, _ = sources[a]
        curve_b, picture_b, audio_b_s, offset_b_s = sources[b]
        offset_b = round(offset_b_s * picture_a.fps)
        b_on_a = _on_clock(curve_b, picture_b.fps, picture_a.frames, picture_a.fps, end_s=audio_b_s)
        a_filmed = _dense(curve_a, picture_a.frames)
        dubbed = _dense(measure_mouths(landmarker, outputs[f"{a}--{b}"])[0], picture_a.frames)
        shifted = _dense(measure_mouths(landmarker, outputs[f"{a}--{b}--shifted"])[0], picture_a.frames)
        r_b, lag = best_lag(dubbed, b_on_a, MAX_LAG)
        r_b_at_offset, _ = best_lag(dubbed, b_on_a, MAX_LAG, centre=offset_b)
        r_a, _ = best_lag(dubbed, a_filmed, MAX_LAG)
        passthrough, _ = best_lag(a_filmed, b_on_a, MAX_LAG)
        shifted_r, _ = best_lag(shifted, b_on_a, MAX_LAG)
        results.append(PairResult(
            a=a, b=b, r_b=r_b, lag=lag, footage_offset_b=offset_b, lag_vs_footage=lag - offset_b,
            r_b_at_footage_offset=r_b_at_offset, frames_b=int((np.isfinite(dubbed) & np.isfinite(b_on_a)).sum()), r_a=r_a,
            psnr_outside_db=psnr_outside_lower_face(str(by_name[a]), outputs[f"{a}--{b}"], curve_a.lower_face),
            self_check_r=float("nan") if self_checks.get(f"{a}--{b}") is None else float(self_checks[f"{a}--{b}"]),
            control_passthrough_r_b=passthrough, control_shifted_r_b=shifted_r,
            # An undefined r (NaN) never counts as beating a control.
            beats_controls=bool(r_b > passthrough and r_b > shifted_r),
        ))
    landmarker.close()
    return results


_MEANS = ("r_b", "r_b_at_footage_offset", "r_a", "psnr_outside_db", "self_check_r", "control_passthrough_r_b", "control_shifted_r_b")


def _means(results: list[PairResult]) -> dict[str, float]:
    """Means over ``results`` of the figures in ``_MEANS`` and of |lag| (frames), each over the
    pairs where it is defined (NaN when it is defined for none)."""
    means = {}
    for key in _MEANS:
        values = np.array([getattr(r, key) for r in results], dtype=np.float64)
        means[key] = float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")
    lags = [abs(r.lag) for r in results if np.isfinite(r.r_b)]  # no r_B, no lag
    means["abs_lag"] = float(np.mean(lags)) if lags else float("nan")
    after = [abs(r.lag_vs_footage) for r in results if np.isfinite(r.r_b)]
    means["abs_lag_vs_footage"] = float(np.mean(after)) if after else float("nan")
    checks = np.array([r.self_check_r for r in results], dtype=np.float64)
    means["min_self_check_r"] = float(np.nanmin(checks)) if np.isfinite(checks).any() else float("nan")
    return means


def summarize(results: list[PairResult]) -> dict[str, Any]:
    """Per pair, overall means, per video A means (with how many of its pairs beat both controls)."""
    by_a: dict[str, list[PairResult]] = {}
    for r in results:
        by_a.setdefault(r.a, []).append(r)
    per_video_a = {a: {**_means(rs), "pairs": len(rs), "beats_controls": sum(r.beats_controls for r in rs)}
                   for a, rs in by_a.items()}
    return {"pairs": [asdict(r) for r in results], "mean": _means(results), "per_video_a": per_video_a,
            "beats_controls": all(r.beats_controls for r in results),
            "pairs_beating_controls": sum(r.beats_controls for r in results),
            "shift_s": SHIFT_S, "max_lag": MAX_LAG}


def _cell(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None and np.isfinite(value) else "–"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_table(summary: dict[str, Any]) -> str:
    """The results as two Markdown tables (per pair with the mean; per video A), ready for the README."""
    pair_rows = [[p["a"], p["b"], _cell(p["r_b"]), str(p["lag"]), f"{p['footage_offset_b']:+d}", f"{p['lag_vs_footage']:+d}",
                  _cell(p["r_b_at_footage_offset"]), str(p["frames_b"]), _cell(p["r_a"]),
                  _cell(p["psnr_outside_db"], 1), _cell(p["self_check_r"]), _cell(p["control_passthrough_r_b"]),
                  _cell(p["control_shifted_r_b"])] for p in summary["pairs"]]
    m = summary["mean"]
    pair_rows.append(["**mean**", "", f"**{_cell(m['r_b'])}**", f"{_cell(m['abs_lag'], 1)} (abs)", "",
                      f"{_cell(m['abs_lag_vs_footage'], 1)} (abs)", _cell(m["r_b_at_footage_offset"]), "",
                      _cell(m["r_a"]), _cell(m["psnr_outside_db"], 1),
                      f"{_cell(m['self_check_r'])} (min {_cell(m['min_self_check_r'])})", _cell(m["control_passthrough_r_b"]),
                      _cell(m["control_shifted_r_b"])])
    lines = _markdown(["video A", "audio B", "r_B", "lag", "B's footage offset", "lag after it", "r_B at it", "frames",
                       "r_A", "PSNR outside lower face (dB)", "self-check r", "passthrough r_B",
                       f"B's audio +{SHIFT_S:g} s r_B"], pair_rows)
    video_rows = [[a, _cell(v["r_b"]), _cell(v["r_a"]), _cell(v["abs_lag"], 1), _cell(v["psnr_outside_db"], 1),
                   _cell(v["min_self_check_r"]), f"{v['beats_controls']} of {v['pairs']}"]
                  for a, v in summary["per_video_a"].items()]
    lines += [""] + _markdown(["video A", "mean r_B", "mean r_A", "mean abs lag", "PSNR outside (dB)",
                               "lowest self-check r", "pairs beating both controls"], video_rows)
    lines.append(f"\noutput beats both controls on r_B in {summary['pairs_beating_controls']} of "
                 f"{len(summary['pairs'])} pairs")
    return "\n".join(lines)


def list_clips(folder: Path) -> list[Path]:
    """The folder's video clips (at least two, names distinct as title ids), sorted by name."""
    clips = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in VIDEO_EXTENSIONS)
    if len(clips) < 2:
        raise ValueError(f"{folder}: the lip-sync benchmark needs at least two video clips, found {len(clips)}")
    names = [_safe(c.stem) for c in clips]
    clashing = sorted({c.name for c, n in zip(clips, names) if names.count(n) > 1})
    if clashing:
        raise ValueError(f"{folder}: clips whose names differ only by extension or punctuation: {', '.join(clashing)}")
    return clips


def write_results(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(plain_json(summary), indent=1, allow_nan=False))
