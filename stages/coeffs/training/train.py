"""Train the audio -> mouth network and write its weights, metrics and model card.

    python -m stages.coeffs.training.train --out stages/coeffs/weights [--sample-data ../shared/data]

Data (all available offline): multilingual espeak-ng speech with phoneme timings (augmented;
one voice per language held out for validation), LibriVox clips with phone alignments from the
pocketsphinx 5.1.1 source package (one held out), and with ``--sample-data`` the mouth measured by
the faces stage on a real talking clip (talk_en_man_office; talk_en_man_map is held out).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stages.coeffs.model import MouthNet, normalise_features, save_weights
from stages.coeffs.training.corpus import (
    HELD_OUT_VOICES,
    Example,
    espeak_examples,
    librivox_examples,
)
from stages.coeffs.training.real_clips import clip_example
from stages.coeffs.visemes import MOUTH_COEFFS

LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "ru", "hi", "ja", "cmn")
TRAIN_CLIP, HELD_OUT_CLIP = "talk_en_man_office", "talk_en_man_map"
HELD_OUT_LIBRIVOX = "0930"
CROP = 96


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def batches(examples: list[Example], rng: np.random.Generator, size: int):
    """Endless random crops: (features B×CROP×81, targets B×CROP×4)."""
    inputs = [normalise_features(e.features) for e in examples]
    weights = np.array([len(e.targets) for e in examples], dtype=float)
    weights /= weights.sum()
    while True:
        xs, ys = [], []
        for i in rng.choice(len(examples), size=size, p=weights):
            x, y = inputs[i], examples[i].targets
            if len(x) < CROP:  # pad short examples with their own last (silent) frame
                x = np.pad(x, ((0, CROP - len(x)), (0, 0)), mode="edge")
                y = np.pad(y, ((0, CROP - len(y)), (0, 0)), mode="edge")
            start = rng.integers(0, len(x) - CROP + 1)
            xs.append(x[start : start + CROP])
            ys.append(y[start : start + CROP])
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def predict(model: MouthNet, example: Example) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(normalise_features(example.features))[None])[0].numpy()


def evaluate(model: MouthNet, examples: list[Example]) -> dict[str, float]:
    """jaw_open r against the target curve, bilabial closure and silence figures."""
    predictions = [predict(model, e) for e in examples]
    jaw = np.concatenate([p[:, 0] for p in predictions])
    target = np.concatenate([e.targets[:, 0] for e in examples])
    closed, bilabials = 0, 0
    for p, e in zip(predictions, examples):
        for frame in e.bilabial_frames:
            window = p[max(0, frame - 1) : frame + 2, 0]
            bilabials += 1
            closed += bool(len(window) and window.min() < 0.04)
    silent = np.concatenate([p[e.silent, 0] for p, e in zip(predictions, examples)])
    return {
        "jaw_open_r": round(pearson(jaw, target), 3),
        "bilabial_closed_within_1_frame": round(closed / max(1, bilabials), 3),
        "silence_mean_jaw_open": round(float(silent.mean()) if len(silent) else 0.0, 4),
        "frames": int(len(jaw)),
    }


def train(examples: list[Example], steps: int, seed: int, log_every: int = 250) -> MouthNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MouthNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    # Each coefficient weighs the same in the loss whatever its natural range, except jaw_open,
    # the one viewers read lip-sync from, which counts three times.
    scale = torch.from_numpy(np.concatenate([e.targets for e in examples]).std(axis=0) + 1e-3)
    scale = scale / torch.tensor([3.0 ** 0.5, 1.0, 1.0, 1.0])
    stream = batches(examples, rng, size=32)
    started = time.perf_counter()
    for step in range(steps):
        x, y = next(stream)
        loss = (((model(x) - y) / scale) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - started:6.0f} s", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-voice", type=int, default=12)
    parser.add_argument("--sample-data", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "dubline")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()

    train_set = espeak_examples(LANGUAGES, None, args.per_voice, args.seed, augment=True)  # held-out voices excluded
    validation = {
        lang: espeak_examples([lang], {lang: [voice]}, 4, args.seed + 1, augment=False)
        for lang, voice in HELD_OUT_VOICES.items()
        if lang in LANGUAGES
    }
    librivox = librivox_examples(args.cache)
    train_set += [e for e in librivox if not e.source.endswith(HELD_OUT_LIBRIVOX)] * 4  # few but real
    validation["librivox"] = [e for e in librivox if e.source.endswith(HELD_OUT_LIBRIVOX)]
    real_clips: dict[str, Example] = {}
    if args.sample_data is not None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in (TRAIN_CLIP, HELD_OUT_CLIP):
                clip = args.sample_data / "video" / f"{name}.mp4"
                if clip.exists():
                    real_clips[name] = clip_example(clip, Path(tmp) / name)
        if TRAIN_CLIP in real_clips:
            train_set += [real_clips[TRAIN_CLIP]] * 8
    minutes = sum(len(e.targets) / e.fps for e in train_set) / 60
    print(f"training on {len(train_set)} examples ({minutes:.1f} min of audio) in {time.perf_counter() - started:.0f} s")

    model = train(train_set, args.steps, args.seed)
    metrics = {name: evaluate(model, examples) for name, examples in validation.items() if examples}
    for name, example in real_clips.items():
        metrics[f"real:{name}{'' if name == HELD_OUT_CLIP else ' (trained on)'}"] = {
            "jaw_open_r": round(pearson(predict(model, example)[:, 0], example.targets[:, 0]), 3),
            "frames": int(len(example.targets)),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m stages.coeffs.training.train " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "cache") and v is not None
    )
    save_weights(model, args.out / "mouthnet.safetensors", {"seed": str(args.seed), "command": command})
    summary = {
        "command": command,
        "seed": args.seed,
        "steps": args.steps,
        "train_examples": len(train_set),
        "train_minutes": round(minutes, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "validation": metrics,
    }
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (args.out / "MODEL_CARD.md").write_text(model_card(summary))
    print(json.dumps(summary, indent=1))


def model_card(summary: dict) -> str:
    """The model card shipped beside the weights: what it is, what it learned from, how well."""
    rows = "\n".join(
        f"| {name} | {m['jaw_open_r']} | {m.get('bilabial_closed_within_1_frame', '–')} | "
        f"{m.get('silence_mean_jaw_open', '–')} | {m['frames']} |"
        for name, m in summary["validation"].items()
    )
    return f"""# MouthNet — audio to mouth coefficients

