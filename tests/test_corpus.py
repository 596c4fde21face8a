"""Training corpus for the audio->mouth network: shapes, targets, silence, determinism,
augmentation alignment, held-out voices, every language, LibriVox clips."""

from __future__ import annotations

import os
from pathlib import Path

import librosa
import numpy as np
import pytest

from dubline.stages.coeffs.training.corpus import (
    DEFAULT_VOICES,
    HELD_OUT_VOICES,
    Example,
    augment_audio,
    espeak_examples,
    librivox_examples,
    speed_and_pitch,
)
from dubline.stages.coeffs.training.sentences import SENTENCES
from dubline.stages.coeffs.visemes import VISEME_CLASSES
from dubline.stages.speech.espeak import synthesize
from dubline.stages.speech.features import SAMPLE_RATE, loudness_db

LANGUAGES = sorted(SENTENCES)
FIRST_VOICES = {language: [voices[0]] for language, voices in DEFAULT_VOICES.items()}
RATE = 25.0  # a video frame rate: the clock targets are checked on


@pytest.fixture(scope="module")
def augmented() -> list[Example]:
    return espeak_examples(LANGUAGES, None, per_voice=1, seed=7, augment=True)


@pytest.fixture(scope="module")
def clean() -> list[Example]:
    return espeak_examples(LANGUAGES, None, per_voice=1, seed=7, augment=False)


def _bursts(times_s: list[float], semitones: float = 0.0) -> np.ndarray:
    """Silence with 150 ms 440 Hz tone bursts starting at ``times_s``."""
    audio = np.zeros(3 * SAMPLE_RATE, np.float32)
    t = np.arange(int(0.15 * SAMPLE_RATE)) / SAMPLE_RATE
    for start in times_s:
        i = int(start * SAMPLE_RATE)
        audio[i : i + len(t)] = 0.5 * np.sin(2 * np.pi * 440 * 2 ** (semitones / 12) * t)
    return audio


def _envelope(audio: np.ndarray, hop: int = 160) -> np.ndarray:
    return np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1)


def _energy(example: Example) -> np.ndarray:
    return loudness_db(example.audio, RATE, example.steps(RATE))


def test_sentences_cover_nine_languages_with_bilabials_and_pauses() -> None:
    assert len(SENTENCES) >= 9 and {"en", "fr", "de", "es", "it", "pt", "ru", "hi"} <= set(SENTENCES)
    for language, sentences in SENTENCES.items():
        assert len(sentences) >= 10, language
        assert sum(any(p in s for p in ",.，。、।") for s in sentences) >= 8, language
    assert all(not any("\u4e00" <= ch <= "\u9fff" for ch in s) for s in SENTENCES["ja"])  # kana only


def test_example_shapes_are_consistent(augmented: list[Example]) -> None:
    for example in augmented:
        assert example.audio.dtype == np.float32 and example.audio.ndim == 1 and np.isfinite(example.audio).all()
        assert 1.0 < example.duration_s < 10.0 and example.text.strip()
        for rate in (RATE, 50.0):
            steps = example.steps(rate)
            assert steps == int(example.duration_s * rate)
            assert example.targets(rate).shape == (steps, 4) and example.targets(rate).dtype == np.float32
            assert example.labels(rate).shape == (steps,) and example.labels(rate).dtype == np.int64
            assert example.silent(rate).shape == (steps,) and example.silent(rate).dtype == bool
            bilabials = example.bilabial_steps(rate)
            assert bilabials.dtype.kind == "i" and np.all((bilabials >= 0) & (bilabials < steps))
        starts = [start for _, start, _ in example.segments]
        assert starts == sorted(starts) and example.segments[-1][2] <= example.duration_s + 1e-6
        kind, language, voice, index = example.source.split(":")
        assert (kind, language, index) == ("espeak", example.language, "0")
        assert voice in DEFAULT_VOICES[language]


def test_every_language_yields_speech_bilabials_and_rest(augmented: list[Example]) -> None:
    by_language = {example.language for example in augmented}
    assert by_language == set(LANGUAGES)
    assert len(augmented) == sum(len(DEFAULT_VOICES[language]) for language in LANGUAGES)
    for example in augmented:
        silent = example.silent(RATE)
        assert len(example.bilabial_steps(RATE)) >= 1, example.source
        # At least 0.2 s of padding, sped up by at most 1.2: 4 frames at 25 fps.
        assert silent[:4].all() and silent[-3:].all(), example.source
        assert (~silent).sum() > RATE, example.source  # over a second of speech
        labels = example.labels(50.0)
        assert labels[0] == labels[-1] == VISEME_CLASSES.index("rest"), example.source
        assert VISEME_CLASSES.index("bilabial") in labels, example.source


