"""Prefect tasks: each runs one stage for one title (or title × language) and returns the URL of
the manifest it wrote. Work runs on the session's runner (Ray or in-process); finished outputs
found in the run folder are reused instead of recomputed."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from prefect import task

from dubline.cluster.policy import frame_ranges, policy_for
from dubline.flows import progress
from dubline.flows.run_folder import RunFolder, in_pipeline_order, stage_key
from dubline.schemas import storage
from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.catalogue import OPTION_DEFAULTS
from dubline.schemas.manifests import TITLES
from dubline.stages.audio.stage import AudioStage
from dubline.stages.base import Stage, StageJob, StageStats, TitleError, join_metrics
from dubline.stages.coeffs.stage import CoeffsStage
from dubline.stages.composite import CompositeStage
from dubline.stages.enhance import EnhanceStage
from dubline.stages.faces import FaceStage
from dubline.stages.faces import stage as faces_stage
from dubline.stages.job_rows import key_inputs, manifest_key
from dubline.stages.probe import ProbeStage
from dubline.stages.render import RenderStage
from dubline.stages.report import ReportStage
from dubline.stages.selfcheck import SelfCheckStage
from dubline.stages.sequential import SequentialRunner
from dubline.stages.shots import ShotsStage
from dubline.stages.speech.script import read_script


class Runner(Protocol):
    def run(self, job: StageJob, next_stage: type[Stage] | None = None) -> StageStats: ...
    def shutdown(self) -> None: ...


@dataclass
class Session:
    """What tasks of one flow run share in the driver: the run folder and the runner."""

    run: RunFolder
    runner: Runner


_SESSIONS: dict[str, Session] = {}


@contextlib.contextmanager
def open_session(out_url: str, executor: str = "ray", ray_address: str | None = None) -> Iterator[Session]:
    """Open the run folder and a runner for the duration of one flow run."""
    if executor == "ray":
        from dubline.cluster.connect import connect
        from dubline.cluster.ray_runner import RayRunner

        connect(ray_address)
        ray_runner = RayRunner()
        # Every title starts with probe: its worker (for the default background) starts while
        # Prefect creates the flow runs, ~1 s before the first probe job asks for it.
        ray_runner.prepare(ProbeStage, {"background": OPTION_DEFAULTS["background"]})
        runner: Runner = ray_runner
    elif executor == "local":
        runner = SequentialRunner()
    else:
        raise ValueError(f"unknown executor {executor!r} (use 'ray' or 'local')")
    session = Session(RunFolder(out_url), runner)
    _SESSIONS[session.run.url] = session
    try:
        yield session
    finally:
        runner.shutdown()
        _SESSIONS.pop(session.run.url, None)


def session_for(run_url: str) -> Session:
    return _SESSIONS[run_url.rstrip("/")]


def _job(
    run_url: str,
    stage: type[Stage],
    title_id: str,
    *,
    language: str | None = None,
    rows: tuple[dict[str, Any], ...] = (),
    input_url: str | None = None,
    params: dict[str, Any] | None = None,
    with_chunks: bool = False,
    next_stage: type[Stage] | None = None,
    part: str = "",
) -> tuple[str, str, dict[str, Any], bool]:
    """Run one job of ``stage`` unless its keyed output is already complete; returns the manifest
    URL, its key, the job's record (stats) and whether it ran now. ``part`` names a frame range
    ("range 2/4") in the log, and leaves the progress and run state to the caller.

    ``next_stage``: the stage (default parameters) that runs next on this title: the runner may
    start its worker while this job runs.

    The output's key comes from the stage, its parameters (``Stage.param_files`` by content) and
    its job: the typed rows' key inputs (``stages.job_rows.key_inputs``) or the key of the
    ``input_url`` manifest. ``with_chunks``: the stage writes frame chunks too; each row gets a
    ``chunks_url`` folder beside the manifest, so chunks share the output's key.
    """
    session = session_for(run_url)
    run, params = session.run, params or {}
    job = ([key_inputs(stage.job_row, row) for row in rows] if stage.job_row is not None
           else {"input": manifest_key(input_url or "")})
    keyed_params = {k: storage.fingerprint(v) if k in stage.param_files and v else v for k, v in params.items()}
    key = stage_key(stage, keyed_params, job)
    url = run.manifest_url(stage.name, title_id, key)
    if with_chunks:
        rows = tuple({**row, "chunks_url": url.removesuffix(".parquet") + ".chunks"} for row in rows)
    record = run.finished(stage.name, title_id, key)
    executed = record is None
    what = f"{stage.name} {title_id}{f' [{language}]' if language else ''}{f' {part}' if part else ''}"
    if executed:
        try:
            stats = session.runner.run(StageJob(stage, params, url, title_id, rows=rows, input_url=input_url), next_stage)
        except Exception as exc:
            run.count(stage.name, "failed")
            if not part:
                progress.advance(stage.name)
            run.log(f"{what} failed: {exc}")
            raise
        published = ([row[name] for row in read_rows(url, stage.output_schema) for name in stage.published if row[name]]
                     if stage.published else [])  # only stages that publish files read their output back
        run.mark_finished(stage.name, title_id, key, stats, published)
        record = stats.to_dict()
    run.count(stage.name, "executed" if executed else "skipped")
    run.log(f"{what} " + (f"done in {record['seconds']:.2f} s on {record['worker']}" if executed else f"reused {key}"))
    return url, key, record, executed


def _execute(run_url: str, stage: type[Stage], title_id: str, *, language: str | None = None, **job: Any) -> str:
    """Run ``stage``'s job for a title (``_job``'s arguments) and record it in the run state;
    returns the manifest URL."""
    url, key, record, executed = _job(run_url, stage, title_id, language=language, **job)
    _record(run_url, stage, title_id, language, key, record, executed)
    return url


def _title_ranges(stage: type[Stage], titles_url: str, seekable: bool = False, align: int = 1) -> list[tuple[int, int]]:
    """The frame ranges ``stage`` runs a title in (``cluster.policy.frame_ranges``, starting on
    multiples of ``align`` frames); none for a still or an avatar (its length is the dub's), nor,
    where the stage decodes the video (``seekable``), for a source with no keyframe but its first
    to start decoding at (e.g. VFR)."""
    (title,) = read_rows(titles_url, TITLES)
    if title["still"] or title["mode"] == "avatar" or (seekable and len(title["keyframe_index"]) < 2):
        return []
    return frame_ranges(stage.name, title["frame_count"], title["fps"], align)


def _writes_chunks(stage: type[Stage]) -> bool:
    """Whether ``stage``'s jobs write frame chunks (their row has a ``chunks_url``)."""
    return "chunks_url" in stage.job_row.model_fields


def _run_ranges(run_url: str, stage: type[Stage], title_id: str, ranges: list[tuple[int, int]], *,
                language: str | None, row: dict[str, Any], next_stage: type[Stage] | None
                ) -> list[tuple[str, str, dict[str, Any], bool]]:
    """One job of ``stage`` per frame range, as many at once as the runner takes (``_job``'s
    results, in range order). Each range is a job of its own, with its own key and completion
    marker: a run stopped midway resumes with the ranges that had not finished. A failed range
    fails the title once every range has ended, so the finished ones are kept."""
    at_once = min(len(ranges), policy_for(stage.name).max_workers)  # more would only wait for a worker
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix=f"{stage.name}-ranges") as pool:
        futures = [pool.submit(_job, run_url, stage, title_id, language=language,
                               rows=({**row, "frame_range": frame_range},), with_chunks=_writes_chunks(stage),
                               next_stage=next_stage,
                               part=f"range {i + 1}/{len(ranges)} (frames {frame_range[0]}-{frame_range[1] - 1})")
                   for i, frame_range in enumerate(ranges)]
        wait(futures)
    try:
        return [future.result() for future in futures]
    except Exception:
        progress.advance(stage.name)
        raise


