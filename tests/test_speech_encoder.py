"""Whisper's encoder in PyTorch from CTranslate2 weights (``stages.speech.whisper_encoder``): the
same final states CTranslate2 computes, and inner layers side by side (``SpeechEncoder``)."""

from __future__ import annotations

import struct

import ctranslate2
import numpy as np
import pytest
import torch
from faster_whisper import WhisperModel

from dubline.stages.speech.ctranslate2_weights import read_variables
from dubline.stages.speech.speech_encoder import SpeechEncoder, state_windows
from dubline.stages.speech.whisper_encoder import WhisperEncoder
from dubline.stages.speech.whisper_models import TINY_EN_PACKAGED, resolve_model


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    """3 s of a voiced, gliding, syllable-like 16 kHz signal (pitch 120-220 Hz, 4 Hz amplitude)."""
    t = np.arange(48000) / 16000
    pitch = 120 + 100 * t / 3
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / 16000) / k for k in range(1, 12))
    return (0.1 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2).astype(np.float32)


def test_the_final_layer_is_what_ctranslate2_computes(samples):
    model_dir = resolve_model(TINY_EN_PACKAGED)
    whisper = WhisperModel(model_dir, device="cpu", compute_type="float32")
    mel = np.ascontiguousarray(whisper.feature_extractor(samples, padding=480000 - len(samples))[None, :, :3000])
    expected = np.asarray(whisper.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    encoder = WhisperEncoder.from_ctranslate2(model_dir)
    with torch.inference_mode():
        outputs = encoder(torch.from_numpy(mel))
    assert len(outputs) == encoder.layers == 4 and outputs[-1].shape == expected.shape == (1, 1500, 384)
    assert np.abs(outputs[-1].numpy() - expected).max() < 1e-3 * np.abs(expected).max()


def test_chosen_layers_come_side_by_side(samples):
    last = SpeechEncoder(TINY_EN_PACKAGED, device="cpu").encode(samples)
    both = SpeechEncoder(TINY_EN_PACKAGED, device="cpu", layers=(2, -1)).encode(samples)
    assert last.shape == (150, 384) and both.shape == (150, 768)
    np.testing.assert_allclose(both[:, 384:], last, atol=1e-5)
    assert not np.allclose(both[:, :384], last, atol=0.1)  # an inner layer is not the output
    with pytest.raises(ValueError, match="encoder layers"):
        SpeechEncoder(TINY_EN_PACKAGED, device="cpu", layers=(5,))


@pytest.mark.parametrize("count", [1, 1499, 1500, 1501, 2750, 2751, 30000])
def test_windows_own_every_state_once(count):
    """30 s windows (1500 states) every 25 s; each owns up to half-way into its overlaps."""
    windows = state_windows(count)
    assert [w.lo for w in windows][0] == 0 and windows[-1].hi == count
    assert all(a.hi == b.lo for a, b in zip(windows, windows[1:]))  # the owned ranges tile [0, count)
    assert all(w.start <= w.lo < w.hi <= w.stop <= min(w.start + 1500, count) for w in windows)
    if count > 1500:  # no owned state within 2.5 s (125 states, half the overlap) of an inner window edge
        assert all(w.lo - w.start >= 125 for w in windows[1:]) and all(w.stop - w.hi >= 125 for w in windows[:-1])


def test_encode_is_its_windows_owned_states():
    """40 s: two windows, stitched where each owns its states (the window edges never used)."""
    t = np.arange(40 * 16000) / 16000
    samples = (0.1 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    encoder = SpeechEncoder(TINY_EN_PACKAGED, device="cpu")
    windows = list(encoder.encode_windows(samples))
    assert [(w.start, w.stop, w.lo, w.hi) for w, _ in windows] == [(0, 1500, 0, 1375), (1250, 2000, 1375, 2000)]
    assert [len(states) for _, states in windows] == [1500, 750]
    np.testing.assert_array_equal(encoder.encode(samples), np.concatenate([w.owned(s) for w, s in windows]))


def test_an_unknown_binary_version_is_refused(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 99) + b"\x00" * 16)
    with pytest.raises(ValueError, match="binary version 99"):
        read_variables(path)


def test_bfloat16_states_stay_close_to_float32(samples, monkeypatch):
    """The CPU bfloat16 path (taken where the CPU has it natively) changes the states by about 1 %."""
    encoder = SpeechEncoder(TINY_EN_PACKAGED, device="cpu", layers=(2, -1))
    monkeypatch.setattr(encoder, "_cpu_bfloat16", False)
    exact = encoder.encode(samples)
    monkeypatch.setattr(encoder, "_cpu_bfloat16", True)
    rounded = encoder.encode(samples)
    assert np.abs(rounded - exact).mean() < 0.03 * np.abs(exact).mean()
    assert np.corrcoef(rounded.ravel(), exact.ravel())[0, 1] > 0.999