**What it does.** Predicts, per video frame, dubline's mouth coefficients ({", ".join(MOUTH_COEFFS)};
jaw_open absolute, the others as offsets from the speaker's resting mouth, all in inter-ocular
distances) from log-mel frames on the video's frame clock (SadTalker's ExpNet role). A dilated
temporal convolution network, {summary["parameters"]:,} parameters, about ±0.7 s of audio context.

**Training data** (all built offline by `stages/coeffs/training/`):
- espeak-ng speech in {len(LANGUAGES)} languages ({", ".join(LANGUAGES)}), 5 voices each, phoneme-event timings
  mapped to viseme targets (`stages/coeffs/visemes.py`); augmentation: speed 0.85–1.2, pitch ±3
  semitones, EQ, reverb, coloured noise 10–40 dB SNR, gain, random silence padding, 24–30 fps.
- LibriVox read English with phone alignments from the pocketsphinx 5.1.1 source package (5 clips,
  one held out).
- When `--sample-data` is given: the mouth measured by the faces stage on
  `talk_en_man_office.mp4` with its own audio (`talk_en_man_map.mp4` is held out).
- {summary["train_examples"]} training examples, {summary["train_minutes"]} minutes of audio.

**Reproduce:** `{summary["command"]}` (seed {summary["seed"]}, {summary["steps"]} steps of AdamW,
batch 32 × 96 frames; {summary["seconds"]} s on {summary["machine"]}).

**Validation** (espeak voices never seen in training, one per language; held-out LibriVox clip;
real clips: predicted vs measured jaw_open on the clip's own audio):

| set | jaw_open r | bilabials shut within ±1 frame | mean jaw_open in silence | frames |
|---|---|---|---|---|
{rows}

**Limits.** Synthetic voices dominate the data; real speakers differ in how wide they open, which
the per-speaker calibration in dub mode corrects (`stages/coeffs/calibration.py`). Expression
beyond the mouth (brows, smile) is not predicted.
"""


if __name__ == "__main__":
    main()