def _ranges_record(records: list[dict[str, Any]], counted: tuple[str, ...] = ()) -> dict[str, Any]:
    """One stage record from the records of a title's range jobs (and join): seconds, rows and
    dropped items added up, figures joined (``join_metrics``), every worker named."""
    return {"seconds": round(sum(r["seconds"] for r in records), 4), "rows_in": sum(r["rows_in"] for r in records),
            "dropped": dict(sum((Counter(r["dropped"]) for r in records), Counter())),
            "metrics": join_metrics([r["metrics"] for r in records], counted),
            "worker": ", ".join(dict.fromkeys(r["worker"] for r in records))}


def _execute_ranges(run_url: str, stage: type[Stage], title_id: str, titles_url: str, *, language: str | None,
                    row: dict[str, Any], join: Callable[[list[list[dict[str, Any]]]], list[dict[str, Any]]],
                    next_stage: type[Stage] | None = None) -> str:
    """Run ``stage`` for a title in frame ranges (``_run_ranges``) and ``join`` their outputs
    (rows of each range, in range order) into the manifest one job would have written; returns
    its URL. A short title (or a still) is one job."""
    ranges = _title_ranges(stage, titles_url)
    if len(ranges) <= 1:
        return _execute(run_url, stage, title_id, language=language, rows=(row,), with_chunks=_writes_chunks(stage),
                        next_stage=next_stage)
    started = time.perf_counter()
    parts = _run_ranges(run_url, stage, title_id, ranges, language=language, row=row, next_stage=next_stage)
    run = session_for(run_url).run
    key = stage_key(stage, {}, {"ranges": [part_key for _, part_key, _, _ in parts]})
    url = run.manifest_url(stage.name, title_id, key)
    record = run.finished(stage.name, title_id, key)
    if record is None:
        joining = time.perf_counter()
        try:
            joined = join([read_rows(part_url, stage.output_schema) for part_url, *_ in parts])
            write_manifest(joined, stage.output_schema, url)
        except Exception as exc:
            run.count(stage.name, "failed")
            progress.advance(stage.name)
            run.log(f"{stage.name} {title_id}{f' [{language}]' if language else ''} join failed: {exc}")
            raise
        joined_record = _ranges_record([part_record for _, _, part_record, _ in parts], stage.counted_metrics)
        joined_record["seconds"] = round(joined_record["seconds"] + time.perf_counter() - joining, 4)
        stats = StageStats(stage=stage.name, title_id=title_id, rows_out=len(joined), **joined_record)
        run.mark_finished(stage.name, title_id, key, stats)
        record = stats.to_dict()
    # seconds: the ranges' jobs added up; wall_seconds: from the first range's start to the join
    record = {**record, "ranges": len(ranges), "wall_seconds": round(time.perf_counter() - started, 4)}
    _record(run_url, stage, title_id, language, key, record, any(executed for *_, executed in parts))
    return url


