"""``dubline inspect``: a contact sheet of a title's face analysis (mesh, pose axes, track ids) and,
per dubbed language, its speaker timeline (who speaks when, by shot and track): what an operator
looks at before binding tracks to speakers."""

from __future__ import annotations

import cv2
import numpy as np

from flows.run_folder import RunFolder
from schemas import storage
from schemas.manifest_io import read_rows
from schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, FACE_TRACKS, SHOTS, TITLES
from stages.faces.draw import draw_faces
from stages.media import rgb_frames
from stages.report.plots import speaker_timeline

TILE = 360


def inspect_title(run_url: str, title_id: str, frames: int = 6) -> str:
    """Draw the faces of ``frames`` evenly spaced frames of ``title_id``; returns the PNG's URL."""
    run = RunFolder(run_url)
    title_state = run.state["titles"].get(title_id)
    if title_state is None:
        raise ValueError(f"{run_url} has no title {title_id!r} (titles: {', '.join(sorted(run.state['titles']))})")
    stages = title_state.get("stages", {})
    if "faces" not in stages:
        raise ValueError(f"{title_id}: face analysis has not finished in {run_url}")
    (title,) = read_rows(run.manifest_url("probe", title_id, stages["probe"]["key"]), TITLES)
    tracks = read_rows(run.manifest_url("faces", title_id, stages["faces"]["key"]), FACE_TRACKS)

    wanted = set(np.linspace(0, title["frame_count"] - 1, frames).round().astype(int).tolist())
    tiles = []
    for index, rgb in rgb_frames(title["source_url"]):
        if index not in wanted:
            continue
        faces = []
        for track in tracks:
            if track["frame_index"][0] <= index <= track["frame_index"][-1]:
                i = index - track["frame_index"][0]
                faces.append({"track_id": track["track_id"], "dubbable": track["dubbable"],
                              "landmarks": track["landmarks"][i], "pose": track["pose"][i]})
        tile = draw_faces(rgb, faces)
        scale = TILE / max(tile.shape[:2])
        tile = cv2.resize(tile, (round(tile.shape[1] * scale), round(tile.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        tile = cv2.copyMakeBorder(tile, 0, TILE - tile.shape[0], 0, TILE - tile.shape[1], cv2.BORDER_CONSTANT)
        cv2.putText(tile, f"frame {index}", (8, TILE - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    columns = 3
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    assert ok, "PNG encoding failed"
    url = storage.join(run.url, "inspect", f"{title_id}.png")
    storage.write_bytes(url, png.tobytes())
    return url


def speaker_timelines(run_url: str, title_id: str) -> list[str]:
    """Draw the speaker timeline of every language of ``title_id`` whose coefficients are finished
    (``inspect/<title>.<language>.speakers.png``); returns their URLs (none for an avatar)."""
    run = RunFolder(run_url)
    title_state = run.state["titles"].get(title_id, {})
    stages = title_state.get("stages", {})
    if "probe" not in stages or "shots" not in stages:
        return []
    (title,) = read_rows(run.manifest_url("probe", title_id, stages["probe"]["key"]), TITLES)
    if title["mode"] == "avatar":
        return []
    shots = [(s["start_s"], s["end_s"]) for s in read_rows(run.manifest_url("shots", title_id, stages["shots"]["key"]), SHOTS)]
    urls = []
    for language, state in sorted(title_state.get("languages", {}).items()):
        done = state.get("stages", {})
        if "coeffs" not in done or "audio" not in done:
            continue
        (audio,) = read_rows(run.manifest_url("audio", title_id, done["audio"]["key"]), AUDIO_TRACKS)
        driven = read_rows(run.manifest_url("coeffs", title_id, done["coeffs"]["key"]), DRIVEN_COEFFS)
        tracks = [{"label": f"shot {d['shot_index']} · track {d['track_id']}", "frame_index": d["frame_index"],
                   "probability": d["speaker_probability"], "driven_weight": d["driven_weight"]} for d in driven]
        png = speaker_timeline(title["fps"], title["frame_count"], shots,
                               [(s["start_s"], s["end_s"]) for s in audio["speech_segments"]], tracks, audio["words"])
        url = storage.join(run.url, "inspect", f"{title_id}.{language}.speakers.png")
        storage.write_bytes(url, png)
        urls.append(url)
    return urls
