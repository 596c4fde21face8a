"""The audio->mouth model, per-speaker calibration and the coeffs stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dubline.flows.demo import astronaut, write_portrait_clip
from dubline.schemas.catalogue import OPTION_DEFAULTS
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import DRIVEN_COEFFS, EXPRESSION_NAMES, FACE_TRACKS
from dubline.stages.audio.stage import AudioStage
from dubline.stages.base import StageJob
from dubline.stages.coeffs.calibration import fit_calibration
from dubline.stages.coeffs.model import MouthNet, SpeechToMouth, save_weights
from dubline.stages.coeffs.mouth import MOUTH_LEAD_S, heard_early, mouth_curve, timed_early
from dubline.stages.coeffs.stage import UNTRUSTED_CALIBRATION, CoeffsStage
from dubline.stages.coeffs.training.corpus import HELD_OUT_VOICES, espeak_examples
from dubline.stages.coeffs.training.encode import encode_all
from dubline.stages.coeffs.training.train import TrainingItem, _item, _synthetic_metrics, best_lag_r, train
from dubline.stages.faces import FaceStage
from dubline.stages.media import read_audio
from dubline.stages.probe import ProbeStage
from dubline.stages.lipsync.mouth import best_lag
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage
from dubline.stages.speech.espeak import synthesize, write_wav
from dubline.stages.speech.features import SAMPLE_RATE
from dubline.stages.speech.fit import fit_samples

JAW = EXPRESSION_NAMES.index("jaw_open")
SAMPLE_DATA = Path(os.environ.get("DUBLINE_SAMPLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
TRAIN_CLIP = SAMPLE_DATA / "video" / "train" / "vox_man_threequarter.mp4"


@pytest.fixture(scope="module")
def speech() -> SpeechToMouth:
    return SpeechToMouth(device="cpu")


@pytest.mark.parametrize("language", ["en", "fr", "de", "ja"])
def test_mouth_follows_the_visemes_of_held_out_voices(speech, language):
    examples = espeak_examples([language], {language: [HELD_OUT_VOICES[language]]}, 2, seed=123, augment=False)
    metrics = _synthetic_metrics(speech, examples, encode_all(speech.encoder, [e.audio for e in examples]))
    # A voice the model never heard: the jaw follows the viseme targets (r well above the ~0.3 that
    # loudness alone reaches on these), aligned p/b/m shut the lips, and silence rests.
    assert metrics["jaw_open_r_model_only"] > 0.6
    assert metrics["jaw_open_r_text_aligned"] > 0.6
    assert metrics["bilabial_shut_within_1_frame"] > 0.8
    assert metrics["silence_mean_jaw_open"] < 0.02
    assert metrics["viseme_frame_accuracy"] > 1 / 3  # 16 classes: chance is ~0.06, rest alone ~0.3


def test_analysis_is_deterministic_and_sized(speech):
    (example,) = espeak_examples(["en"], {"en": [HELD_OUT_VOICES["en"]]}, 1, seed=5, augment=False)
    first, second = speech.analyse(example.audio), speech.analyse(example.audio)
    assert np.array_equal(first.mouth, second.mouth) and np.array_equal(first.log_posteriors, second.log_posteriors)
    assert len(first.mouth) == -(-len(example.audio) // 320) and first.log_posteriors.shape[1] == 16
    np.testing.assert_allclose(np.exp(first.log_posteriors).sum(axis=1), 1.0, atol=1e-5)


def test_long_audio_is_analysed_window_by_window(speech):
    """Past 30 s, MouthNet runs on each encoder window alone (memory flat in length); up to 30 s,
    on the whole audio at once, as before."""
    (example,) = espeak_examples(["en"], {"en": [HELD_OUT_VOICES["en"]]}, 1, seed=5, augment=False)
    short = example.audio[: 20 * 16000]
    whole = speech.analyse_states(speech.encoder.encode(short))
    np.testing.assert_array_equal(speech.analyse(short).mouth, whole.mouth)
    long = np.tile(example.audio, -(-40 * 16000 // len(example.audio)))[: 40 * 16000]
    windowed = speech.analyse(long)
    expected = [w.owned(speech.analyse_states(states).mouth) for w, states in speech.encoder.encode_windows(long)]
    assert len(expected) == 2
    np.testing.assert_array_equal(windowed.mouth, np.concatenate(expected))
    assert len(windowed.log_posteriors) == len(windowed.mouth) == 2000


def test_training_runs_and_weights_round_trip(tmp_path, speech):
    examples = espeak_examples(["en"], None, 1, seed=0, augment=True)[:3]
    items = [_item(e, s) for e, s in zip(examples, encode_all(speech.encoder, [e.audio for e in examples]))]
    filmed = np.sin(np.arange(len(items[0].states)) / 5.0).astype(np.float32)
    items.append(TrainingItem(items[0].states, np.full(len(filmed), -100), None, filmed))  # a filmed mouth
    model = train(items, steps=3, seed=0, log_every=100)
    priors = np.log(np.full(16, 1 / 16))
    save_weights(model, priors, tmp_path / "w.safetensors", {"seed": "0"})
    loaded = SpeechToMouth(tmp_path / "w.safetensors", device="cpu")
    assert torch.equal(loaded.model.mouth.weight, model.mouth.weight)
    np.testing.assert_allclose(loaded.log_priors, priors, atol=1e-4)
    assert isinstance(loaded.model, MouthNet)


def test_best_lag_r_finds_a_shifted_copy():
    rng = np.random.default_rng(0)
    signal = np.convolve(rng.standard_normal(300), np.ones(5) / 5, mode="same")
    assert best_lag_r(signal[:-2], signal[2:]) == pytest.approx(1.0)
    assert best_lag_r(signal[:-5], signal[5:]) < 0.9  # beyond the ±2 frames allowed


def test_calibration_recovers_a_speakers_scale_and_rejects_noise():
    rng = np.random.default_rng(0)
    predicted = rng.normal(0.1, 0.05, size=(200, 4))
    measured = 2.0 * predicted + rng.normal(0, 0.005, size=predicted.shape)
    calibration = fit_calibration(predicted, measured)
    assert np.allclose(calibration.gain, 2.0, atol=0.1) and calibration.trusted.all() and (calibration.r > 0.95).all()
    unrelated = fit_calibration(predicted, rng.normal(size=predicted.shape))
    assert not unrelated.trusted.any() and np.allclose(unrelated.gain, 1.0)


def test_calibration_keeps_a_closed_mouth_closed():
    """A speaker who opens wide on average (a large mean) must not get a mouth that stays open
    through speech and jumps open at its onset: zero (closed, at rest) maps to zero."""
    rng = np.random.default_rng(1)
    jaw = np.clip(np.convolve(rng.normal(0.1, 0.1, 400), np.ones(5) / 5, mode="same"), 0, None)
    predicted = np.stack([jaw] * 4, axis=1)
    measured = 1.5 * predicted + 0.08 + rng.normal(0, 0.01, size=predicted.shape)  # lips never meet on film
    calibration = fit_calibration(predicted, measured)
    assert calibration.trusted.all()
    assert np.allclose(calibration.apply(np.zeros((3, 4))), 0.0)
    rms = lambda x: np.sqrt(np.mean(x * x, axis=0))  # noqa: E731 - the speaker's size about zero
    assert np.allclose(rms(calibration.apply(predicted)), rms(measured), rtol=0.01)


def analyse_title(folder, title_id: str, mode: str, source, dub, script=None, whisper_model="base-packaged",
                  language="fr") -> tuple[SequentialRunner, dict[str, str]]:
    """probe, shots, faces and audio of one title, in-process; returns the runner and manifest URLs."""
    runner = SequentialRunner()
    urls = {n: str(folder / f"{n}.parquet") for n in ("titles", "shots", "faces", "audio")}
    runner.run(StageJob(ProbeStage, {}, urls["titles"], title_id, rows=({"title_id": title_id, "mode": mode, "source_url": str(source)},)))
    runner.run(StageJob(ShotsStage, {}, urls["shots"], title_id, input_url=urls["titles"]))
    runner.run(StageJob(FaceStage, {"crop_size": 64}, urls["faces"], title_id, rows=({"title_id": title_id, "titles_url": urls["titles"], "shots_url": urls["shots"], "chunks_url": str(folder / "chunks")},)))
    audio_row = {"title_id": title_id, "language": language, "dub_audio_url": str(dub), "titles_url": urls["titles"],
                 "dub_script_url": str(script) if script else None, "options_json": json.dumps(OPTION_DEFAULTS),
                 "subtitles_url": str(folder / f"{title_id}.{language}")}
    runner.run(StageJob(AudioStage, {"whisper_model": whisper_model}, urls["audio"], title_id, rows=(audio_row,)))
    return runner, urls


def driven_rows(runner, folder, urls, title_id: str, language="fr", params: dict | None = None, **options):
    out = str(folder / f"coeffs-{abs(hash(str(sorted(options.items())) + str(params)))}.parquet")
    row = {"title_id": title_id, "language": language, "titles_url": urls["titles"], "faces_url": urls["faces"],
           "audio_url": urls["audio"], "options_json": json.dumps({**OPTION_DEFAULTS, **options})}
    stats = runner.run(StageJob(CoeffsStage, params or {}, out, title_id, rows=(row,)))
    return read_rows(out, DRIVEN_COEFFS), stats


DUB_TEXT = "Bonjour. Papa mange une pomme."


@pytest.fixture(scope="module")
def dubbed_title(tmp_path_factory):
    """A 512 px portrait clip, dubbed with French speech with a pause. The clip has no sound: a
    still portrait under speech would be a listener (``test_speakers``), and without the source's
    audio every face is driven by the dub."""
    folder = tmp_path_factory.mktemp("coeffs")
    write_portrait_clip(folder / "clip.mp4", [astronaut()], 3.2, fps=25, size=512)
    dub = synthesize(DUB_TEXT, voice="fr", rate_wpm=140)
    write_wav(dub, str(folder / "dub.wav"))
    runner, urls = analyse_title(folder, "t", "dub", folder / "clip.mp4", folder / "dub.wav")
    return runner, folder, urls, dub


def drive(dubbed_title, params: dict | None = None, **options):
    runner, folder, urls, _ = dubbed_title
    return driven_rows(runner, folder, urls, "t", params=params, **options)


#: Whisper base hears espeak-ng's French as e.g. "Boussou, papa mojun pom", word probabilities
#: 0.14-0.5, under the stage's floor for real speech: the tests of the transcript path take every word.
EVERY_WORD = {"min_word_probability": 0.0}


def test_driven_mouth_follows_the_dub_and_keeps_pose_and_blinks(dubbed_title):
    (driven,), stats = drive(dubbed_title)
    _, _, urls, dub = dubbed_title
    (track,) = read_rows(urls["faces"], FACE_TRACKS)
    jaw = np.asarray(driven["expression"])[:, JAW]
    assert np.array_equal(np.asarray(driven["pose"]), np.asarray(track["pose"]))
    assert np.array_equal(np.asarray(driven["blink"]), np.asarray(track["blink"]))
    speaking = np.zeros(len(jaw), bool)
    speaking[int(0.1 * 25) : int(dub.duration_s * 25)] = True
    assert jaw[~speaking].mean() < 0.02, "the mouth rests after the dub ends"
    assert jaw[speaking].max() > 0.1 and jaw[speaking].std() > 0.03, "the mouth moves with the dub"
    assert "calibration_jaw_r" in stats.metrics


def test_the_transcript_aligns_and_every_aligned_bilabial_shuts_the_lips(dubbed_title):
    (driven,), stats = drive(dubbed_title, params=EVERY_WORD)
    assert driven["mouth_path"] == "transcript-aligned" and driven["alignment_score"] >= CoeffsStage.defaults["min_alignment_score"]
    assert stats.metrics["mouth_path_transcript_aligned"] == 1.0
    jaw = np.asarray(driven["expression"])[:, JAW]
    bilabials = [v for v in driven["visemes"] if v["viseme"] == "bilabial"]
    assert len(bilabials) >= 4  # p, p, m, p/m of "Papa mange une pomme"
    for unit in bilabials:
        centre = int(round((unit["start_s"] + unit["end_s"]) / 2 * 25 - 0.5))
        assert jaw[centre] < 0.01, unit
    # The aligned "Papa" sits where espeak said it: after "Bonjour." and its pause.
    assert 0.6 < bilabials[0]["start_s"] < 1.6


def test_a_matching_script_is_aligned_and_a_wrong_one_falls_back(dubbed_title, tmp_path):
    runner, folder, _, _ = dubbed_title
    right, wrong = tmp_path / "right.txt", tmp_path / "wrong.srt"
    right.write_text(DUB_TEXT)
    wrong.write_text("1\n00:00:00,000 --> 00:00:03,000\nLes sanglots longs des violons de l'automne\n")
    for script, path in ((right, "script-aligned"), (wrong, "transcript-aligned")):
        work = tmp_path / script.stem
        work.mkdir()
        runner, urls = analyse_title(work, "t", "dub", folder / "clip.mp4", folder / "dub.wav", script=script)
        (driven,), _ = driven_rows(runner, work, urls, "t", params=EVERY_WORD)
        assert driven["mouth_path"] == path
        if path == "transcript-aligned":
            assert "the script does not match the audio" in driven["mouth_path_note"]


def test_without_any_text_the_model_drives_alone(dubbed_title, tmp_path):
    _, folder, _, _ = dubbed_title
    runner, urls = analyse_title(tmp_path, "t", "dub", folder / "clip.mp4", folder / "dub.wav", whisper_model=None)
    (driven,), _ = driven_rows(runner, tmp_path, urls, "t")
    assert (driven["mouth_path"], driven["alignment_score"], driven["visemes"]) == ("model-only", None, [])
    assert driven["mouth_path_note"] == "no script and no transcript"
    assert np.asarray(driven["expression"])[:, JAW].max() > 0.1


def test_the_mouth_shows_before_its_sound(dubbed_title, tmp_path, speech):
    """Every frame shows the mouth of the sound MOUTH_LEAD_S later: the driven jaw (model only, no
    source audio, so no calibration) is the un-led prediction moved 2 frames earlier at 25 fps."""
    _, folder, _, _ = dubbed_title
    runner, urls = analyse_title(tmp_path, "t", "dub", folder / "clip.mp4", folder / "dub.wav", whisper_model=None)
    (driven,), _ = driven_rows(runner, tmp_path, urls, "t")
    jaw = np.asarray(driven["expression"])[:, JAW]
    samples = fit_samples(read_audio(str(folder / "dub.wav"), SAMPLE_RATE), len(jaw), 25.0, SAMPLE_RATE)
    unled = mouth_curve(speech.analyse(samples), None, 25.0, len(jaw))[:, 0]
    assert round(MOUTH_LEAD_S * 25) == 2
    r, lag = best_lag(jaw, unled, 4)
    assert lag == -2 and r > 0.9, (lag, r)


def test_heard_early_and_timed_early_move_sound_and_times_together():
    samples = np.arange(10, dtype=np.float32)
    assert heard_early(samples, 100, 0.03).tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 0, 0]
    row = {"speech_segments": [{"start_s": 0.05, "end_s": 1.0}], "script": [{"start_s": None, "end_s": None, "text": "a"}],
           "words": [{"word": "a", "start_s": 0.5, "end_s": 0.7, "probability": 0.9}], "language": "fr"}
    early = timed_early(row, 0.08)
    assert early["speech_segments"] == [{"start_s": 0.0, "end_s": 0.92}]
    assert early["words"] == [{"word": "a", "start_s": 0.42, "end_s": 0.62, "probability": 0.9}]
    assert early["script"] == row["script"] and early["language"] == "fr"
    assert timed_early({**row, "words": None, "script": None}, 0.08)["words"] is None


def test_expression_scale_zero_keeps_the_mouth_at_rest(dubbed_title):
    (driven,), _ = drive(dubbed_title, expression_scale=0.0)
    assert np.abs(np.asarray(driven["expression"])[:, JAW]).max() < 1e-6


@pytest.mark.skipif(not TRAIN_CLIP.exists(), reason="needs ../shared/data")
def test_real_speech_drives_a_real_mouth_and_scale_zero_rests_after_trusted_calibration(tmp_path):
    """A real talking clip (a training clip) dubbed with its own audio: the speaker is found, the
    driven jaw follows the filmed one, the speaker's calibration is trusted, and expression_scale 0
    still holds the driven mouth at rest (the calibration's offset is applied before the scale,
    around the speaker's rest)."""
    runner, urls = analyse_title(tmp_path, "v", "dub", TRAIN_CLIP, TRAIN_CLIP, language="en")
    (track,) = [t for t in read_rows(urls["faces"], FACE_TRACKS) if t["dubbable"]]
    (driven,), stats = driven_rows(runner, tmp_path, urls, "v", language="en")
    filmed, jaw = np.asarray(track["expression"])[:, JAW], np.asarray(driven["expression"])[:, JAW]
    assert best_lag_r(jaw, filmed) > 0.3  # unrelated speech gives |r| < 0.15 on clips this long
    assert stats.metrics["calibration_jaw_r"] >= 0.3 and UNTRUSTED_CALIBRATION not in stats.dropped
    # The speaker is found speaking (active speaker detection) and driven over nearly all of the clip.
    assert (driven["driven_weight"] == 1).mean() > 0.8 and np.asarray(driven["speaker_probability"]).max() > 0.9
    (rested,), _ = driven_rows(runner, tmp_path, urls, "v", language="en", expression_scale=0.0)
    weight, rested_jaw = rested["driven_weight"], np.asarray(rested["expression"])[:, JAW]
    assert np.abs(rested_jaw[weight == 1]).max() < 1e-6
    assert np.array_equal(rested_jaw[weight == 0], filmed[weight == 0]), "undriven frames are exactly as filmed"


@pytest.fixture(scope="module")
def avatar_title(tmp_path_factory):
    """The astronaut portrait (PNG) analysed as an avatar title, with French speech."""
    import cv2

    folder = tmp_path_factory.mktemp("avatar")
    cv2.imwrite(str(folder / "portrait.png"), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    speech = synthesize("Bonjour, je suis astronaute. Papa aime la lune.", voice="fr")
    write_wav(speech, str(folder / "speech.wav"))
    runner, urls = analyse_title(folder, "a", "avatar", folder / "portrait.png", folder / "speech.wav")
    return runner, folder, urls, speech


def drive_avatar(avatar_title, **options):
    runner, folder, urls, _ = avatar_title
    (driven,), _ = driven_rows(runner, folder, urls, "a", **options)
    return {k: np.asarray(driven[k]) for k in ("expression", "pose", "blink", "frame_index")}


def test_avatar_talks_moves_and_blinks_for_the_length_of_the_audio(avatar_title):
    speech = avatar_title[3]
    driven = drive_avatar(avatar_title)
    frames = round(speech.duration_s * 25)
    assert len(driven["frame_index"]) == frames and driven["expression"].shape == (frames, 8)
    jaw = driven["expression"][:, JAW]
    assert jaw.max() > 0.1 and jaw.std() > 0.03, "the mouth moves with the speech"
    assert np.ptp(driven["pose"][:, 0]) > 1.0, "the head turns"
    assert (driven["blink"] > 0.5).any(axis=0).all(), "both eyes blink"
    again = drive_avatar(avatar_title)
    assert np.array_equal(again["pose"], driven["pose"]), "a pose style is reproducible"


def test_avatar_controls(avatar_title, tmp_path):
    still = drive_avatar(avatar_title, still=True)
    assert np.ptp(still["pose"], axis=0).max() < 1e-4
    styled = [drive_avatar(avatar_title, pose_style=s)["pose"][:, 0] for s in (1, 2)]
    assert not np.allclose(styled[0], styled[1])
    turned = drive_avatar(avatar_title, yaw=[0, 20, 0])
    base = turned["pose"][0, 0]
    assert turned["pose"][:, 0].max() - base == pytest.approx(20, abs=1.0)
    write_portrait_clip(tmp_path / "ref.mp4", [astronaut()], 1.0, fps=25, size=384)
    replayed = drive_avatar(avatar_title, ref_pose=str(tmp_path / "ref.mp4"), ref_blink=str(tmp_path / "ref.mp4"))
    assert np.ptp(replayed["pose"][:, 0]) < 3.0 and replayed["blink"].max() < 0.5  # a still portrait, eyes open
