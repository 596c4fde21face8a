"""Explicit pyarrow schemas of every dubline manifest, each with a name and a version.

A manifest is one Parquet file whose schema metadata names it (``dubline.manifest``) and gives its
version (``dubline.schema_version``). Readers refuse a file of another name or version instead of
guessing: bump the version whenever a field changes meaning or type.

Per-frame arrays are stored as list columns of fixed-size lists (one entry per frame) so a track's
T×K coefficients stay one row and one contiguous buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

#: Named expression coefficients, in column order of every ``expression`` array (T×K).
#: Definitions and units live with the face stage that measures them.
EXPRESSION_NAMES: tuple[str, ...] = (
    "jaw_open",
    "lip_width",
    "lip_pucker",
    "upper_lip_raise",
    "lower_lip_depress",
    "lip_press",
    "smile",
    "brow_raise",
)
#: Head pose per frame: rotations in degrees, translation in pixels of the frame, scale.
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll", "tx", "ty", "scale")
BLINK_NAMES: tuple[str, ...] = ("blink_left", "blink_right")
MESH_POINTS = 478


@dataclass(frozen=True)
class ManifestSchema:
    """A named, versioned Parquet schema."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema(
            list(self.fields),
            metadata={"dubline.manifest": self.name, "dubline.schema_version": str(self.version)},
        )

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]


def _per_frame(width: int) -> pa.DataType:
    """T×width float32 array: one fixed-size list per frame."""
    return pa.list_(pa.list_(pa.float32(), width))


CATALOGUE = ManifestSchema(
    "catalogue",
    2,  # 2: dub_script_url
    (
        pa.field("row", pa.int32(), nullable=False),
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # "dub" (video) or "avatar" (portrait)
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("dub_audio_url", pa.string(), nullable=False),
        pa.field("options_json", pa.string(), nullable=False),
        pa.field("dub_script_url", pa.string()),  # the dub's text (.txt, .srt, .vtt); null: none given
    ),
)

#: A source as shown (``stages.media.ShownVideo``): ``width``/``height`` are the upright picture with
#: square pixels; ``fps``/``frame_count``/``duration_s`` its constant frame clock, which every later
#: stage indexes frames on (a VFR source is resampled onto it: ``variable_frame_rate``).
TITLES = ManifestSchema(
    "titles",
    3,  # 2: shown size and clock (orientation, pixel aspect, VFR), colour description, stills; 3: keyframes
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("container", pa.string(), nullable=False),
        pa.field("video_codec", pa.string(), nullable=False),
        pa.field("pix_fmt", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),  # shown: upright, square pixels
        pa.field("height", pa.int32(), nullable=False),
        pa.field("coded_width", pa.int32(), nullable=False),  # as stored (a still: before its size bound)
        pa.field("coded_height", pa.int32(), nullable=False),
        pa.field("rotation_deg", pa.float64(), nullable=False),  # display matrix: clockwise, after mirroring
        pa.field("mirrored", pa.bool_(), nullable=False),  # display matrix: mirrored left-right
        pa.field("sar_num", pa.int32(), nullable=False),  # sample (pixel) aspect ratio of the coded picture
        pa.field("sar_den", pa.int32(), nullable=False),
        pa.field("fps_num", pa.int32(), nullable=False),  # the frame clock's rate
        pa.field("fps_den", pa.int32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("frame_count", pa.int64(), nullable=False),  # frames on the clock
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),  # source time of clock frame 0 (the first frame's PTS)
        pa.field("source_frames", pa.int64(), nullable=False),  # frames stored in the source
        pa.field("variable_frame_rate", pa.bool_(), nullable=False),  # resampled onto the clock by PTS
        # Keyframes, where decoding may start (a source resampled onto the clock, or a still: none):
        # clock frame index and PTS (ticks of the video stream's time base).
        pa.field("keyframe_index", pa.list_(pa.int64()), nullable=False),
        pa.field("keyframe_pts", pa.list_(pa.int64()), nullable=False),
        # Colour description, H.273 code points (FFmpeg's enums): 2 = unspecified; range 0 unspecified,
        # 1 limited, 2 full; bit depth of the decoded samples.
        pa.field("color_primaries", pa.int32(), nullable=False),
        pa.field("color_transfer", pa.int32(), nullable=False),
        pa.field("color_matrix", pa.int32(), nullable=False),
        pa.field("color_range", pa.int32(), nullable=False),
        pa.field("bit_depth", pa.int32(), nullable=False),
        pa.field("bit_rate", pa.int64()),  # of the video stream, bits/s (None: not known)
        pa.field("still", pa.bool_(), nullable=False),  # one picture (an image file)
        pa.field("background", pa.string()),  # a still's alpha is composited on this "#rrggbb"
        pa.field("audio_streams", pa.int32(), nullable=False),
        pa.field("audio_codec", pa.string()),
        pa.field("audio_sample_rate", pa.int32()),
        pa.field("audio_channels", pa.int32()),
    ),
)

