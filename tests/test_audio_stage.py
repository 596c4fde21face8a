"""The audio stage on dub tracks in many formats and layouts, bad audio, VAD and subtitles."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import librosa
import numpy as np
import pytest

from dubline.flows.demo import astronaut, write_portrait_clip
from dubline.flows.localize import heard_language
from dubline.schemas.catalogue import OPTION_DEFAULTS
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import AUDIO_TRACKS
from dubline.stages.audio.stage import AudioStage
from dubline.stages.audio.subtitles import parse_srt
from dubline.stages.base import StageJob, TitleError
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.speech.espeak import synthesize, write_wav
from tests.conftest import CLIP_FPS, SHOT_SECONDS

FRAMES = round(2 * SHOT_SECONDS * CLIP_FPS)


@pytest.fixture(scope="module")
def titles_url(media, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("titles") / "titles.parquet")
    SequentialRunner().run(StageJob(ProbeStage, {}, url, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(media["two_shots"])},)))
    return url


@pytest.fixture(scope="module")
def speech():
    """English speech with silence around it, at 48 kHz: (samples, rate)."""
    spoken = synthesize("Good morning everyone. Today we talk about the weather.", voice="en", rate_wpm=200)
    samples = librosa.resample(spoken.samples, orig_sr=spoken.sample_rate, target_sr=48000)
    return np.concatenate([np.zeros(12000, np.float32), samples[: int(48000 * 1.9)]]), 48000


def encode(path, samples, rate, codec, layout, container=None):
    """Write mono ``samples`` with ``codec`` in ``layout`` (copied to every channel)."""
    channels = av.AudioLayout(layout).nb_channels
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        fmt = stream.codec_context.codec.audio_formats[0].name if stream.codec_context.codec.audio_formats else "fltp"
        planar = np.repeat(samples[None, :], channels, axis=0).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
        for converted in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))


def analyse(titles_url, audio_path, tmp_path, language="en", script=None, whisper_model=None):
    """The audio stage on one dub; no Whisper unless asked (it is the default of real runs)."""
    out = str(tmp_path / "audio.parquet")
    row = {"title_id": "t", "language": language, "dub_audio_url": str(audio_path), "titles_url": titles_url,
           "dub_script_url": str(script) if script else None,
           "options_json": json.dumps(OPTION_DEFAULTS), "subtitles_url": str(tmp_path / f"t.{language}")}
    stats = SequentialRunner().run(StageJob(AudioStage, {"whisper_model": whisper_model}, out, "t", rows=(row,)))
    return read_rows(out, AUDIO_TRACKS)[0], stats


@pytest.mark.parametrize(
    "name, codec, layout, container",
    [
        ("dub.wav", "pcm_s16le", "mono", None),
        ("dub.flac", "flac", "stereo", None),
        ("dub.mp3", "libmp3lame", "stereo", None),
        ("dub.m4a", "aac", "5.1", "mp4"),
        ("dub.opus", "libopus", "stereo", "ogg"),
    ],
)
def test_any_format_and_layout_gives_loudness_on_the_frame_clock(titles_url, speech, tmp_path, name, codec, layout, container):
    samples, rate = speech
    encode(tmp_path / name, samples, rate, codec, layout, container)
    track, _ = analyse(titles_url, tmp_path / name, tmp_path)
    loud = np.asarray(track["loudness_db"])
    assert loud.shape == (FRAMES,) and np.isfinite(loud).all()
    assert track["fps"] == CLIP_FPS and track["audio_fit"] == "padded"  # 2.15 s of audio, 2.4 s of picture
    assert loud[: int(0.2 * CLIP_FPS)].mean() < loud[int(0.5 * CLIP_FPS) : int(2.0 * CLIP_FPS)].mean() - 20, "leading silence is quiet"
    assert (loud[int(2.2 * CLIP_FPS) :] == -100.0).all(), "the padding is digital silence"
    (first, *_) = track["speech_segments"]
    assert 0.15 <= first["start_s"] <= 0.45


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(b""), "not readable audio"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 20), "not readable audio"),
        (lambda p: encode(p, np.full(48000, np.nan, np.float32), 48000, "pcm_f32le", "mono"), "NaN"),
        (lambda p: encode(p, np.zeros(48000 * 9, np.float32), 48000, "pcm_s16le", "mono"), "more than the tolerance"),
    ],
)
def test_bad_dub_audio_is_a_clear_title_error(titles_url, tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(TitleError, match=problem) as info:
        analyse(titles_url, path, tmp_path)
    assert str(info.value).startswith("t: [en]")


def test_video_without_audio_is_refused_as_dub(titles_url, media, tmp_path):
    with pytest.raises(TitleError, match="no audio stream"):
        analyse(titles_url, media["one_shot"], tmp_path)


def test_speech_cut_from_a_long_dub_is_measured_and_silence_is_not(titles_url, speech, tmp_path):
    """A dub 1.65 s longer than the 2.4 s picture: cut at the end; what the cut tail held of speech is
    reported (the run summary warns of it), a tail of silence reports 0."""
    samples, rate = speech  # 0.25 s of silence, then ~1.9 s of speech
    picture = np.zeros(int(rate * 2.4) - int(rate * 0.5), np.float32)
    encode(tmp_path / "late.wav", np.concatenate([picture, samples]), rate, "pcm_s16le", "mono")
    speech_then_silence = np.concatenate([picture, samples[: rate // 2], np.zeros(rate, np.float32)])  # ends at 2.4 s
    encode(tmp_path / "quiet.wav", speech_then_silence, rate, "pcm_s16le", "mono")
    late, late_stats = analyse(titles_url, tmp_path / "late.wav", tmp_path)
    assert late["audio_fit"] == "trimmed" and 1.2 < late_stats.metrics["dub_speech_cut_s"] < 1.95
    _, quiet_stats = analyse(titles_url, tmp_path / "quiet.wav", tmp_path)
    assert quiet_stats.metrics["dub_speech_cut_s"] == 0.0


def test_silent_dub_is_accepted_and_counted(titles_url, tmp_path):
    encode(tmp_path / "silent.wav", np.zeros(int(48000 * 2.4), np.float32), 48000, "pcm_s16le", "mono")
    track, stats = analyse(titles_url, tmp_path / "silent.wav", tmp_path)
    assert track["speech_segments"] == [] and stats.dropped["silent dub audio"] == 1


def test_whisper_writes_subtitles_and_an_english_only_model_leaves_the_language_unchecked(titles_url, speech, tmp_path):
    samples, rate = speech
    encode(tmp_path / "dub.wav", samples, rate, "pcm_s16le", "mono")
    track, stats = analyse(titles_url, tmp_path / "dub.wav", tmp_path, whisper_model="tiny.en-packaged")
    assert "morning" in track["transcript"].lower()
    # tiny.en hears every language as English: it cannot check one (tests/test_language_check.py).
    assert track["detected_language"] is None and track["language_matches"] is None
    assert stats.dropped == {"dub language not checked (English-only Whisper model)": 1}
    cues = parse_srt((tmp_path / "t.en.srt").read_text())
    assert cues and all(a.end_s <= b.start_s + 1e-6 for a, b in zip(cues, cues[1:]))
    assert (tmp_path / "t.en.vtt").read_text().startswith("WEBVTT")
    times = [w["start_s"] for w in track["words"]]
    assert times == sorted(times) and times[-1] <= FRAMES / CLIP_FPS


def test_the_default_whisper_transcribes_in_the_dub_language_and_flags_a_wrong_one(tmp_path):
    french = synthesize("Bonjour à tous. Aujourd'hui, nous allons parler du temps qu'il fera demain à Paris. "
                        "Il va pleuvoir toute la journée.", voice="fr+m3", rate_wpm=150)
    write_wav(french, str(tmp_path / "fr.wav"))
    write_portrait_clip(tmp_path / "clip.mp4", [astronaut()], french.duration_s, fps=CLIP_FPS, size=128)
    titles_url = str(tmp_path / "titles.parquet")
    SequentialRunner().run(StageJob(ProbeStage, {}, titles_url, "t", rows=({"title_id": "t", "mode": "dub", "source_url": str(tmp_path / "clip.mp4")},)))
    track, stats = analyse(titles_url, tmp_path / "fr.wav", tmp_path, language="fr", whisper_model="base-packaged")
    assert track["detected_language"] == "fr" and track["language_matches"] and track["transcript_language"] == "fr"
    assert "bonjour" in track["transcript"].lower()
    mislabelled, stats = analyse(titles_url, tmp_path / "fr.wav", tmp_path / "de", language="de", whisper_model="base-packaged")
    assert not mislabelled["language_matches"] and stats.dropped["dub language differs from the catalogue"] == 1
    # Whisper is sure it hears French, so the transcript is French, not a German mishearing.
    assert mislabelled["language_probability"] >= 0.8 and mislabelled["transcript_language"] == "fr"
    # The run summary's warning says what was heard (read from the manifest).
    assert heard_language(str(tmp_path / "de" / "audio.parquet")) == f"fr ({mislabelled['language_probability']:.2f})"


def test_a_dub_script_is_read_into_the_manifest(titles_url, speech, tmp_path):
    samples, rate = speech
    encode(tmp_path / "dub.wav", samples, rate, "pcm_s16le", "mono")
    script = tmp_path / "dub.srt"
    script.write_text("1\n00:00:00,250 --> 00:00:01,500\n<i>Good morning</i> everyone.\n\n"
                      "2\n00:00:01,600 --> 00:00:02,400\n- Today we talk about the weather.\n")
    track, _ = analyse(titles_url, tmp_path / "dub.wav", tmp_path, script=script)
    assert track["script_url"] == str(script)
    assert track["script"] == [{"start_s": 0.25, "end_s": 1.5, "text": "Good morning everyone."},
                               {"start_s": 1.6, "end_s": 2.4, "text": "Today we talk about the weather."}]
    without, _ = analyse(titles_url, tmp_path / "dub.wav", tmp_path / "none")
    assert without["script_url"] is None and without["script"] is None
