"""Shared fixtures: generated media, a session-scoped local Ray and Prefect test harness."""

from __future__ import annotations

import os

# Quiet, offline, token-less local services; must be set before Ray or Prefect import.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from dubline.flows.demo import astronaut, grace_hopper, write_portrait_clip  # noqa: E402
from dubline.stages.sequential import SequentialRunner  # noqa: E402
from dubline.stages.speech.espeak import synthesize, write_wav  # noqa: E402

CLIP_FPS = 25
CLIP_SIZE = 256
SHOT_SECONDS = 1.2  # two shots: 30 frames each at 25 fps


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Generated inputs: portrait clips (two shots or one, silent; one shot with English speech),
    and French/German dubs."""
    folder = tmp_path_factory.mktemp("media")
    original = synthesize("Hello there, how are you?", voice="en")
    # Still portraits cannot be filmed speakers: with a soundtrack, active speaker detection would
    # rightly take them for listeners of an off-screen voice. Without one every face is dubbed.
    write_portrait_clip(folder / "two_shots.mp4", [astronaut(), grace_hopper()], SHOT_SECONDS,
                        fps=CLIP_FPS, size=CLIP_SIZE)
    write_portrait_clip(folder / "one_shot.mp4", [astronaut()], SHOT_SECONDS, fps=CLIP_FPS, size=CLIP_SIZE)
    write_portrait_clip(folder / "with_audio.mp4", [astronaut()], SHOT_SECONDS, fps=CLIP_FPS, audio=original,
                        size=CLIP_SIZE)
    write_wav(synthesize("Bonjour, comment allez-vous?", voice="fr"), str(folder / "dub.fr.wav"))
    write_wav(synthesize("Guten Tag, wie geht es?", voice="de"), str(folder / "dub.de.wav"))
    return {
        "two_shots": folder / "two_shots.mp4",
        "one_shot": folder / "one_shot.mp4",
        "with_audio": folder / "with_audio.mp4",
        "dub_fr": folder / "dub.fr.wav",
        "dub_de": folder / "dub.de.wav",
    }


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray with 2 CPUs for the whole session."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect with a temporary database and API for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


ROOT = Path(__file__).resolve().parents[1]


def readme_block_after(text: str, marker: str) -> list[str]:
    """Command lines of the first ```bash block after ``marker`` (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", text[text.index(marker):], flags=re.S).group(1)
    lines = [re.split(r"\s+#\s", line, maxsplit=1)[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="session")
def quick_start(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A new user's first minutes, run once for the session: README.md's Quick start `dubline demo`
    and the lines the README gives after it, each in a shell in one folder, exactly as printed
    (the venv active). Returns the folder and what each command printed (by its subcommand);
    fails if any of them exits non-zero."""
    folder = tmp_path_factory.mktemp("quick_start")
    readme = (ROOT / "README.md").read_text()
    lines = [readme_block_after(readme, "## Quick start")[-1], *readme_block_after(readme, "Then, in the same folder")]
    env = {name: value for name, value in os.environ.items()
           if name not in ("RAY_ADDRESS", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "CI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # what `source .venv/bin/activate` does
    printed = {}
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"`{line}`:\n{done.stdout}\n{done.stderr}"
        printed[line.split()[1]] = done.stdout
    return folder, printed


def write_silence(path: Path, seconds: float) -> Path:
    """A WAV file of ``seconds`` of digital silence (16 kHz mono), e.g. a dub with nothing said."""
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, round(16000 * seconds)), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture
def rows_sent_to(monkeypatch):
    """``rows_sent_to(stage_name)`` -> a list that collects the job rows the in-process runner is
    given for that stage from then on (what the CLI asked of it, seen from inside)."""
    def spy(stage_name: str) -> list[dict]:
        rows: list[dict] = []
        run = SequentialRunner.run

        def spying(runner, job, next_stage=None):
            if job.stage.name == stage_name:
                rows.extend(job.rows)
            return run(runner, job, next_stage)

        monkeypatch.setattr(SequentialRunner, "run", spying)
        return rows

    return spy


def decoded(url: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Every video frame (RGB) and all audio samples of a file, decoded."""
    with av.open(url) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(url) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio
