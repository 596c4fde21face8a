"""espeak-ng synthesis through ctypes: audio, phoneme timings, voices, determinism, WAV output."""

import os
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dubline.stages.speech.espeak import PhonemeEvent, Speech, list_voices, synthesize, write_wav


def _median_f0(speech: Speech) -> float:
    """Median autocorrelation pitch (Hz) over the loud 1024-sample frames."""
    sr, x = speech.sample_rate, speech.samples.astype(np.float64)
    lo, hi = sr // 400, sr // 60
    f0s = []
    for start in range(0, len(x) - 1024, 512):
        frame = x[start : start + 1024]
        if np.sqrt(np.mean(frame**2)) > 0.05:
            ac = np.correlate(frame, frame, "full")[1023:]
            f0s.append(sr / (lo + np.argmax(ac[lo:hi])))
    return float(np.median(f0s))


@pytest.mark.parametrize(
    ("voice", "text"),
    [
        ("en", "The quick brown fox jumps over the lazy dog."),
        ("fr", "Bonjour, je suis très content de vous voir."),
        ("de", "Guten Morgen, wie geht es dir heute?"),
        ("cmn", "你好，今天天气很好。"),
        # Japanese needs kana: espeak reads each kanji as the English words "Chinese letter".
        ("ja", "こんにちは、げんきですか。"),
    ],
)
def test_sentence_gives_speech_with_ordered_phonemes(voice: str, text: str) -> None:
    speech = synthesize(text, voice)
    assert speech.sample_rate == 22050
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert 0.5 < speech.duration_s < 10
    assert np.abs(speech.samples).max() <= 1.0
    assert np.sqrt(np.mean(speech.samples**2)) > 0.02  # audibly non-silent
    starts = [p.start_s for p in speech.phonemes]
    assert len(starts) >= 10
    assert starts == sorted(starts)
    assert 0 <= starts[0] and starts[-1] <= speech.duration_s
    assert not any(p.phoneme.startswith("(") for p in speech.phonemes)  # no language-switch marks


def test_papa_phonemes_start_with_p() -> None:
    phonemes = synthesize("papa").phonemes
    assert phonemes[0] == PhonemeEvent("p", phonemes[0].start_s, 1)
    assert [p.phoneme for p in phonemes].count("p") == 2


def test_same_arguments_give_identical_output_whatever_ran_before() -> None:
    first = synthesize("Sixty six hissing snakes.", "en-US")
    synthesize("Etwas ganz anderes, schneller.", "de", rate_wpm=300, pitch=90)
    second = synthesize("Sixty six hissing snakes.", "en-US")
    np.testing.assert_array_equal(first.samples, second.samples)
    assert first.phonemes == second.phonemes


def test_rate_and_pitch_take_effect() -> None:
    slow, fast = (synthesize("Mama is home today.", rate_wpm=r) for r in (100, 300))
    assert fast.duration_s < 0.6 * slow.duration_s
    low, high = (synthesize("Mama is home today.", pitch=p) for p in (10, 90))
    assert _median_f0(high) > 1.5 * _median_f0(low)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="no-such-voice"):
        synthesize("hello", "no-such-voice")
    with pytest.raises(ValueError, match="empty"):
        synthesize("  \n")
    with pytest.raises(ValueError, match="rate_wpm"):
        synthesize("hello", rate_wpm=20)
    with pytest.raises(ValueError, match="pitch"):
        synthesize("hello", pitch=101)


def test_list_voices_are_accepted_by_synthesize() -> None:
    voices = list_voices()
    assert {"en", "en-US", "fr", "de", "es", "it", "pt-BR", "ru", "cmn", "ja", "hi"} <= set(voices)
    for voice in ("en-GB-x-rp", "pt-BR", "hi"):
        assert synthesize("hello", voice).duration_s > 0.2


def test_write_wav_round_trips(tmp_path) -> None:
    speech = synthesize("Hello there.")
    path = str(tmp_path / "hello.wav")
    write_wav(speech, path)
    with wave.open(path, "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        assert wav.getframerate() == speech.sample_rate
        assert wav.getnframes() == len(speech.samples)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    np.testing.assert_array_equal(pcm / 32768.0, speech.samples.astype(np.float64))


def test_concurrent_calls_match_serial_ones() -> None:
    texts = [f"Sentence number {n}." for n in range(6)]
    serial = [synthesize(t).samples for t in texts]
    with ThreadPoolExecutor(max_workers=3) as pool:
        concurrent = list(pool.map(lambda t: synthesize(t).samples, texts))
    for a, b in zip(serial, concurrent):
        np.testing.assert_array_equal(a, b)


def test_processes_share_one_copy_of_the_library_in_the_temporary_folder(tmp_path) -> None:
    # Ray workers end without exit handlers: a copy per process would pile up in /tmp.
    script = "from dubline.stages.speech.espeak import synthesize; synthesize('hello')"
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    for _ in range(3):
        subprocess.run([sys.executable, "-c", script], check=True, env=environment, cwd=Path(__file__).parents[1])
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("dubline-espeak-")]
    assert [p.suffix for p in folder.iterdir()] == [".so"]