def _record(run_url: str, stage: type[Stage], title_id: str, language: str | None, key: str,
            record: dict[str, Any], executed: bool) -> None:
    """A finished stage of a title in the progress display and the run state."""
    progress.advance(stage.name)
    session_for(run_url).run.update_stage(
        title_id,
        language,
        stage.name,
        {
            "key": key,
            "state": "done",
            "executed": executed,
            **{k: record.get(k) for k in ("rows_in", "rows_out", "dropped", "metrics", "seconds", "worker")},
            **{k: record[k] for k in ("ranges", "wall_seconds") if k in record},
            "finished_at": round(time.time(), 3),  # Unix s, when the driver saw it done: run timelines, benchmarks
        },
    )


@task(name="probe", task_run_name="probe-{title_id}")
def probe(run_url: str, title_id: str, mode: str, source_url: str, background: str) -> str:
    """The source's facts; ``background`` (a colour option) goes under a portrait's transparent pixels."""
    row = {"title_id": title_id, "mode": mode, "source_url": source_url}
    return _execute(run_url, ProbeStage, title_id, rows=(row,), params={"background": background}, next_stage=ShotsStage)


@task(name="shots", task_run_name="shots-{title_id}")
def shots(run_url: str, title_id: str, titles_url: str) -> str:
    return _execute(run_url, ShotsStage, title_id, input_url=titles_url, next_stage=FaceStage)