SHOTS = ManifestSchema(
    "shots",
    1,
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("shot_index", pa.int32(), nullable=False),
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),  # exclusive
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
    ),
)

FACE_TRACKS = ManifestSchema(
    "face_tracks",
    1,
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("shot_index", pa.int32(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("dubbable", pa.bool_(), nullable=False),
        pa.field("skip_reason", pa.string()),
        pa.field("frame_index", pa.list_(pa.int64()), nullable=False),
        pa.field("bbox", _per_frame(4), nullable=False),  # x0, y0, x1, y1 in frame pixels
        pa.field("landmarks", _per_frame(MESH_POINTS * 3), nullable=False),  # x, y, z per point
        pa.field("pose", _per_frame(len(POSE_NAMES)), nullable=False),
        pa.field("expression", _per_frame(len(EXPRESSION_NAMES)), nullable=False),
        pa.field("blink", _per_frame(len(BLINK_NAMES)), nullable=False),
        pa.field("identity", pa.list_(pa.float32(), MESH_POINTS * 3), nullable=False),
        # Linear map expression coefficients -> mesh offsets, K × (478·3), row-major.
        pa.field("blendshapes", pa.list_(pa.float32()), nullable=False),
        pa.field("chunk_urls", pa.list_(pa.string()), nullable=False),
    ),
)

AUDIO_TRACKS = ManifestSchema(
    "audio_tracks",
    2,
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("audio_url", pa.string(), nullable=False),
        pa.field("audio_hash", pa.string(), nullable=False),
        pa.field("sample_rate", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),  # of the dub audio as delivered
        pa.field("audio_fit", pa.string(), nullable=False),  # "exact", "padded" or "trimmed"
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("loudness_db", pa.list_(pa.float32()), nullable=False),  # T, per video frame, dB re full scale
        pa.field(
            "speech_segments",
            pa.list_(pa.struct([("start_s", pa.float64()), ("end_s", pa.float64())])),
            nullable=False,
        ),
        pa.field("transcript", pa.string()),
        pa.field(
            "words",
            pa.list_(
                pa.struct(
                    [
                        ("word", pa.string()),
                        ("start_s", pa.float64()),
                        ("end_s", pa.float64()),
                        ("probability", pa.float32()),
                    ]
                )
            ),
        ),
        pa.field("transcript_language", pa.string()),  # the language Whisper transcribed in
        pa.field("detected_language", pa.string()),
        pa.field("language_probability", pa.float32()),
        pa.field("language_matches", pa.bool_()),  # None: not checked (no Whisper, or an English-only one)
        pa.field("srt_url", pa.string()),
        pa.field("vtt_url", pa.string()),
        pa.field("script_url", pa.string()),  # the studio's dub script, when the catalogue gives one
        pa.field(
            "script",  # its spoken text per cue; cue times (s) are null for plain-text scripts
            pa.list_(pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("text", pa.string())])),
        ),
    ),
)

