"""report: what a finished dub looks like, per title and language (HTML with plots, and JSON).

The lip-sync self-check correlates the mouth opening measured on the *output* video (the face
meshes of the ``selfcheck`` stage, inside each dubbed track's boxes) with the jaw_open the
coefficient stage asked for: a renderer or compositor that lost the motion shows up here even when
every stage "succeeded". Only the frames the dub drives count (a listener, or a speaker between
turns, keeps the filmed mouth); the speaker timeline shows who speaks when.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from typing import Any

import numpy as np

from dubline.schemas import storage
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, FACE_TRACKS, OUTPUTS, REPORTS, SHOTS, TITLES
from dubline.stages.base import Resources, Stage
from dubline.stages.job_rows import JobRow, Place, Upstream
from dubline.stages.lipsync.mouth import MouthCurve, mouth_curve, pearson
from dubline.stages.lipsync.sample import SELF_CHECK_WINDOW, measured_curves, sampled_boxes


class ReportJob(JobRow):
    language: str
    titles_url: Upstream
    shots_url: Upstream
    faces_url: Upstream
    audio_url: Upstream
    coeffs_url: Upstream
    outputs_url: Upstream
    selfcheck_url: Upstream  # the face meshes measured on the output
    report_url: str  # path without extension
    #: the run's stage records of this title and language (timings, counts): for the record only
    stages_json: Place

class ReportStage(Stage):
    """One row per (title, language) -> one ``reports`` row, plus ``<report_url>.html`` and ``.json``.

    Its job row is a ``ReportJob``; ``stages_json`` holds the run's stage records of this title
    and language in pipeline order, as [name, record] pairs: seconds, rows, dropped items, metrics.
    """

    name = "report"
    # 2: who speaks when; only driven frames are measured; 3: windows of a long title; 4: the meshes
    # come from the selfcheck stage; 5: the timeline's word labels never overlap
    version = "5"
    resources = Resources(cpus=1.0, memory_gb=1.0)
    output_schema = REPORTS
    job_row = ReportJob
    published = ("html_url", "json_url")

    def setup(self) -> None:
        from dubline.stages.report import plots  # matplotlib: in the report's workers, not the flow's driver

        self._plots = plots

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._report(row) for row in rows]

    def _report(self, row: dict[str, Any]) -> dict[str, Any]:
        (title,) = read_rows(row["titles_url"], TITLES)
        (audio,) = read_rows(row["audio_url"], AUDIO_TRACKS)
        (output,) = read_rows(row["outputs_url"], OUTPUTS)
        shots = read_rows(row["shots_url"], SHOTS)
        faces = {t["track_id"]: t for t in read_rows(row["faces_url"], FACE_TRACKS, without=("landmarks",))}
        every = read_rows(row["coeffs_url"], DRIVEN_COEFFS)
        driven = [d for d in every if np.any(d["driven_weight"] > 0)]  # the faces the dub re-drove
        avatar = title["mode"] == "avatar"
        fps = output["fps"]

        sample = None if avatar else sampled_boxes(faces, driven)
        measured = measured_curves(row["selfcheck_url"])
        nothing = mouth_curve([])  # a dubbed track on whose sampled frames the mesh found no face
        tracks = [self._track(d, faces[d["track_id"]], measured.get(0 if avatar else d["track_id"], nothing), avatar)
                  for d in driven]
        weights = [t["frames_measured"] for t in tracks if np.isfinite(t["lipsync_r"])]
        lipsync_r = (float(np.average([t["lipsync_r"] for t in tracks if np.isfinite(t["lipsync_r"])], weights=weights))
                     if weights and sum(weights) else None)
        skipped = [{"track_id": t["track_id"], "shot_index": t["shot_index"], "reason": t["skip_reason"]}
                   for t in faces.values() if not t["dubbable"]]
        skipped += [{"track_id": d["track_id"], "shot_index": d["shot_index"], "reason": LEFT_AS_FILMED}
                    for d in every if not np.any(d["driven_weight"] > 0)]
        summary = {
            "title_id": row["title_id"],
            "language": row["language"],
            "mode": title["mode"],
            "video_url": output["video_url"],
            "output": {k: output[k] for k in ("width", "height", "fps", "frame_count", "duration_s", "audio_fit",
                                              "audio_source_s", "faces_dubbed")},
            "lipsync_r": lipsync_r,
            # frames of the title the dub drives, and how many of them the self-check measured
            # windows of ``window`` frames, one in every ``every`` of each track (1: all measured)
            "self_check_frames": None if sample is None else {"driven": sample.driven, "measured": sample.measured,
                                                              "window": SELF_CHECK_WINDOW, "every": sample.every},
            "tracks": [{**{k: v for k, v in t.items() if not k.startswith("_")}, "curves": _rounded(t["curves"])}
                       for t in tracks],
            "tracks_skipped": skipped,
            "shots": self._shots(shots, faces.values(), {t["track_id"] for t in tracks}),
            "speakers": [_speaker_summary(d, fps) for d in every],
            "stages": dict(json.loads(row["stages_json"])),
            "audio": {
                "duration_s": audio["duration_s"],
                "audio_fit": audio["audio_fit"],
                "speech_segments": [[s["start_s"], s["end_s"]] for s in audio["speech_segments"]],
                "transcript": audio["transcript"],
                "script_url": audio["script_url"],
                "detected_language": audio["detected_language"],
                "language_probability": audio["language_probability"],
                "language_matches": audio["language_matches"],
                "subtitles": [u for u in (audio["srt_url"], audio["vtt_url"]) if u],
            },
        }
        plots = self._plots
        energy = np.asarray(audio["loudness_db"], dtype=np.float32)
        figures = {
            **({} if avatar else {"Who speaks when": plots.speaker_timeline(
                fps, len(energy), [(s["start_s"], s["end_s"]) for s in shots], summary["audio"]["speech_segments"],
                [{"label": f"shot {d['shot_index']} · track {d['track_id']}", "frame_index": d["frame_index"],
                  "probability": d["speaker_probability"], "driven_weight": d["driven_weight"]} for d in every],
                audio["words"])}),
            "Lip sync": plots.lipsync_figure(fps, energy, summary["audio"]["speech_segments"],
                                             [t["curves"] for t in tracks]),
            **{
                f"Coefficients of track {t['track_id']}": plots.coefficients_figure(
                    fps, f"track {t['track_id']}", t["curves"]["frame_index"], t["_source_expression"],
                    t["_driven_expression"], t["_driven_pose"])
                for t in tracks[:4]
            },
        }
        html_url, json_url = row["report_url"] + ".html", row["report_url"] + ".json"
        storage.write_text(json_url, json.dumps(plain_json(summary), indent=1, allow_nan=False))
        storage.write_text(html_url, render_html(summary, figures))
        self.report(tracks_measured=len(tracks), **({"lipsync_r": lipsync_r} if lipsync_r is not None else {}),
                    **({"self_check_share": sample.measured / sample.driven} if sample and sample.driven else {}))
        return {
            "title_id": row["title_id"],
            "language": row["language"],
            "html_url": html_url,
            "json_url": json_url,
            "video_url": output["video_url"],
            "tracks_dubbed": len(tracks),
            "tracks_skipped": len(skipped),
            "lipsync_r": lipsync_r,
        }

    @staticmethod
    def _track(driven: dict[str, Any], face: dict[str, Any], measured: MouthCurve, avatar: bool) -> dict[str, Any]:
        frames = np.asarray(driven["frame_index"])
        jaw = np.asarray(driven["expression"])[:, 0]
        on_output = measured.at(frames)  # NaN where not driven: those frames are the filmed ones
        source = None if avatar else np.asarray(face["expression"])
        r = pearson(jaw, on_output)
        curves = {"label": f"track {driven['track_id']}", "frame_index": frames, "driven": jaw, "output": on_output,
                  "source": None if source is None else source[:, 0]}
        return {
            "track_id": driven["track_id"],
            "shot_index": driven["shot_index"],
            "frames": len(frames),
            "frames_measured": int(np.isfinite(on_output).sum()),
            "lipsync_r": r,
            "mouth_path": driven["mouth_path"],
            "mouth_path_note": driven["mouth_path_note"],
            "alignment_score": driven["alignment_score"],
            "mouth_open_driven_mean": float(jaw.mean()),
            "mouth_open_output_mean": float(np.nanmean(on_output)) if np.isfinite(on_output).any() else None,
            "curves": curves,
            "_source_expression": source,
            "_driven_expression": np.asarray(driven["expression"]),
            "_driven_pose": np.asarray(driven["pose"]),
        }

    @staticmethod
    def _shots(shots: list[dict[str, Any]], faces, dubbed: set[int]) -> list[dict[str, Any]]:
        rows = []
        for shot in shots:
            in_shot = [t for t in faces if t["shot_index"] == shot["shot_index"]]
            rows.append({
                "shot_index": shot["shot_index"],
                "start_s": shot["start_s"],
                "end_s": shot["end_s"],
                "frames": shot["end_frame"] - shot["start_frame"],
                "tracks": len(in_shot),
                "tracks_dubbed": sum(t["track_id"] in dubbed for t in in_shot),
                "skipped": dict(Counter(t["skip_reason"].split(" (")[0] if t["skip_reason"] else "left as filmed"
                                        for t in in_shot if t["track_id"] not in dubbed)),
            })
        return rows


#: Why a dubbable face was not dubbed at all: active speaker detection (or the speaker binding) never
#: gave it a turn of the dub, and it never spoke in the source while the dub did.
LEFT_AS_FILMED = "left as filmed: not the speaker while the dub speaks (who speaks when)"


def _speaker_summary(driven: dict[str, Any], fps: float) -> dict[str, Any]:
    """One face's share of who speaks when, for the JSON report: seconds it speaks in the source
    (probability ≥ 0.5), seconds the dub drives it, and its stem's speaker."""
    probability = driven["speaker_probability"]
    weight = np.asarray(driven["driven_weight"])
    return {
        "track_id": driven["track_id"],
        "shot_index": driven["shot_index"],
        "speaking_s": None if probability is None else float(np.count_nonzero(np.asarray(probability) >= 0.5) / fps),
        "driven_s": float(np.count_nonzero(weight > 0) / fps),
        "speaker": driven["speaker"],
    }