def test_bilabials_are_shut_and_silence_rests(augmented: list[Example]) -> None:
    bilabial = np.concatenate([e.targets(RATE)[e.bilabial_steps(RATE), 0] for e in augmented])
    speech = np.concatenate([e.targets(RATE)[~e.silent(RATE), 0] for e in augmented])
    # A short p/b/m (< 30 ms) shuts only part of its frame, so some centre frames stay ajar.
    assert np.median(bilabial) < 0.03 and np.percentile(bilabial, 90) < 0.1
    assert np.median(bilabial) < 0.4 * np.median(speech)
    silent = np.concatenate([e.targets(RATE)[e.silent(RATE), 0] for e in augmented])
    assert silent.mean() < 0.01 and silent.max() < 0.1  # frames next to speech get coarticulation
    for example in augmented:
        quiet = example.silent(RATE)
        inner = quiet[1:-1] & quiet[:-2] & quiet[2:]
        assert np.all(example.targets(RATE)[1:-1][inner, 0] < 0.01), example.source


def test_same_seed_gives_same_examples_whatever_else_is_built(augmented: list[Example]) -> None:
    alone = espeak_examples(["fr"], None, per_voice=1, seed=7, augment=True)
    among_all = [e for e in augmented if e.language == "fr"]
    assert [e.source for e in alone] == [e.source for e in among_all]
    for a, b in zip(alone, among_all):
        np.testing.assert_array_equal(a.audio, b.audio)
        assert a.segments == b.segments and a.text == b.text
    other_seed = espeak_examples(["fr"], None, per_voice=1, seed=8, augment=True)
    assert any(a.audio.shape != b.audio.shape for a, b in zip(alone, other_seed))


def test_speed_and_pitch_scale_times_and_frequency() -> None:
    starts = [0.5, 1.3, 2.1]
    fast = speed_and_pitch(_bursts(starts), SAMPLE_RATE, speed=1.2, semitones=3.0)
    assert abs(len(fast) - 3 * SAMPLE_RATE / 1.2) < 0.01 * SAMPLE_RATE
    envelope = _envelope(fast)
    onsets = np.flatnonzero((envelope[1:] > 0.02) & (envelope[:-1] <= 0.02)) + 1
    np.testing.assert_allclose(onsets / 100, np.array(starts) / 1.2, atol=0.015)
    burst = fast[int(0.5 / 1.2 * SAMPLE_RATE) + 400 : int(0.5 / 1.2 * SAMPLE_RATE) + 1400]
    peak_hz = np.argmax(np.abs(np.fft.rfft(burst, 16 * SAMPLE_RATE))) / 16
    assert abs(peak_hz - 440 * 2 ** (3 / 12)) < 8