@task(name="faces", task_run_name="faces-{title_id}")
def faces(run_url: str, title_id: str, titles_url: str, shots_url: str) -> str:
    """Face tracks and crops; a title longer than the faces policy's ``range_s`` is analysed in
    ranges of whole track segments, each with its crops, and one join job numbers the tracks."""
    row = {"title_id": title_id, "titles_url": titles_url, "shots_url": shots_url,
           "segment_frames": faces_stage.SEGMENT_FRAMES}
    ranges = _title_ranges(FaceStage, titles_url, seekable=True, align=row["segment_frames"])
    if len(ranges) <= 1:
        return _execute(run_url, FaceStage, title_id, rows=(row,), with_chunks=True)
    return _execute_ranges_and_join(run_url, FaceStage, title_id, ranges, language=None, row=row, joined_by="ranges",
                                    next_stage=None)


@task(name="audio", task_run_name="audio-{title_id}-{language}")
def audio(run_url: str, title_id: str, language: str, titles_url: str, dub_audio_url: str, options: dict,
          whisper_model: str | None, dub_script_url: str | None) -> str:
    """The dub audio's analysis; ``dub_script_url`` is the dub's text (.txt/.srt/.vtt) or None.

    Raises TitleError for a script that cannot be read as text (before any work is done)."""
    run = session_for(run_url).run
    if dub_script_url:
        try:
            read_script(dub_script_url)
        except (ValueError, OSError) as exc:
            raise TitleError(title_id, f"[{language}] {exc}") from exc
    row = {
        "title_id": title_id,
        "language": language,
        "dub_audio_url": dub_audio_url,
        "dub_script_url": dub_script_url,
        "titles_url": titles_url,
        "options_json": json.dumps(options, sort_keys=True),
        "subtitles_url": run.output_url(title_id, language).removesuffix(".mp4"),
    }
    return _execute(run_url, AudioStage, title_id, language=language, rows=(row,),
                    params={"whisper_model": whisper_model}, next_stage=CoeffsStage)


@task(name="coeffs", task_run_name="coeffs-{title_id}-{language}")
def coeffs(run_url: str, title_id: str, language: str, titles_url: str, faces_url: str, audio_url: str,
           options: dict) -> str:
    row = {"title_id": title_id, "language": language, "titles_url": titles_url, "faces_url": faces_url,
           "audio_url": audio_url, "options_json": json.dumps(options, sort_keys=True)}
    return _execute(run_url, CoeffsStage, title_id, language=language, rows=(row,), next_stage=RenderStage)


@task(name="render", task_run_name="render-{title_id}-{language}")
def render(run_url: str, title_id: str, language: str, titles_url: str, faces_url: str, coeffs_url: str,
           enhanced: bool = False) -> str:
    """The re-driven faces, in frame ranges on a long title; ``enhanced``: the enhance stage runs
    next (it has weights), else the composite does (enhance passes the crops through)."""
    row = {"title_id": title_id, "language": language, "faces_url": faces_url, "coeffs_url": coeffs_url}
    return _execute_ranges(run_url, RenderStage, title_id, titles_url, language=language, row=row,
                           join=RenderStage.join_ranges, next_stage=None if enhanced else CompositeStage)


@task(name="enhance", task_run_name="enhance-{title_id}-{language}")
def enhance(run_url: str, title_id: str, language: str, render_url: str, faces_url: str,
            enhancer_weights: str | None) -> str:
    row = {"title_id": title_id, "language": language, "render_url": render_url, "faces_url": faces_url}
    return _execute(run_url, EnhanceStage, title_id, language=language, rows=(row,), with_chunks=True,
                    params={"weights": enhancer_weights}, next_stage=CompositeStage)


