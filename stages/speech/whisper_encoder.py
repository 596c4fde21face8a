"""Whisper's audio encoder in PyTorch, with the output of every layer, from CTranslate2 weights.

The architecture is Whisper's (Radford et al. 2022, "Robust Speech Recognition via Large-Scale
Weak Supervision"; ``AudioEncoder`` in openai/whisper ``model.py``): two GELU convolutions over
the log-mel spectrogram (the second halves the rate to one state per 20 ms), sinusoidal
positions, pre-norm transformer layers, a final layer norm. The weights are those of the
CTranslate2 model that faster-whisper runs (``ctranslate2_weights``), so the same packaged model
serves transcription and the mouth. CTranslate2 returns only the final layer; the mouth model
also listens to an inner one (``model.MOUTH_ENCODER_LAYERS``), which keeps more of how the
sound is articulated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dubline.stages.speech.ctranslate2_weights import read_variables


def _dequantized(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """Variable ``name`` as float32, int8 weights divided by their per-row ``<name>_scale``."""
    value = variables[name]
    if value.dtype == np.int8:
        scale = variables[f"{name}_scale"].astype(np.float32)
        return torch.from_numpy(value.astype(np.float32) / scale.reshape(-1, *[1] * (value.ndim - 1)))
    return torch.from_numpy(value.astype(np.float32))


class WhisperEncoder(nn.Module):
    """Log-mel B×M×3000 (30 s) -> the outputs of the L layers, each B×1500×D.

    The last output is taken after the final layer norm (what Whisper's decoder reads, and what
    CTranslate2's ``encode`` returns); inner ones are the residual stream after their layer.
    """

    def __init__(self, variables: dict[str, np.ndarray]):
        super().__init__()
        prefix = "encoder/"
        # Tensors only: num_heads is a scalar, int8 scales are folded into their weights.
        names = [k for k in variables if k.startswith(prefix) and not k.endswith("_scale") and variables[k].ndim > 0]
        self.weights = nn.ParameterDict({k[len(prefix):].replace("/", "__"): nn.Parameter(_dequantized(variables, k), requires_grad=False)
                                         for k in names})
        self.heads = int(variables[f"{prefix}num_heads"])
        self.layers = sum(1 for k in variables if k.startswith(f"{prefix}layer_") and k.endswith("/ffn/linear_0/bias"))
        self.mels = int(variables[f"{prefix}conv1/weight"].shape[1])

    @classmethod
    def from_ctranslate2(cls, model_dir: str | Path) -> WhisperEncoder:
        """The encoder of the CTranslate2 Whisper model in ``model_dir`` (its ``model.bin``)."""
        return cls(read_variables(Path(model_dir) / "model.bin")).eval()

    def _w(self, name: str) -> torch.Tensor:
        return self.weights[name.replace("/", "__")]

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w(f"{name}/weight"), self._w(f"{name}/bias"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self._w(f"{name}/gamma"), self._w(f"{name}/beta"))

    def _attention(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """B×N×D -> B×N×D: multi-head self-attention (queries, keys, values fused in one linear)."""
        batch, steps, width = x.shape
        qkv = self._linear(self._norm(x, f"{layer}/self_attention/layer_norm"), f"{layer}/self_attention/linear_0")
        q, k, v = qkv.view(batch, steps, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, steps, width)
        return self._linear(attended, f"{layer}/self_attention/linear_1")

    def _feed_forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        hidden = F.gelu(self._linear(self._norm(x, f"{layer}/ffn/layer_norm"), f"{layer}/ffn/linear_0"))
        return self._linear(hidden, f"{layer}/ffn/linear_1")

    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        x = F.gelu(F.conv1d(mel, self._w("conv1/weight"), self._w("conv1/bias"), padding=1))
        x = F.gelu(F.conv1d(x, self._w("conv2/weight"), self._w("conv2/bias"), stride=2, padding=1))
        x = x.transpose(1, 2) + self._w("position_encodings/encodings")[: x.shape[2]]
        outputs = []
        for index in range(self.layers):
            layer = f"layer_{index}"
            x = x + self._attention(x, layer)
            x = x + self._feed_forward(x, layer)
            outputs.append(x)
        outputs[-1] = self._norm(x, "layer_norm")
        return outputs