def test_augment_audio_changes_sound_but_keeps_timing() -> None:
    source = _bursts([0.5, 1.3, 2.1])
    scales = []
    for seed in range(8):
        audio, scale = augment_audio(source, SAMPLE_RATE, np.random.default_rng(seed))
        scales.append(scale)
        assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
        assert abs(len(audio) - len(source) * scale) < 0.01 * SAMPLE_RATE
        # The tone bursts' energy envelope, time-scaled, lines up with the augmented one.
        expected = np.interp(np.arange(len(audio) // 160) / scale, np.arange(300), _envelope(source))
        got = _envelope(audio)[: len(expected)]
        lags = range(-3, 4)
        best = max(lags, key=lambda lag: np.corrcoef(np.roll(got, -lag), expected)[0, 1])
        assert abs(best) <= 1, (seed, best)  # within 10 ms
    assert 1 / 1.2 <= min(scales) < 0.95 and 1.05 < max(scales) <= 1 / 0.85
    again, _ = augment_audio(source, SAMPLE_RATE, np.random.default_rng(0))
    first, _ = augment_audio(source, SAMPLE_RATE, np.random.default_rng(0))
    np.testing.assert_array_equal(again, first)


def test_augmented_examples_are_time_scaled_clean_ones(
    augmented: list[Example], clean: list[Example]
) -> None:
    ratios, contrasts = [], []
    for aug, ref in zip(augmented, clean):
        assert (aug.source, aug.text) == (ref.source, ref.text)
        aug_targets, ref_targets = aug.targets(RATE), ref.targets(RATE)
        ratio = len(aug_targets) / len(ref_targets)
        ratios.append(ratio)
        # The jaw targets are the clean ones on a clock sped up or slowed down by the same factor.
        times = np.arange(len(aug_targets)) / ratio
        warped = np.interp(times, np.arange(len(ref_targets)), ref_targets[:, 0])
        assert np.corrcoef(warped, aug_targets[:, 0])[0, 1] > 0.9, aug.source
        # And the (noisy, reverberant) audio is loud where the targets say speech, quiet in pauses.
        quiet = aug.silent(RATE)
        inner = quiet[1:-1] & quiet[:-2] & quiet[2:]
        contrasts.append(_energy(aug)[~quiet].mean() - _energy(aug)[1:-1][inner].mean())
        assert contrasts[-1] > 3, aug.source  # dB; 10 dB SNR plus reverb in pauses is the worst case
    assert np.median(contrasts) > 10
    assert min(ratios) < 0.95 and max(ratios) > 1.05  # some sped up (fewer frames), some slowed


def test_held_out_voices_stay_out_unless_asked() -> None:
    assert set(HELD_OUT_VOICES) == set(LANGUAGES)
    for language, voice in HELD_OUT_VOICES.items():
        assert voice not in DEFAULT_VOICES[language]
        assert len(DEFAULT_VOICES[language]) >= 4
    training = espeak_examples(["en", "ja"], None, per_voice=1, seed=0, augment=False)
    assert not any(e.source.split(":")[2] in HELD_OUT_VOICES.values() for e in training)
    held = {language: [HELD_OUT_VOICES[language]] for language in ("en", "ja")}
    validation = espeak_examples(["en", "ja"], held, per_voice=2, seed=0, augment=False)
    assert [e.source for e in validation] == [
        f"espeak:{language}:{HELD_OUT_VOICES[language]}:{k}" for language in ("en", "ja") for k in (0, 1)
    ]
    with pytest.raises(ValueError, match="de"):
        espeak_examples(["en", "de"], held, per_voice=1, seed=0, augment=False)
    with pytest.raises(ValueError, match="xx"):
        espeak_examples(["xx"], None, per_voice=1, seed=0, augment=False)


def test_every_voice_sounds_different() -> None:
    # espeak silently ignores an unknown "+variant", which would make two voices the same speaker.
    for language in LANGUAGES:
        voices = [*DEFAULT_VOICES[language], HELD_OUT_VOICES[language]]
        sounds = {synthesize(SENTENCES[language][0], voice).samples.tobytes() for voice in voices}
        assert len(sounds) == len(voices), language


def test_every_voice_is_reproducible_after_other_work() -> None:
    # espeak's "breath" variants change with process state (here: numba compiling librosa code).
    voices = [(lang, v) for lang in LANGUAGES for v in (*DEFAULT_VOICES[lang], HELD_OUT_VOICES[lang])]
    before = [synthesize(SENTENCES[lang][1], voice).samples for lang, voice in voices]
    librosa.effects.time_stretch(np.random.default_rng(0).standard_normal(20_000), rate=1.1)
    after = [synthesize(SENTENCES[lang][1], voice).samples for lang, voice in voices]
    for (_, voice), a, b in zip(voices, before, after):
        np.testing.assert_array_equal(a, b, err_msg=voice)


def test_librivox_clips_give_english_examples() -> None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dubline"
    try:
        examples = librivox_examples(cache)
    except RuntimeError as error:  # no network and no cached tarball
        pytest.skip(str(error))
    assert [e.source for e in examples] == [
        f"librivox:{n}" for n in ("0870", "0880", "0890", "0920", "0930")
    ]
    first = examples[0]
    assert abs(first.duration_s - 7.1) < 0.05 and first.language == "en"
    assert first.text.startswith("and mister john dashwood had then leisure to consider")
    quiet = first.silent(RATE)
    assert quiet[:4].all() and not quiet[10:20].any()  # "<sil>" for 0.2 s, then "and"
    bilabial = np.concatenate([e.targets(RATE)[e.bilabial_steps(RATE), 0] for e in examples])
    assert len(bilabial) >= 20 and np.median(bilabial) < 0.03
    assert max(e.targets(RATE)[e.silent(RATE), 0].max() for e in examples) < 0.1
    speech = np.concatenate([_energy(e)[~e.silent(RATE)] for e in examples]).mean()
    pauses = np.concatenate([_energy(e)[e.silent(RATE)] for e in examples]).mean()
    assert speech - pauses > 10  # the alignment's silences are the recording's quiet parts
