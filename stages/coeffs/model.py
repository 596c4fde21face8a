"""The audio -> mouth network (SadTalker's ExpNet role) and its packaged weights.

A small non-causal temporal convolution network over log-mel frames on the video's frame clock:
it sees about ±0.7 s of audio around each frame and predicts ``visemes.MOUTH_COEFFS`` for it.
Weights are trained by ``python -m stages.coeffs.training.train`` and shipped as safetensors with a
model card beside them (``stages/coeffs/weights/``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stages.audio.features import N_MELS
from stages.coeffs.visemes import MOUTH_COEFFS

WEIGHTS = Path(__file__).parent / "weights" / "mouthnet.safetensors"
_INPUT = N_MELS + 1  # mel bins relative to their utterance mean, plus loudness


def normalise_features(log_mel: np.ndarray) -> np.ndarray:
    """T×80 log-mel dB -> T×81 network input.

    Each mel bin is centred on its utterance mean (removes microphone EQ and gain), and one
    loudness channel says how far each frame is below the utterance's loud frames (silence).
    """
    loudness = log_mel.mean(axis=1, keepdims=True)
    reference = np.percentile(loudness, 95)
    centred = log_mel - log_mel.mean(axis=0, keepdims=True)
    return np.clip(np.hstack([centred / 20.0, (loudness - reference) / 20.0]), -5.0, 5.0).astype(np.float32)


class _Block(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.norm = nn.GroupNorm(8, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.nn.functional.gelu(self.norm(self.conv(x)))


class MouthNet(nn.Module):
    """B×T×81 normalised features -> B×T×4 mouth coefficients."""

    def __init__(self, channels: int = 96, dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2)):
        super().__init__()
        self.config = {"channels": channels, "dilations": list(dilations)}
        self.inp = nn.Conv1d(_INPUT, channels, kernel_size=1)
        self.blocks = nn.Sequential(*[_Block(channels, d) for d in dilations])
        self.out = nn.Conv1d(channels, len(MOUTH_COEFFS), kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.inp(features.transpose(1, 2))
        return self.out(self.blocks(x)).transpose(1, 2)


def save_weights(model: MouthNet, path: Path, metadata: dict[str, str]) -> None:
    save_file(model.state_dict(), str(path), metadata={"config": json.dumps(model.config), **metadata})


class MouthPredictor:
    """Loads the weights once; predicts per-frame mouth coefficients, deterministically."""

    def __init__(self, weights: Path = WEIGHTS, device: str | None = None):
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            config = json.loads(f.metadata()["config"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = MouthNet(config["channels"], tuple(config["dilations"]))
        self.model.load_state_dict(load_file(str(weights)))
        self.model.to(self.device).eval()

    def predict(self, log_mel: np.ndarray) -> np.ndarray:
        """T×80 log-mel (one row per video frame) -> T×4 mouth coefficients (``MOUTH_COEFFS``)."""
        if len(log_mel) == 0:
            return np.zeros((0, len(MOUTH_COEFFS)), np.float32)
        features = torch.from_numpy(normalise_features(log_mel))[None].to(self.device)
        with torch.inference_mode():
            return self.model(features)[0].float().cpu().numpy()
