"""``dubline inspect``: a contact sheet of a title's face analysis (mesh, pose axes, track ids)."""

from __future__ import annotations

import cv2
import numpy as np

from flows.run_folder import RunFolder
from schemas import storage
from schemas.manifest_io import read_rows
from schemas.manifests import FACE_TRACKS, TITLES
from stages.faces.draw import draw_faces
from stages.faces.stage import decode_rgb

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
    for index, rgb in decode_rgb(title["source_url"]):
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