def _rounded(curves: dict[str, Any]) -> dict[str, list]:
    """A track's curves for the JSON report: 4 decimals, without the plot label and absent curves."""
    return {k: np.round(np.asarray(v, dtype=np.float64), 4).tolist() for k, v in curves.items()
            if k != "label" and v is not None}


def plain_json(value: Any) -> Any:
    """Plain JSON values from numpy scalars and arrays; NaN becomes null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not np.isfinite(value) else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items()) or "–"
    return str(value)


def render_html(summary: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The report page: a headline, tables, and the figures embedded as PNG."""
    title = f"{summary['title_id']} [{summary['language']}]"
    r = summary["lipsync_r"]
    audio = summary["audio"]
    language_check = (
        "not checked (Whisper turned off, or an English-only model, which hears every language as English)"
        if audio["detected_language"] is None
        else f"detected {audio['detected_language']} (p={audio['language_probability']:.2f}): "
        + ("matches the catalogue" if audio["language_matches"] else "DOES NOT match the catalogue")
    )
    stage_rows = [
        [name, s.get("seconds"), s.get("executed"), s.get("rows_in"), s.get("rows_out"), s.get("dropped"),
         {k: v for k, v in (s.get("metrics") or {}).items()}]
        for name, s in summary["stages"].items()
    ]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>dubline report: {html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}th{background:#f2f2f2}"
        "img{max-width:100%}.big{font-size:1.3em}</style></head><body>",
        f"<h1>dubline report: {html.escape(title)}</h1>",
        f"<p class='big'>Lip-sync self-check: r = {_cell(r)} between the driven mouth opening and the one "
        f"measured on the output ({len(summary['tracks'])} dubbed track(s), {len(summary['tracks_skipped'])} skipped"
        + (f"; {frames['measured']} of the {frames['driven']} driven frames measured, in windows of "
           f"{frames['window']} frames, one in every {frames['every']} of each track"
           if (frames := summary["self_check_frames"]) and frames["measured"] < frames["driven"]
           else "") + ").</p>",
        f"<p>Output: <a href='{html.escape(summary['video_url'])}'>{html.escape(summary['video_url'])}</a> — "
        + html.escape(_cell(summary["output"])) + "</p>",
        "<h2>Tracks</h2>",
        _table(["track", "shot", "frames", "measured on output", "lip-sync r", "mean opening driven", "mean opening output",
                "mouth made from", "alignment score", "why"],
               [[t["track_id"], t["shot_index"], t["frames"], t["frames_measured"], t["lipsync_r"],
                 t["mouth_open_driven_mean"], t["mouth_open_output_mean"], t["mouth_path"], t["alignment_score"],
                 t["mouth_path_note"] or None] for t in summary["tracks"]]),
        "<p>The mouth is made from the dub's script aligned to its audio (<i>script-aligned</i>), else from "
        "Whisper's transcript aligned to it (<i>transcript-aligned</i>), else from the audio->mouth model alone "
        "(<i>model-only</i>); aligned p/b/m close the lips.</p>",
        _table(["skipped track", "shot", "reason"],
               [[t["track_id"], t["shot_index"], t["reason"]] for t in summary["tracks_skipped"]])
        if summary["tracks_skipped"] else "",
    ]
    for name, png in figures.items():
        parts += [f"<h2>{html.escape(name)}</h2>",
                  f"<img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"]
    parts += [
        "<h2>Shots</h2>",
        _table(["shot", "start (s)", "end (s)", "frames", "tracks", "dubbed", "skipped"],
               [[s["shot_index"], s["start_s"], s["end_s"], s["frames"], s["tracks"], s["tracks_dubbed"], s["skipped"]]
                for s in summary["shots"]]),
        "<h2>Stages</h2>",
        _table(["stage", "seconds", "executed now", "rows in", "rows out", "dropped", "metrics"], stage_rows),
        "<h2>Dub audio and transcript</h2>",
        f"<p>{html.escape(_cell({k: audio[k] for k in ('duration_s', 'audio_fit')}))}; "
        f"speech segments: {len(audio['speech_segments'])}; language check: {html.escape(language_check)}</p>",
        f"<p>Dub script: {html.escape(audio['script_url'] or 'none')}</p>",
        f"<blockquote>{html.escape(audio['transcript'] or '(no transcript)')}</blockquote>",
        "</body></html>",
    ]
    return "\n".join(parts)
