"""Demo inputs built from what installed packages ship, and the sample-data catalogue.

The generated title is a two-shot clip of real portraits (scikit-image's astronaut, matplotlib's
Grace Hopper) with a slow push-in, an English espeak-ng voice as its original audio, and espeak-ng
dubs in French and German. Tests reuse ``write_portrait_clip`` to make their own clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import yaml

from stages.audio.espeak import Speech, synthesize, write_wav

DEMO_SIZE = 512
DEMO_LINES = {
    "fr": ("fr", "Bonjour à tous. Cette vidéo parle maintenant français, avec la même image."),
    "de": ("de", "Guten Tag. Dieses Video spricht jetzt Deutsch, mit demselben Bild."),
}
#: Real clips of ../shared/data and dub tracks whose length is within the default tolerance.
SAMPLE_DUBS = {
    "talk_en_man_office": {"fr": "audio/fr_speech.wav", "zh": "audio/zh_news.wav"},
    "talk_en_man_map": {"en": "audio/speech_1.wav", "fr": "audio/fr_speech.wav"},
}


def astronaut() -> np.ndarray:
    """scikit-image's astronaut portrait, RGB uint8 512×512."""
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    """matplotlib's Grace Hopper portrait, RGB uint8 600×512."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size``."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)


def push_in(image: np.ndarray, frames: int, zoom: float = 0.08) -> list[np.ndarray]:
    """A slow zoom towards the centre over ``frames`` frames (so the picture is not static)."""
    h, w = image.shape[:2]
    out = []
    for i in range(frames):
        scale = 1.0 + zoom * i / max(1, frames - 1)
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
        out.append(cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return out


def write_clip(path: str | Path, frames: Sequence[np.ndarray], fps: int, audio: Speech | None = None) -> None:
    """Encode RGB frames (and optional mono speech, padded or cut to the picture) as H.264/AAC MP4."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        audio_stream = out.add_stream("aac", rate=audio.sample_rate, layout="mono") if audio else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio_stream is not None:
            total = round(len(frames) / fps * audio.sample_rate)
            samples = np.zeros(total, dtype=np.float32)
            samples[: min(total, len(audio.samples))] = audio.samples[:total]
            for start in range(0, total, 1024):
                chunk = samples[start : start + 1024][None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = audio.sample_rate, start
                frame.time_base = Fraction(1, audio.sample_rate)
                out.mux(audio_stream.encode(frame))
            out.mux(audio_stream.encode(None))


def write_portrait_clip(
    path: str | Path, portraits: Sequence[np.ndarray], seconds_per_shot: float, fps: int = 25,
    audio: Speech | None = None, size: int = DEMO_SIZE,
) -> int:
    """One shot per portrait (hard cuts between them), each a slow push-in. Returns the frame count."""
    per_shot = round(seconds_per_shot * fps)
    frames = [f for p in portraits for f in push_in(square(p, size), per_shot)]
    write_clip(path, frames, fps, audio)
    return len(frames)


def build_demo_catalogue(out_dir: Path) -> Path:
    """Generate the demo title and its dub tracks under ``out_dir``/inputs; returns the catalogue."""
    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    speech = {lang: synthesize(text, voice=voice) for lang, (voice, text) in DEMO_LINES.items()}
    # The picture lasts as long as the longest dub. It is silent: still portraits under a voice would
    # be listeners of an off-screen speaker (who speaks when), and nobody would be dubbed.
    seconds = max(speech[lang].duration_s for lang in ("fr", "de")) / 2 + 0.2
    write_portrait_clip(inputs / "portraits.mp4", [astronaut(), grace_hopper()], seconds)
    dubs = {}
    for lang in ("fr", "de"):
        write_wav(speech[lang], str(inputs / f"dub.{lang}.wav"))
        dubs[lang] = f"dub.{lang}.wav"
    catalogue = inputs / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([{"title_id": "portraits", "video": "portraits.mp4", "dubs": dubs}]))
    return catalogue


def build_sample_catalogue(sample_dir: Path, out_dir: Path) -> Path:
    """A catalogue over the real clips of ``sample_dir`` (../shared/data layout)."""
    rows = []
    for title_id, dubs in SAMPLE_DUBS.items():
        video = sample_dir / "video" / f"{title_id}.mp4"
        if video.exists():
            rows.append({"title_id": title_id, "video": str(video.resolve()),
                         "dubs": {lang: str((sample_dir / rel).resolve()) for lang, rel in dubs.items()}})
    if not rows:
        raise FileNotFoundError(f"{sample_dir} holds none of the sample clips ({', '.join(SAMPLE_DUBS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    catalogue = out_dir / "sample_catalogue.yaml"
    catalogue.write_text(yaml.safe_dump(rows))
    return catalogue