@task(name="composite", task_run_name="composite-{title_id}-{language}")
def composite(
    run_url: str, title_id: str, language: str, titles_url: str, dub_audio_url: str, options: dict,
    render_url: str | None = None, faces_url: str | None = None,
) -> str:
    row = {
        "title_id": title_id,
        "language": language,
        "titles_url": titles_url,
        "dub_audio_url": dub_audio_url,
        "output_url": session_for(run_url).run.output_url(title_id, language),
        "options_json": json.dumps(options, sort_keys=True),
        "render_url": render_url,
        "faces_url": faces_url,
    }
    ranges = _title_ranges(CompositeStage, titles_url, seekable=True)
    if len(ranges) <= 1:
        return _execute(run_url, CompositeStage, title_id, language=language, rows=(row,), next_stage=SelfCheckStage)
    # Segments per range, then one job that joins them with the audio into the output.
    return _execute_ranges_and_join(run_url, CompositeStage, title_id, ranges, language=language, row=row,
                                    joined_by="segments", next_stage=SelfCheckStage)


def _execute_ranges_and_join(run_url: str, stage: type[Stage], title_id: str, ranges: list[tuple[int, int]], *,
                             language: str | None, row: dict[str, Any], joined_by: str,
                             next_stage: type[Stage] | None) -> str:
    """Run ``stage`` for a title in frame ranges (``_run_ranges``), then one job of it that is given
    the ranges' manifests in its row's ``joined_by`` field and writes the title's output; returns
    that output's URL."""
    started = time.perf_counter()
    parts = _run_ranges(run_url, stage, title_id, ranges, language=language, row=row, next_stage=None)
    try:
        url, key, record, executed = _job(run_url, stage, title_id, language=language, next_stage=next_stage,
                                          rows=({**row, joined_by: [part_url for part_url, *_ in parts]},),
                                          with_chunks=_writes_chunks(stage), part="join")
    except Exception:
        progress.advance(stage.name)
        raise
    record = {**record, **_ranges_record([part_record for _, _, part_record, _ in parts] + [record], stage.counted_metrics),
              "ranges": len(ranges), "wall_seconds": round(time.perf_counter() - started, 4)}
    _record(run_url, stage, title_id, language, key, record, executed or any(p[3] for p in parts))
    return url


@task(name="selfcheck", task_run_name="selfcheck-{title_id}-{language}")
def selfcheck(run_url: str, title_id: str, language: str, titles_url: str, faces_url: str, coeffs_url: str,
              outputs_url: str) -> str:
    """The face meshes of the dubbed faces on the output video, in frame ranges on a long title."""
    row = {"title_id": title_id, "language": language, "titles_url": titles_url, "faces_url": faces_url,
           "coeffs_url": coeffs_url, "outputs_url": outputs_url}
    ranges = _title_ranges(SelfCheckStage, titles_url)
    if len(ranges) <= 1:
        return _execute(run_url, SelfCheckStage, title_id, language=language, rows=(row,), next_stage=ReportStage)
    return _execute_ranges_and_join(run_url, SelfCheckStage, title_id, ranges, language=language, row=row,
                                    joined_by="ranges", next_stage=ReportStage)


@task(name="report", task_run_name="report-{title_id}-{language}")
def report(run_url: str, title_id: str, language: str, upstream: dict[str, str]) -> str:
    """The per-language report; ``upstream`` holds the manifest URLs of titles, shots, faces,
    audio, coeffs, outputs (composite) and selfcheck."""
    run = session_for(run_url).run
    title_state = run.state["titles"].get(title_id, {})
    stages = {**title_state.get("stages", {}), **title_state.get("languages", {}).get(language, {}).get("stages", {})}
    row = {
        "title_id": title_id,
        "language": language,
        **{f"{name}_url": url for name, url in upstream.items()},
        "report_url": run.output_url(title_id, language).removesuffix(".mp4") + ".report",
        "stages_json": json.dumps(in_pipeline_order(stages), default=str),
    }
    return _execute(run_url, ReportStage, title_id, language=language, rows=(row,))
