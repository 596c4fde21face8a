"""Orientation: display matrices on video (every right angle, mirrored or not, and other angles) and
EXIF orientation on images. Every stage sees the picture upright, and the output is upright as
the source is shown (pixels turned, no display matrix left to honour)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from dubline.schemas.manifest_io import read_rows
from dubline.schemas.manifests import OUTPUTS, TITLES
from dubline.stages.base import StageJob, TitleError
from dubline.stages.composite import CompositeStage
from dubline.stages.media import Orientation, describe, load_still, rgb_frames
from dubline.stages.probe import ProbeStage
from dubline.stages.sequential import SequentialRunner
from tests.conftest import write_silence

pytestmark = pytest.mark.timeout(120)

CODED_W, CODED_H = 64, 48
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def corner_picture() -> np.ndarray:
    """Coded picture: red top-left, green top-right, blue bottom-left corner, black elsewhere."""
    rgb = np.zeros((CODED_H, CODED_W, 3), np.uint8)
    rgb[:8, :8], rgb[:8, -8:], rgb[-8:, :8] = RED, GREEN, BLUE
    return rgb


def corner_clip(path: Path, rotation: float, hflip: bool = False, vflip: bool = False, frames: int = 3) -> Path:
    """An H.264 MP4 of the corner picture with a display matrix (PyAV's counter-clockwise degrees)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = CODED_W, CODED_H, "yuv444p"
        stream.options = {"preset": "ultrafast", "qp": "0"}
        if rotation or hflip or vflip:
            stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(corner_picture(), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def corners(rgb: np.ndarray) -> str:
    """'TL TR BL BR' as R, G, B or . (black) at 3 px in from each corner."""
    height, width = rgb.shape[:2]
    names = []
    for y, x in ((3, 3), (3, width - 4), (height - 4, 3), (height - 4, width - 4)):
        r, g, b = (int(v) > 128 for v in rgb[y, x])
        names.append("R" if r else "G" if g else "B" if b else ".")
    return " ".join(names)


# (PyAV rotation, hflip, vflip) -> shown (width, height) and corners, as FFmpeg's own autorotation
# (the ffmpeg command line) shows these files; -90 is a phone held upright.
SHOWN = {
    (0, False, False): ((64, 48), "R G B ."),
    (0, True, False): ((64, 48), "G R . B"),
    (0, False, True): ((64, 48), "B . R G"),
    (90, False, False): ((48, 64), "G . R B"),
    (90, True, False): ((48, 64), ". G B R"),
    (-90, False, False): ((48, 64), "B R . G"),
    (-90, True, False): ((48, 64), "R B G ."),
    (180, False, False): ((64, 48), ". B G R"),
}


@pytest.mark.parametrize("matrix", list(SHOWN), ids=lambda m: f"rot{m[0]}{'-hflip' if m[1] else ''}{'-vflip' if m[2] else ''}")
def test_every_right_angle_and_mirror_is_shown_upright(tmp_path, matrix):
    (width, height), expected = SHOWN[matrix]
    video = describe(str(corner_clip(tmp_path / "clip.mp4", *matrix)))
    assert (video.width, video.height) == (width, height)
    assert (video.coded_width, video.coded_height) == (CODED_W, CODED_H)
    frames = [rgb for _, rgb in rgb_frames(video)]
    assert len(frames) == 3 and frames[0].shape == (height, width, 3)
    assert corners(frames[0]) == expected


def test_orientation_from_a_display_matrix():
    phone = [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]  # what phones write for portrait video
    assert Orientation.from_matrix(phone) == Orientation(90.0, False)
    assert Orientation.from_matrix(None) == Orientation()
    assert Orientation.from_matrix([65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]).upright
    assert Orientation.from_matrix([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]) == Orientation(0.0, True)
    # 89.6° counts as a right angle (a lossless transpose), as in FFmpeg's autorotation
    turned = [round(65536 * np.cos(np.radians(89.6))), round(65536 * np.sin(np.radians(89.6))), 0,
              -round(65536 * np.sin(np.radians(89.6))), round(65536 * np.cos(np.radians(89.6))), 0, 0, 0, 1 << 30]
    assert Orientation.from_matrix(turned) == Orientation(90.0, False)


def test_any_other_angle_turns_the_whole_picture_onto_a_larger_canvas(tmp_path):
    video = describe(str(corner_clip(tmp_path / "tilted.mp4", -30)))  # shown turned 30° clockwise
    assert video.orientation == Orientation(30.0, False)
    cos, sin = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert abs(video.width - (CODED_W * cos + CODED_H * sin)) <= 1
    assert abs(video.height - (CODED_W * sin + CODED_H * cos)) <= 1
    _, rgb = next(rgb_frames(video))
    assert corners(rgb) == ". . . ."  # the canvas around the turned picture is black
    # The red corner marker (coded centre (4, 4)) turned 30° clockwise about the picture's centre.
    ys, xs = np.nonzero((rgb[..., 0] > 128) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100))
    dx, dy = 4 - CODED_W / 2, 4 - CODED_H / 2
    expected = (video.width / 2 + dx * cos - dy * sin, video.height / 2 + dx * sin + dy * cos)
    assert abs(xs.mean() - expected[0]) < 2.5 and abs(ys.mean() - expected[1]) < 2.5


@pytest.mark.parametrize("matrix", [(-90, False, False), (90, True, False)], ids=["phone", "mirrored"])
def test_the_dubbed_output_is_upright_as_the_source_is_shown(tmp_path, matrix):
    source = str(corner_clip(tmp_path / "phone.mp4", *matrix, frames=25))
    runner = SequentialRunner()
    titles = str(tmp_path / "titles.parquet")
    runner.run(StageJob(ProbeStage, {}, titles, "t", rows=({"title_id": "t", "mode": "dub", "source_url": source},)))
    outputs = str(tmp_path / "outputs.parquet")
    options = {"crf": None, "preset": "ultrafast", "audio_tolerance_s": 2.0}
    row = {"title_id": "t", "language": "fr", "titles_url": titles, "dub_audio_url": str(write_silence(tmp_path / "dub.wav", 1.0)),
           "output_url": str(tmp_path / "out.mp4"), "options_json": json.dumps(options), "render_url": None}
    runner.run(StageJob(CompositeStage, {}, outputs, "t", rows=(row,)))
    (title,), (output,) = read_rows(titles, TITLES), read_rows(outputs, OUTPUTS)
    assert (title["width"], title["height"], title["rotation_deg"]) == (48, 64, 90.0)
    assert (output["width"], output["height"]) == (48, 64)
    with av.open(output["video_url"]) as container:
        frame = next(container.decode(video=0))
        assert Orientation.of_frame(frame).upright, "no display matrix left in the output"
        assert (frame.width, frame.height) == (48, 64)
        assert corners(frame.to_ndarray(format="rgb24")) == SHOWN[matrix][1]


def test_exif_orientation_of_every_kind_is_applied(tmp_path):
    coded = np.zeros((48, 64, 3), np.uint8)
    coded[:16, :16], coded[:16, -16:], coded[-16:, :16] = RED, GREEN, BLUE
    # EXIF orientation -> the transform that shows the stored picture upright (TIFF/EXIF 2.3)
    shown = {1: coded, 2: coded[:, ::-1], 3: coded[::-1, ::-1], 4: coded[::-1], 5: coded.transpose(1, 0, 2),
             6: np.rot90(coded, -1), 7: np.rot90(coded, 2).transpose(1, 0, 2), 8: np.rot90(coded, 1)}
    for orientation, expected in shown.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"photo{orientation}.jpg"
        Image.fromarray(coded).save(path, quality=95, exif=exif)
        picture = load_still(str(path))
        assert picture.shape == expected.shape, orientation
        assert corners(picture) == corners(expected), orientation
        video = describe(str(path))
        assert (video.width, video.height, video.still) == (expected.shape[1], expected.shape[0], True)


def test_non_square_pixels_are_shown_square(tmp_path):
    """Anamorphic video (a sample aspect ratio of 2:1): shown twice as wide, as players show it."""
    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = CODED_W, CODED_H, "yuv444p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        stream.options = {"preset": "ultrafast", "qp": "0"}
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(corner_picture(), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    video = describe(str(path))
    assert video.sample_aspect == 2 and (video.width, video.height) == (2 * CODED_W, CODED_H)
    _, rgb = next(rgb_frames(video))
    assert rgb.shape == (CODED_H, 2 * CODED_W, 3) and corners(rgb) == "R G B ."
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    assert 14 <= red[4].sum() <= 18  # the 8 px marker is 16 px wide now


def test_a_picture_larger_than_the_encoders_allow_is_refused_naming_its_size(tmp_path):
    """6000×6000 is 36 M pixels, above H.264/HEVC level 6.2's 35,651,584 (though each side is within
    the 8192 px limit): no conforming decoder could play the dub, so the probe refuses the title
    before any work (a lossless one-frame source)."""
    path = tmp_path / "huge.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 6000, 6000, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((6000, 6000, 3), 90, np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(TitleError) as refused:
        SequentialRunner().run(StageJob(ProbeStage, {}, str(tmp_path / "titles.parquet"), "big",
                                        rows=({"title_id": "big", "mode": "dub", "source_url": str(path)},)))
    assert str(refused.value) == ("big: picture 6000x6000 is larger than H.264 and HEVC allow "
                                  "(35,651,584 pixels at level 6.2, e.g. 8192x4352)")
