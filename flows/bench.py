"""Lip-sync benchmark: cross-dub real talking-head clips and measure whose mouth the output follows.

For every ordered pair (A, B) of clips, video A is dubbed with the audio of clip B through the
real catalogue flow. The mouth opening measured on the output (face mesh) should follow B's own
recorded mouth (``r_B``, resampled to A's frame clock, best lag within ±2 frames) and no longer
A's (``r_A``). Two controls run in the same flow: *passthrough* (A's source unchanged) and the dub
with B's audio delayed by 0.5 s; a working lip sync beats both on ``r_B``. ``psnr_outside_db``
compares the output with the source outside the lower face (only the encoder's loss should show).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from schemas.catalogue_folder import VIDEO_EXTENSIONS
from schemas.catalogue import safe_title_id
from stages.audio.espeak import Speech, write_wav
from stages.faces.landmarks import FaceLandmarker
from stages.media import open_media, read_audio, stream_rate
from stages.report.mouth import MouthCurve, best_lag, measure_mouths
from stages.report.stage import plain_json

SHIFT_S = 0.5
MAX_LAG = 2
_AUDIO_RATE = 48_000


@dataclass
class PairResult:
    """One cross-dub: video ``a`` with the audio of ``b``."""

    a: str
    b: str
    r_b: float  # output mouth vs B's recorded mouth
    lag: int  # frames at the r_B peak (> 0: output late)
    r_a: float  # output mouth vs A's original mouth
    psnr_outside_db: float  # output vs source outside the lower face
    control_passthrough_r_b: float  # A's source mouth vs B's
    control_shifted_r_b: float  # dub with B's audio 0.5 s late, vs B's mouth
    beats_controls: bool


def _safe(name: str) -> str:
    return safe_title_id(name, max_length=56)  # two of them and "--shifted" stay within 128


def _write_wav(samples: np.ndarray, path: Path) -> None:
    write_wav(Speech(samples, _AUDIO_RATE, ()), str(path))


def _fps(url: str) -> float:
    with open_media(url) as container:
        return float(stream_rate(container.streams.video[0]))


def build_catalogue(clips: list[Path], work: Path, language: str) -> tuple[Path, list[tuple[str, str]]]:
    """The benchmark's catalogue: per ordered pair (A, B) a dub of A with B's audio, and with B's
    audio 0.5 s late. Returns the catalogue path and the pairs (by clip stem)."""
    work.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        audio = read_audio(str(clip), _AUDIO_RATE)
        _write_wav(audio, work / f"{_safe(clip.stem)}.wav")
        delay = int(SHIFT_S * _AUDIO_RATE)
        _write_wav(np.concatenate([np.zeros(delay, np.float32), audio[: len(audio) - delay]]),
                   work / f"{_safe(clip.stem)}.shifted.wav")
    rows, pairs = [], []
    for a, b in itertools.permutations(clips, 2):
        pairs.append((_safe(a.stem), _safe(b.stem)))
        for suffix, audio in (("", f"{_safe(b.stem)}.wav"), ("--shifted", f"{_safe(b.stem)}.shifted.wav")):
            rows.append({"title_id": f"{_safe(a.stem)}--{_safe(b.stem)}{suffix}", "video": str(a.resolve()),
                         "language": language, "dub_audio": str((work / audio).resolve())})
    catalogue = work / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump(rows))
    return catalogue, pairs


def _on_clock(curve: MouthCurve, fps: float, frames: int, target_fps: float) -> np.ndarray:
    """``curve`` (at ``fps``) resampled to ``frames`` frames at ``target_fps``; NaN outside it."""
    if len(curve.frame_index) < 2:
        return np.full(frames, np.nan)
    t = np.arange(frames) / target_fps
    source_t = curve.frame_index / fps
    values = np.interp(t, source_t, curve.jaw_open)
    values[(t < source_t[0]) | (t > source_t[-1])] = np.nan
    return values


def _dense(curve: MouthCurve, frames: int) -> np.ndarray:
    values = np.full(frames, np.nan)
    values[curve.frame_index[curve.frame_index < frames]] = curve.jaw_open[curve.frame_index < frames]
    return values


def psnr_outside_lower_face(source_url: str, output_url: str, hulls: dict[int, np.ndarray]) -> float:
    """PSNR (dB) of the output against the source over every pixel outside the lower-face polygon."""
    import cv2

    squared, count = 0.0, 0
    with open_media(source_url) as src, open_media(output_url) as out:
        for index, (a, b) in enumerate(zip(src.decode(video=0), out.decode(video=0))):
            x, y = a.to_ndarray(format="rgb24"), b.to_ndarray(format="rgb24")
            y = y[: x.shape[0], : x.shape[1]]  # the encoder pads odd sizes by one pixel
            keep = np.ones(x.shape[:2], np.uint8)
            if index in hulls:
                cv2.fillPoly(keep, [hulls[index]], 0)
            diff = (x.astype(np.float64) - y)[keep.astype(bool)]
            squared += float((diff**2).sum())
            count += diff.size
    mse = squared / max(count, 1)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def measure(clips: list[Path], pairs: list[tuple[str, str]], outputs: dict[str, str]) -> list[PairResult]:
    """Measure every pair; ``outputs`` maps title ids of the benchmark catalogue to dubbed videos."""
    landmarker = FaceLandmarker()
    by_stem = {_safe(c.stem): c for c in clips}
    sources = {}
    for stem, clip in by_stem.items():
        with open_media(str(clip)) as container:
            frames = container.streams.video[0].frames or sum(1 for _ in container.decode(video=0))
        sources[stem] = (measure_mouths(landmarker, str(clip), keep_hulls=True)[0], _fps(str(clip)), frames)
    results = []
    for a, b in pairs:
        curve_a, fps_a, frames_a = sources[a]
        curve_b, fps_b, _ = sources[b]
        b_on_a = _on_clock(curve_b, fps_b, frames_a, fps_a)
        dubbed = _dense(measure_mouths(landmarker, outputs[f"{a}--{b}"])[0], frames_a)
        shifted = _dense(measure_mouths(landmarker, outputs[f"{a}--{b}--shifted"])[0], frames_a)
        r_b, lag = best_lag(dubbed, b_on_a, MAX_LAG)
        r_a, _ = best_lag(dubbed, _dense(curve_a, frames_a), MAX_LAG)
        passthrough, _ = best_lag(_dense(curve_a, frames_a), b_on_a, MAX_LAG)
        shifted_r, _ = best_lag(shifted, b_on_a, MAX_LAG)
        results.append(PairResult(
            a=a, b=b, r_b=r_b, lag=lag, r_a=r_a,
            psnr_outside_db=psnr_outside_lower_face(str(by_stem[a]), outputs[f"{a}--{b}"], curve_a.lower_face),
            control_passthrough_r_b=passthrough, control_shifted_r_b=shifted_r,
            beats_controls=bool(r_b > passthrough and r_b > shifted_r),
        ))
    landmarker.close()
    return results


def summarize(results: list[PairResult]) -> dict[str, Any]:
    numeric = ("r_b", "r_a", "psnr_outside_db", "control_passthrough_r_b", "control_shifted_r_b")
    mean = {k: float(np.nanmean([getattr(r, k) for r in results])) for k in numeric}
    return {"pairs": [asdict(r) for r in results], "mean": mean,
            "beats_controls": all(r.beats_controls for r in results), "shift_s": SHIFT_S, "max_lag": MAX_LAG}


def format_table(summary: dict[str, Any]) -> str:
    header = f"{'video A':<22} {'audio B':<22} {'r_B':>6} {'lag':>4} {'r_A':>6} {'PSNR out':>9} {'pass r_B':>9} {'shift r_B':>9}"
    lines = [header, "-" * len(header)]
    for p in summary["pairs"]:
        lines.append(f"{p['a']:<22} {p['b']:<22} {p['r_b']:6.2f} {p['lag']:4d} {p['r_a']:6.2f} "
                     f"{p['psnr_outside_db']:8.1f}  {p['control_passthrough_r_b']:9.2f} {p['control_shifted_r_b']:9.2f}")
    m = summary["mean"]
    lines.append(f"{'mean':<45} {m['r_b']:6.2f} {'':>4} {m['r_a']:6.2f} {m['psnr_outside_db']:8.1f}  "
                 f"{m['control_passthrough_r_b']:9.2f} {m['control_shifted_r_b']:9.2f}")
    lines.append("output beats both controls on r_B: " + ("yes" if summary["beats_controls"] else "NO"))
    return "\n".join(lines)


def list_clips(folder: Path) -> list[Path]:
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
