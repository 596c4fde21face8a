"""Demo inputs built from what installed packages ship, and the sample-data catalogue.

The generated demo shows both jobs of dubline, in two steps:

1. **avatar**: a talking video made from one photograph (matplotlib's Grace Hopper portrait) and
   English espeak-ng speech, with head motion and blinks generated from the audio;
2. **dub** (the main job): that talking video, with its English soundtrack, dubbed into French:
   the same picture, the speaker's mouth re-driven by French espeak-ng speech.

Tests reuse ``write_portrait_clip`` to make their own clips.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import yaml

from dubline.stages.composite.encode import x264_params
from dubline.stages.speech.espeak import Speech, synthesize, write_wav

DEMO_SIZE = 512
#: The demo's speech: (espeak voice, text) per language. The avatar speaks English; its video is
#: then dubbed into French. Both lines last about as long (padded to the same length below).
DEMO_SPEECH = {
    "en": ("en", "Hello! This video was made from one photo."),
    "fr": ("fr", "Bonjour ! Maintenant, je parle français."),
}
#: Title ids of the demo: the avatar (portrait + English speech) and the video dubbed into French.
DEMO_AVATAR, DEMO_VIDEO = "portrait", "video"
#: The portrait's side in pixels: big enough for a clear face, small enough for a fast demo.
DEMO_PORTRAIT_SIZE = 384
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
        video.options = {"crf": "20", "preset": "veryfast", **x264_params()}
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


def _padded(speech: Speech, seconds: float) -> Speech:
    """``speech`` with trailing silence up to ``seconds``."""
    total = max(len(speech.samples), round(seconds * speech.sample_rate))
    samples = np.zeros(total, dtype=np.float32)
    samples[: len(speech.samples)] = speech.samples
    return Speech(samples, speech.sample_rate, speech.phonemes)


def build_demo_catalogue(out_dir: Path) -> Path:
    """Generate the demo's inputs under ``out_dir``/inputs — the portrait, the English speech of
    the avatar and the French dub of its video — and return the avatar's catalogue (step 1; step 2
    is ``build_dub_catalogue`` over the avatar's output video)."""
    from PIL import Image

    inputs = out_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    speech = {lang: synthesize(text, voice=voice) for lang, (voice, text) in DEMO_SPEECH.items()}
    seconds = max(s.duration_s for s in speech.values()) + 0.3  # the dub must last as long as the video
    for lang, name in (("en", "speech.en.wav"), ("fr", "dub.fr.wav")):
        write_wav(_padded(speech[lang], seconds), str(inputs / name))
    Image.fromarray(square(grace_hopper(), DEMO_PORTRAIT_SIZE)).save(inputs / "portrait.png")
    catalogue = inputs / "catalogue.yaml"
    catalogue.write_text(yaml.safe_dump([
        {"title_id": DEMO_AVATAR, "portrait": "portrait.png", "language": "en", "dub_audio": "speech.en.wav"},
    ], sort_keys=False))
    return catalogue


def build_dub_catalogue(out_dir: Path, video: str) -> Path:
    """Step 2 of the demo: the catalogue that dubs ``video`` (the avatar's English output) into
    French."""
    inputs = out_dir / "inputs"
    catalogue = inputs / "catalogue.dub.yaml"
    catalogue.write_text(yaml.safe_dump([
        {"title_id": DEMO_VIDEO, "video": video, "language": "fr", "dub_audio": str((inputs / "dub.fr.wav").resolve())},
    ], sort_keys=False))
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
