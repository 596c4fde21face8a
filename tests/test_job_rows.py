"""Typed job rows: validation in ``run_job`` and the cache-key inputs derived from a row."""

from __future__ import annotations

import json

import pytest

from dubline.stages.base import Stage, StageJob, run_job
from dubline.stages.coeffs.stage import CoeffsJob
from dubline.stages.composite.stage import CompositeJob
from dubline.stages.job_rows import key_inputs, manifest_key
from dubline.stages.render.stage import RenderJob
from dubline.stages.shots import ShotsStage


def _coeffs_row(tmp_path, **options) -> dict:
    return {"title_id": "t", "language": "fr", "titles_url": str(tmp_path / "probe" / "abc.parquet"),
            "faces_url": str(tmp_path / "faces" / "def.parquet"), "audio_url": str(tmp_path / "audio" / "0a1.parquet"),
            "options_json": json.dumps({"expression_scale": 1.0, "crf": 18, **options})}


def test_upstream_manifests_enter_the_key_by_their_key_and_places_not_at_all(tmp_path):
    row = {"title_id": "t", "language": "fr", "faces_url": "s3://b/run/manifests/faces/t/f00.parquet",
           "coeffs_url": "/run/manifests/coeffs/t/c01.parquet", "chunks_url": "/run/manifests/render/t/x.chunks"}
    assert key_inputs(RenderJob, row) == {"title_id": "t", "language": "fr", "faces_url": "f00", "coeffs_url": "c01",
                                         "frame_range": None}
    assert manifest_key("memory://run/manifests/probe/t/9f.parquet") == "9f"


def test_only_the_options_a_stage_reads_enter_its_key(tmp_path):
    base = key_inputs(CoeffsJob, _coeffs_row(tmp_path))
    assert base["options_json"] == {"expression_scale": 1.0}  # the encoder's CRF is not the mouth's business
    assert key_inputs(CoeffsJob, _coeffs_row(tmp_path, crf=30)) == base
    assert key_inputs(CoeffsJob, _coeffs_row(tmp_path, expression_scale=0.5)) != base


def test_files_enter_the_key_by_their_content(tmp_path):
    binding, audio = tmp_path / "speakers.yaml", tmp_path / "dub.wav"
    binding.write_text("- {shot: 0, track: 1, speaker: S1}\n")
    audio.write_bytes(b"RIFF....")
    with_binding = key_inputs(CoeffsJob, _coeffs_row(tmp_path, speaker_binding=str(binding)))
    binding.write_text("- {shot: 0, track: 2, speaker: S1}\n")  # same path, other content
    assert key_inputs(CoeffsJob, _coeffs_row(tmp_path, speaker_binding=str(binding))) != with_binding
    row = {"title_id": "t", "language": "fr", "titles_url": "/r/probe/t/a.parquet", "dub_audio_url": str(audio),
           "output_url": "/r/outputs/t/t.fr.mp4", "options_json": "{}"}
    first = key_inputs(CompositeJob, row)
    audio.write_bytes(b"RIFF!!!!")
    assert key_inputs(CompositeJob, row)["dub_audio_url"] != first["dub_audio_url"]
    assert first["render_url"] is None  # an optional upstream that is absent


class _EchoStage(Stage):
    name, version, output_schema = "echo", "1", ShotsStage.output_schema
    job_row = CoeffsJob
    seen: list[dict] = []

    def process_batch(self, rows):
        _EchoStage.seen += rows
        return []


def test_run_job_gives_the_stage_only_what_its_row_declares_and_refuses_the_rest(tmp_path):
    out = str(tmp_path / "out.parquet")
    run_job(_EchoStage(), StageJob(_EchoStage, {}, out, "t", rows=(_coeffs_row(tmp_path, crf=30),)))
    assert json.loads(_EchoStage.seen[0]["options_json"]) == {"expression_scale": 1.0}
    with pytest.raises(ValueError, match=r"(?s)echo t: bad job row: .*coeffs_urll.*Extra inputs are not permitted"):
        run_job(_EchoStage(), StageJob(_EchoStage, {}, out, "t", rows=({**_coeffs_row(tmp_path), "coeffs_urll": "x"},)))


def test_every_stage_declares_its_job_row_or_reads_a_manifest():
    import dubline.flows.tasks  # noqa: F401 - imports every stage the flows run

    def subclasses(cls: type) -> list[type]:
        return [s for sub in cls.__subclasses__() for s in (sub, *subclasses(sub))]

    stages = [s for s in subclasses(Stage) if s.__module__.startswith("dubline.stages.")]
    assert len(stages) >= 9
    assert all((s.job_row is None) != (s.input_schema is None) for s in stages), \
        [s.name for s in stages if (s.job_row is None) == (s.input_schema is None)]


class _FailsOnceStage(Stage):
    name, version, output_schema = "fails", "1", ShotsStage.output_schema
    job_row = CoeffsJob
    calls = 0

    def process_batch(self, rows):
        _FailsOnceStage.calls += 1
        self.drop("silent dub audio")
        self.count_work(frames=10)
        if _FailsOnceStage.calls == 1:
            raise RuntimeError("bad title")
        return []


def test_a_failed_job_leaves_nothing_in_the_next_jobs_stats(tmp_path):
    """A worker runs many jobs on one stage instance: what a failed job counted is not the next one's."""
    stage, out = _FailsOnceStage(), str(tmp_path / "out.parquet")
    with pytest.raises(RuntimeError):
        run_job(stage, StageJob(_FailsOnceStage, {}, out, "a", rows=(_coeffs_row(tmp_path),)))
    stats = run_job(stage, StageJob(_FailsOnceStage, {}, out, "b", rows=(_coeffs_row(tmp_path),)))
    assert stats.dropped == {"silent dub audio": 1} and stats.metrics == {"frames_processed": 10.0}
