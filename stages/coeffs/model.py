"""The audio -> mouth network (SadTalker's ExpNet role) over a frozen speech encoder.

``SpeechToMouth`` listens to Whisper's encoder states (``stages.speech.speech_encoder``: 50 per
second, speaker-independent) and gives, per state, two things:
- **viseme posteriors** over ``visemes.VISEME_CLASSES``: what the mouth is articulating (p/b/m,
  an open vowel, a rounded one, rest...), the input of the forced aligner (``alignment``);
- **mouth coefficients** ``visemes.MOUTH_COEFFS`` (jaw_open absolute, the others offsets from the
  speaker's resting mouth, inter-ocular distances).

``MouthNet`` is a small temporal convolution network (about ±0.35 s of context) trained by
``python -m dubline.stages.coeffs.training.train``; weights ship as safetensors with a model card in
``stages/coeffs/weights/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dubline.stages.coeffs import WEIGHTS
from dubline.stages.coeffs.visemes import MOUTH_COEFFS, VISEME_CLASSES
from dubline.stages.speech.speech_encoder import SpeechEncoder
from dubline.stages.speech.whisper_models import BASE_PACKAGED

#: Whisper encoder layers MouthNet listens to, side by side (``SpeechEncoder``): the middle one
#: keeps more of how a sound is articulated, the last what was said. Chosen on held-out training
#: clips (model card); weights record their own in their metadata.
MOUTH_ENCODER_LAYERS = (3, -1)


class _Block(nn.Module):
    def __init__(self, channels: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=5, padding=2 * dilation, dilation=dilation)
        self.norm = nn.GroupNorm(8, channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(nn.functional.gelu(self.norm(self.conv(x))))


class MouthNet(nn.Module):
    """B×N×D encoder states -> (B×N×C viseme logits, B×N×4 mouth coefficients)."""

    def __init__(self, input_dim: int = 512, channels: int = 128, dilations: tuple[int, ...] = (1, 2, 4, 1),
                 dropout: float = 0.1):
        super().__init__()
        self.config = {"input_dim": input_dim, "channels": channels, "dilations": list(dilations), "dropout": dropout}
        self.norm = nn.LayerNorm(input_dim)
        self.inp = nn.Linear(input_dim, channels)
        self.drop = nn.Dropout(2 * dropout)
        self.blocks = nn.Sequential(*[_Block(channels, d, dropout) for d in dilations])
        self.visemes = nn.Conv1d(channels, len(VISEME_CLASSES), kernel_size=1)
        self.mouth = nn.Conv1d(channels, len(MOUTH_COEFFS), kernel_size=1)

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.drop(nn.functional.gelu(self.inp(self.norm(states)))).transpose(1, 2)
        hidden = self.blocks(hidden)
        return self.visemes(hidden).transpose(1, 2), self.mouth(hidden).transpose(1, 2)


def save_weights(model: MouthNet, log_priors: np.ndarray, path: Path, metadata: dict[str, str]) -> None:
    """Weights plus the config, the training set's viseme class log-priors (C) and the encoder
    layers the inputs came from (``MOUTH_ENCODER_LAYERS``) as metadata."""
    save_file(model.state_dict(), str(path), metadata={
        "config": json.dumps(model.config), "log_priors": json.dumps([round(float(p), 5) for p in log_priors]),
        "encoder_layers": json.dumps(list(MOUTH_ENCODER_LAYERS)), **metadata,
    })


@dataclass(frozen=True)
class SpeechAnalysis:
    """What the network heard, 50 states per second from the start of the audio."""

    log_posteriors: np.ndarray  # N×C float32, ``VISEME_CLASSES`` order
    mouth: np.ndarray  # N×4 float32, ``MOUTH_COEFFS``


class SpeechToMouth:
    """The Whisper encoder (the layers the weights were trained on) and MouthNet, loaded once
    (CUDA when present); deterministic."""

    def __init__(self, weights: Path | str = WEIGHTS, encoder_model: str = BASE_PACKAGED, device: str | None = None):
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata()
        config = json.loads(metadata["config"])
        self.log_priors = np.asarray(json.loads(metadata["log_priors"]), dtype=np.float32)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Weights from before the metadata named layers listened to the last one only.
        self.encoder_layers = tuple(json.loads(metadata.get("encoder_layers", "[-1]")))
        self.encoder = SpeechEncoder(encoder_model, device="cuda" if self.device.type == "cuda" else "cpu",
                                     layers=self.encoder_layers)
        self.model = MouthNet(config["input_dim"], config["channels"], tuple(config["dilations"]), config["dropout"])
        self.model.load_state_dict(load_file(str(weights)))
        self.model.to(self.device).eval()

    def analyse(self, samples: np.ndarray) -> SpeechAnalysis:
        """Mono 16 kHz float samples (N) -> ``SpeechAnalysis`` of ceil(N / 320) states.

        MouthNet runs on each 30 s encoder window (``SpeechEncoder.encode_windows``) and keeps the
        states that window owns, so memory stays flat in the audio's length and no state's output
        depends on speech more than 30 s away (MouthNet's GroupNorm statistics span its input; it
        was trained on 4 s crops). Up to 30 s this equals ``analyse_states(encoder.encode(samples))``.
        """
        log_posteriors, mouth = [], []
        for window, states in self.encoder.encode_windows(samples):
            analysis = self.analyse_states(states)
            log_posteriors.append(window.owned(analysis.log_posteriors))
            mouth.append(window.owned(analysis.mouth))
        return SpeechAnalysis(np.concatenate(log_posteriors), np.concatenate(mouth))

    def analyse_states(self, states: np.ndarray) -> SpeechAnalysis:
        """Encoder states N×D -> ``SpeechAnalysis``."""
        with torch.inference_mode():
            logits, mouth = self.model(torch.from_numpy(np.asarray(states, np.float32))[None].to(self.device))
            log_posteriors = torch.log_softmax(logits[0].float(), dim=-1)
        return SpeechAnalysis(log_posteriors.cpu().numpy(), mouth[0].float().cpu().numpy())