DRIVEN_COEFFS = ManifestSchema(
    "driven_coeffs",
    3,  # 3: who speaks when (speaker_probability, driven_weight, speaker)
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("shot_index", pa.int32(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("frame_index", pa.list_(pa.int64()), nullable=False),
        pa.field("expression", _per_frame(len(EXPRESSION_NAMES)), nullable=False),
        pa.field("pose", _per_frame(len(POSE_NAMES)), nullable=False),
        pa.field("blink", _per_frame(len(BLINK_NAMES)), nullable=False),
        # How the mouth was made: "script-aligned", "transcript-aligned" or "model-only", why
        # (e.g. a script that did not match the audio), and the aligned text's visemes in the
        # track's frames (times in s from the start of the title).
        pa.field("mouth_path", pa.string(), nullable=False),
        pa.field("mouth_path_note", pa.string(), nullable=False),
        pa.field("alignment_score", pa.float32()),
        pa.field(
            "visemes",
            pa.list_(pa.struct([("viseme", pa.string()), ("phonemes", pa.string()), ("start_s", pa.float64()),
                                ("end_s", pa.float64())])),
            nullable=False,
        ),
        # Who speaks when, per frame of the track: the probability that this face is the one speaking
        # in the source (active speaker detection; None where not measured: an avatar, a source
        # without audio), and the weight of the driven mouth over the filmed one (0: not driven, the
        # filmed mouth is kept exactly and nothing is rendered; 1: driven; between: fading in or out).
        pa.field("speaker_probability", pa.list_(pa.float32())),
        pa.field("driven_weight", pa.list_(pa.float32()), nullable=False),
        pa.field("speaker", pa.string()),  # the dub stem driving this face (None: the dub's mix)
    ),
)

FRAME_CHUNK = ManifestSchema(
    "frame_chunk",
    1,
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("shot_index", pa.int32(), nullable=False),
        # The track's number in the job that wrote the chunk: the title's, except in the crops of
        # a faces range job, which numbers its own tracks from 0 (the face_tracks row that lists
        # the chunk has the title's number).
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # encoded crop (PNG/JPEG/WebP)
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("affine", pa.list_(pa.float32(), 6), nullable=False),  # 2×3 crop -> frame
    ),
)

RENDERED_TRACKS = ManifestSchema(
    "rendered_tracks",
    2,  # 2: chunk_index (a title rendered in frame ranges joins its ranges' chunks)
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("shot_index", pa.int32(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("frame_index", pa.list_(pa.int64()), nullable=False),
        # frame chunks of RGBA crops (alpha: where to paste) with their affine back into the frame
        pa.field("chunk_urls", pa.list_(pa.string()), nullable=False),
        # per chunk: the position of the face-crop chunk (``face_tracks.chunk_urls``) it was rendered from
        pa.field("chunk_index", pa.list_(pa.int32()), nullable=False),
    ),
)

OUTPUTS = ManifestSchema(
    "outputs",
    2,  # 2: pixel format, colour description and CRF of the encode
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("video_url", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("frame_count", pa.int64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("video_codec", pa.string(), nullable=False),
        # How the video was encoded (the composite stage always fills these; None: not recorded):
        pa.field("pix_fmt", pa.string()),
        pa.field("color_primaries", pa.int32()),  # colour description written, H.273 code points as in titles
        pa.field("color_transfer", pa.int32()),
        pa.field("color_matrix", pa.int32()),
        pa.field("color_range", pa.int32()),
        pa.field("crf", pa.int32()),  # the encoder's constant rate factor
        pa.field("audio_codec", pa.string(), nullable=False),
        pa.field("audio_source_s", pa.float64(), nullable=False),  # dub audio length before fitting
        pa.field("audio_fit", pa.string(), nullable=False),  # "exact", "padded" or "trimmed"
        pa.field("faces_dubbed", pa.int32(), nullable=False),  # face crops pasted (faces × frames)
    ),
)

MOUTH_MESHES = ManifestSchema(
    "mouth_meshes",
    1,
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),  # 0 for an avatar's followed face
        pa.field("frame_index", pa.list_(pa.int64()), nullable=False),  # output frames where a face was found
        pa.field("landmarks", _per_frame(MESH_POINTS * 3), nullable=False),  # x, y, z per point, output px
    ),
)

REPORTS = ManifestSchema(
    "reports",
    1,
    (
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("html_url", pa.string(), nullable=False),
        pa.field("json_url", pa.string(), nullable=False),
        pa.field("video_url", pa.string(), nullable=False),
        pa.field("tracks_dubbed", pa.int32(), nullable=False),
        pa.field("tracks_skipped", pa.int32(), nullable=False),
        # Pearson r of the driven jaw_open against the one measured on the output (None: no face dubbed)
        pa.field("lipsync_r", pa.float64()),
    ),
)

ALL_SCHEMAS: dict[str, ManifestSchema] = {
    s.name: s
    for s in (CATALOGUE, TITLES, SHOTS, FACE_TRACKS, AUDIO_TRACKS, DRIVEN_COEFFS, FRAME_CHUNK, RENDERED_TRACKS, OUTPUTS,
              MOUTH_MESHES, REPORTS)
}
