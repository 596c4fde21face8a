"""``dubline inspect``: a contact sheet of a title's face analysis (mesh, pose axes, track ids),
optionally beside the dubbed output of one language with both mouths close up, and, per dubbed
language, its speaker timeline (who speaks when, by shot and track): what an operator looks at
before binding tracks to speakers and after a dub."""

from __future__ import annotations

import cv2
import numpy as np

from dubline.flows.run_folder import RunFolder
from dubline.schemas import storage
from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import AUDIO_TRACKS, DRIVEN_COEFFS, FACE_TRACKS, SHOTS, TITLES
from dubline.stages.face_model.geometry import MOUTH_LEFT, MOUTH_RIGHT
from dubline.stages.faces.draw import draw_faces
from dubline.stages.media import rgb_frames
from dubline.stages.report.plots import speaker_timeline

TILE = 360


def inspect_title(run_url: str, title_id: str, frames: int = 6, dubbed: str | None = None) -> str:
    """Draw the faces of ``frames`` evenly spaced frames of ``title_id``; returns the PNG's URL
    (``inspect/<title>.png``).

    ``dubbed``: a language whose output is finished; each row then shows the source frame with
    its faces, the dubbed frame, and the mouth of the largest dubbed face close up in both
    (``inspect/<title>.<language>.png``). Raises ValueError naming the title for an unknown title,
    unfinished face analysis, a language without a finished output, or ``dubbed`` for an avatar."""
    run = RunFolder(run_url)
    title_state = run.state["titles"].get(title_id)
    if title_state is None:
        raise ValueError(f"{run_url} has no title {title_id!r} (titles: {', '.join(sorted(run.state['titles']))})")
    stages = title_state.get("stages", {})
    if "faces" not in stages:
        raise ValueError(f"{title_id}: face analysis has not finished in {run_url}")
    (title,) = read_rows(run.manifest_url("probe", title_id, stages["probe"]["key"]), TITLES)
    tracks = read_rows(run.manifest_url("faces", title_id, stages["faces"]["key"]), FACE_TRACKS)
    if dubbed and title["mode"] == "avatar":
        raise ValueError(f"{title_id}: an avatar is one portrait, with no source frames to set its video beside")
    output = rgb_frames(_dubbed_output(run, title_id, title_state, dubbed)) if dubbed else None

    wanted = set(np.linspace(0, title["frame_count"] - 1, frames).round().astype(int).tolist())
    tiles = []
    for index, rgb in rgb_frames(title["source_url"]):
        shown = next(output, None) if output is not None else None
        if index not in wanted:
            continue
        faces = []
        for track in tracks:
            if track["frame_index"][0] <= index <= track["frame_index"][-1]:
                i = index - track["frame_index"][0]
                faces.append({"track_id": track["track_id"], "dubbable": track["dubbable"],
                              "landmarks": track["landmarks"][i], "pose": track["pose"][i]})
        tiles.append(_tile(draw_faces(rgb, faces), f"frame {index}"))
        if dubbed:
            dub = shown[1][: rgb.shape[0], : rgb.shape[1]] if shown else np.zeros_like(rgb)  # the encoder pads odd sizes
            mouth = _mouth_box([f for f in faces if f["dubbable"]])
            tiles += [_tile(dub, f"{dubbed} frame {index}"), _tile(_crop(rgb, mouth), "source mouth"),
                      _tile(_crop(dub, mouth), f"{dubbed} mouth")]
    columns = 4 if dubbed else 3
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    assert ok, "PNG encoding failed"
    url = storage.join(run.url, "inspect", f"{title_id}.{dubbed}.png" if dubbed else f"{title_id}.png")
    storage.write_bytes(url, png.tobytes())
    return url


def _dubbed_output(run: RunFolder, title_id: str, title_state: dict, language: str) -> str:
    languages = title_state.get("languages", {})
    url = run.output_url(title_id, language)

    def produced(lang: str) -> bool:  # by the last run of that language, not left over from an earlier one
        return languages[lang].get("status") in ("done", "needs_review") and storage.exists(run.output_url(title_id, lang))

    if language not in languages or not produced(language):
        finished = sorted(lang for lang in languages if produced(lang))
        raise ValueError(f"{title_id}: no finished dub in {language!r} (finished: {', '.join(finished) or 'none'})")
    return url


def _tile(image: np.ndarray, label: str) -> np.ndarray:
    """``image`` fitted into a TILE×TILE square (black margins), ``label`` written at its foot."""
    scale = TILE / max(image.shape[:2])
    tile = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    tile = cv2.copyMakeBorder(tile, 0, TILE - tile.shape[0], 0, TILE - tile.shape[1], cv2.BORDER_CONSTANT)
    cv2.putText(tile, label, (8, TILE - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _mouth_box(faces: list[dict]) -> tuple[int, int, int, int] | None:
    """x0, y0, x1, y1 (px) of a square around the mouth of the largest face (its mouth corners
    apart, plus that width again on each side), None without a face."""
    if not faces:
        return None
    meshes = [np.asarray(f["landmarks"]).reshape(-1, 3)[:, :2] for f in faces]
    mesh = max(meshes, key=lambda m: np.ptp(m[:, 0]))
    corners = mesh[[MOUTH_RIGHT, MOUTH_LEFT]]
    centre, half = corners.mean(axis=0), max(8.0, float(np.linalg.norm(corners[1] - corners[0])))
    x0, y0 = (centre - half).round().astype(int)
    return int(x0), int(y0), int(x0 + 2 * half), int(y0 + 2 * half)


def _crop(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    if box is None:
        return np.zeros((8, 8, 3), np.uint8)
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    cut = image[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
    return cut if cut.size else np.zeros((8, 8, 3), np.uint8)  # a mouth outside the frame


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
