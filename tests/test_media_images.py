"""Still images (avatar portraits): transparency over a documented background, every Pillow mode
converted (palette, greyscale 8/16-bit, CMYK, 16-bit RGB), EXIF orientation, and huge images
analysed and written at a bounded size."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from dubline.flows.demo import astronaut
from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import FACE_TRACKS, OUTPUTS, SHOTS, TITLES
from dubline.stages.base import StageJob
from dubline.stages.composite import CompositeStage
from dubline.stages.faces import FaceStage
from dubline.stages.media import STILL_BACKGROUND, describe, load_still
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner

pytestmark = pytest.mark.timeout(180)

MAGENTA = (255, 0, 255)


def is_magenta(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 150) & (b > 150) & (g < 100)


def test_transparent_pixels_show_the_background_never_what_they_hide(tmp_path):
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[...] = (*MAGENTA, 0)  # transparent, but magenta underneath (a cut-out portrait)
    rgba[20:40, 20:60] = (40, 90, 160, 255)  # the opaque subject
    rgba[20:40, 60:70] = (*MAGENTA, 128)  # a half-transparent edge
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    shown = load_still(str(tmp_path / "cutout.png"))
    assert STILL_BACKGROUND == (255, 255, 255)
    assert not is_magenta(shown).any()
    assert (shown[:10] == 255).all() and (shown[25, 30] == (40, 90, 160)).all()
    assert np.abs(shown[25, 65].astype(int) - (255, 127, 255)).max() <= 1  # half magenta over white
    black = load_still(str(tmp_path / "cutout.png"), background=(0, 0, 0))
    assert (black[:10] == 0).all()


def test_the_background_is_a_probe_option_and_reaches_every_stage(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = MAGENTA
    Image.fromarray(rgba, "RGBA").save(tmp_path / "empty.png")
    titles = str(tmp_path / "titles.parquet")
    SequentialRunner().run(StageJob(ProbeStage, {"background": "#00ff00"}, titles, "t",
                                    rows=({"title_id": "t", "mode": "avatar", "source_url": str(tmp_path / "empty.png")},)))
    (title,) = read_rows(titles, TITLES)
    assert (title["still"], title["background"], title["frame_count"]) == (True, "#00ff00", 1)
    from dubline.stages.media import rgb_frames as decode_rgb

    (_, rgb), = list(decode_rgb(title))
    assert (rgb == (0, 255, 0)).all()


@pytest.mark.parametrize("kind", ["palette", "grey", "grey16", "cmyk", "rgb16", "greyalpha"])
def test_every_image_mode_is_converted_to_rgb(tmp_path, kind):
    path = tmp_path / f"{kind}.{'jpg' if kind == 'cmyk' else 'png'}"
    if kind == "palette":
        image = Image.new("P", (32, 32), 0)
        image.putpalette([*MAGENTA, 200, 30, 30] + [0] * 762)
        image.paste(1, (8, 8, 24, 24))
        image.info["transparency"] = 0  # palette entry 0 (magenta) is transparent
        image.save(path, transparency=0)
        expected = {(0, 0): (255, 255, 255), (16, 16): (200, 30, 30)}
    elif kind == "grey":
        Image.fromarray(np.full((32, 32), 77, np.uint8), "L").save(path)
        expected = {(0, 0): (77, 77, 77)}
    elif kind == "grey16":
        Image.fromarray(np.full((32, 32), 32896, np.uint16)).save(path)  # 16-bit greyscale: 0x8080
        expected = {(0, 0): (128, 128, 128)}
    elif kind == "cmyk":
        cmyk = np.zeros((32, 32, 4), np.uint8)
        cmyk[:, 16:] = (255, 0, 0, 0)  # full cyan
        Image.fromarray(cmyk, "CMYK").save(path, quality=95)
        expected = {(0, 0): (255, 255, 255), (16, 24): (0, 255, 255)}
    elif kind == "rgb16":
        rgb48 = np.full((32, 32, 3), (65535, 32896, 0), np.uint16)
        frame = av.VideoFrame.from_ndarray(rgb48.astype("<u2"), format="rgb48le")
        with av.open(str(path), "w", format="image2", options={"update": "1"}) as out:
            stream = out.add_stream("png", rate=1)
            stream.width = stream.height = 32
            stream.pix_fmt = "rgb48be"
            out.mux(stream.encode(frame.reformat(format="rgb48be")))
            out.mux(stream.encode(None))
        expected = {(0, 0): (255, 128, 0)}
    else:  # greyscale with alpha
        la = np.zeros((32, 32, 2), np.uint8)
        la[..., 0], la[:16, :, 1], la[16:, :, 1] = 50, 255, 0
        Image.fromarray(la, "LA").save(path)
        expected = {(0, 0): (50, 50, 50), (24, 0): (255, 255, 255)}
    shown = load_still(str(path))
    assert shown.dtype == np.uint8 and shown.shape == (32, 32, 3)
    for (y, x), colour in expected.items():
        assert np.abs(shown[y, x].astype(int) - colour).max() <= 3, (kind, (y, x), shown[y, x])
    assert not is_magenta(shown).any()


HUGE = (4224, 5912)  # a 25-megapixel portrait, as a phone or DSLR writes it


@pytest.fixture(scope="module")
def huge_portrait(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "portrait.jpg"
    face = astronaut()[:, 40:440]  # the face fills the frame, as in a portrait
    big = cv2.resize(face, HUGE, interpolation=cv2.INTER_CUBIC)
    Image.fromarray(big).save(path, quality=90)
    return path


def faces_of(tmp_path: Path, portrait: Path) -> tuple[list[dict], dict, float]:
    """probe -> faces (one shot) of a portrait: (tracks, title, faces stage seconds)."""
    runner = SequentialRunner()
    titles, shots, faces = (str(tmp_path / f"{name}.parquet") for name in ("titles", "shots", "faces"))
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "avatar", "source_url": str(portrait)},)))
    write_manifest([{"title_id": "t", "shot_index": 0, "start_frame": 0, "end_frame": 1, "start_s": 0.0, "end_s": 0.04}],
                   SHOTS, shots)
    row = {"title_id": "t", "titles_url": titles, "shots_url": shots, "chunks_url": str(tmp_path / "chunks")}
    stats = runner.run(StageJob(FaceStage, {}, faces, "t", rows=(row,)))
    return read_rows(faces, FACE_TRACKS), read_rows(titles, TITLES)[0], stats.seconds


def test_a_huge_portrait_is_analysed_at_a_bounded_size(tmp_path, huge_portrait):
    """Every stage sees the portrait at most 1920 px a side, which bounds its time (measured by
    ``benchmarks/faces_throughput.py``, not asserted here)."""
    video = describe(str(huge_portrait))
    assert (video.coded_width, video.coded_height) == HUGE
    assert max(video.width, video.height) == 1920 and abs(video.width / video.height - HUGE[0] / HUGE[1]) < 0.01
    tracks, title, _ = faces_of(tmp_path, huge_portrait)
    assert any(t["dubbable"] for t in tracks), [t["skip_reason"] for t in tracks]
    assert (title["width"], title["height"]) == (video.width, video.height)


def test_the_avatar_output_is_capped_at_the_documented_size(tmp_path, huge_portrait):
    runner = SequentialRunner()
    titles, outputs = str(tmp_path / "titles.parquet"), str(tmp_path / "outputs.parquet")
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "avatar", "source_url": str(huge_portrait)},)))
    with av.open(str(tmp_path / "dub.wav"), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 3200), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    options = {"crf": None, "preset": "ultrafast", "audio_tolerance_s": 2.0, "avatar_framing": "full"}
    row = {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(tmp_path / "dub.wav"),
           "output_url": str(tmp_path / "out.mp4"), "options_json": json.dumps(options), "render_url": None}
    runner.run(StageJob(CompositeStage, {}, outputs, "t", rows=(row,)))
    (output,) = read_rows(outputs, OUTPUTS)
    assert max(output["width"], output["height"]) == 1920 and output["frame_count"] == 5
    assert (output["color_primaries"], output["color_transfer"], output["color_matrix"]) == (1, 1, 1)
    with av.open(output["video_url"]) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (output["width"], output["height"])


def test_a_sideways_photo_with_exif_orientation_6_has_its_face_found(tmp_path):
    upright = astronaut()
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # stored turned left; EXIF 6 turns it back right
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "sideways.jpg", quality=92, exif=exif)
    tracks, title, _ = faces_of(tmp_path, tmp_path / "sideways.jpg")
    assert (title["width"], title["height"]) == (upright.shape[1], upright.shape[0])
    (track,) = [t for t in tracks if t["dubbable"]]
    assert abs(float(np.asarray(track["pose"])[0, 2])) < 15  # roll: the face is upright
