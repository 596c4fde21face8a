"""The report's figures, as PNG bytes (matplotlib without a display)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dubline.schemas.manifests import EXPRESSION_NAMES  # noqa: E402

_MAX_TRACK_PANELS = 4


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def lipsync_figure(fps: float, energy: np.ndarray, speech: list[tuple[float, float]], tracks: list[dict]) -> bytes:
    """Dub audio energy with speech shaded, above each dubbed track's mouth: driven, measured on
    the output, and measured on the source.

    ``tracks``: dicts with label, frame_index, driven, output (NaN where unmeasured: frames the dub
    does not drive, and on a long title those between the self-check's windows), source (or None).
    """
    rows = 1 + max(1, min(len(tracks), _MAX_TRACK_PANELS))
    figure, axes = plt.subplots(rows, 1, figsize=(11, 1.9 * rows), sharex=True, squeeze=False)
    axes = axes[:, 0]
    seconds = np.arange(len(energy)) / fps
    axes[0].plot(seconds, energy, color="#555", lw=0.8)
    for start, end in speech:
        axes[0].axvspan(start, end, color="#8fbf8f", alpha=0.35, lw=0)
    axes[0].set_ylabel("dub loudness\n(dB re full scale)")
    axes[0].set_title("Dub audio (green: speech) and mouth opening (jaw_open, inter-ocular distances)", fontsize=10)
    if not tracks:
        axes[1].text(0.5, 0.5, "no face was dubbed", ha="center", va="center", transform=axes[1].transAxes)
    for axis, track in zip(axes[1:], tracks[:_MAX_TRACK_PANELS]):
        t = np.asarray(track["frame_index"]) / fps
        if track.get("source") is not None:
            axis.plot(t, track["source"], color="#bbb", lw=1, label="source (filmed)")
        axis.plot(t, track["driven"], color="#1f77b4", lw=1.2, label="driven (from dub audio)")
        axis.plot(t, track["output"], color="#d62728", lw=1, label="measured on output (gaps: not measured)")
        axis.set_ylabel(track["label"], fontsize=8)
        axis.legend(loc="upper right", fontsize=7, ncol=3, frameon=False)
    axes[-1].set_xlabel("time (s)")
    return _png(figure)


def coefficients_figure(fps: float, label: str, frame_index: np.ndarray, source: np.ndarray | None,
                        driven: np.ndarray, pose: np.ndarray) -> bytes:
    """One track's eight expression coefficients (source vs driven) and its driven head pose."""
    figure, axes = plt.subplots(3, 3, figsize=(11, 5.4), sharex=True)
    t = np.asarray(frame_index) / fps
    for k, axis in enumerate(axes.flat[: len(EXPRESSION_NAMES)]):
        if source is not None:
            axis.plot(t, source[:, k], color="#bbb", lw=1, label="source")
        axis.plot(t, driven[:, k], color="#1f77b4", lw=1, label="driven")
        axis.set_title(EXPRESSION_NAMES[k], fontsize=8)
        axis.tick_params(labelsize=7)
    pose_axis = axes.flat[-1]
    for k, (name, colour) in enumerate(zip(("yaw", "pitch", "roll"), ("#2ca02c", "#9467bd", "#ff7f0e"))):
        pose_axis.plot(t, pose[:, k], color=colour, lw=1, label=name)
    pose_axis.set_title("head pose (degrees)", fontsize=8)
    pose_axis.tick_params(labelsize=7)
    pose_axis.legend(fontsize=6, frameon=False)
    axes.flat[0].legend(fontsize=6, frameon=False)
    figure.suptitle(f"{label}: expression coefficients (IOD units) and head pose over time (s)", fontsize=10)
    return _png(figure)


#: Heights the transcript's words are written at, above the dub's speech.
WORD_LANES = 3


def word_lanes(words: list[dict], char_s: float) -> list[tuple[dict, int]]:
    """The words that can be labelled without overlapping, each with its lane (0..WORD_LANES-1):
    a word is centred on its time and ``char_s`` seconds wide a character; it takes the lowest
    lane whose last label ends before it starts, and is left out where none does (on a long
    title most words are: the plot then shows as many as fit)."""
    placed, ends = [], [float("-inf")] * WORD_LANES
    for word in words:
        half = len(word["word"].strip()) * char_s / 2 + char_s / 2  # half a character of space each side
        centre = (word["start_s"] + word["end_s"]) / 2
        lane = next((k for k, end in enumerate(ends) if end <= centre - half), None)
        if lane is not None:
            ends[lane] = centre + half
            placed.append((word, lane))
    return placed


def speaker_timeline(fps: float, frame_count: int, shots: list[tuple[float, float]], dub_speech: list[tuple[float, float]],
                     tracks: list[dict], words: list[dict] | None = None) -> bytes:
    """Who speaks when: per face track, the probability that it is the one speaking in the source
    (active speaker detection, filled) and the frames the dub drives (dark bar), over the dub's
    speech segments and the shots' cuts; the transcript's words along the top when given.

    ``tracks``: dicts with label, frame_index (T), probability (T or None), driven_weight (T).
    ``words``: dicts with word, start_s, end_s.
    """
    lanes = max(1, len(tracks))
    figure, axes = plt.subplots(lanes + 1, 1, figsize=(11, 1.1 + 0.75 * (lanes + 1)), sharex=True, squeeze=False,
                                gridspec_kw={"height_ratios": [1.2] + [1] * lanes})
    axes = axes[:, 0]
    duration = frame_count / fps
    top = axes[0]
    for start, end in dub_speech:
        top.axvspan(start, end, ymin=0.1, ymax=0.5, color="#8fbf8f", lw=0)
    top.set_yticks([])
    top.set_ylabel("dub speech", fontsize=8, rotation=0, ha="right", va="center")
    # How many seconds one character spans: the axis's width at 5.5 pt, 0.65 em a character (wide
    # enough for capitals and a few points of error in the estimate)
    axis_inches = top.get_position().width * figure.get_figwidth()
    char_s = duration / (axis_inches * 72 / (5.5 * 0.65))
    for word, lane in word_lanes(words or [], char_s):
        top.text((word["start_s"] + word["end_s"]) / 2, 0.55 + 0.16 * lane, word["word"].strip(),
                 fontsize=5.5, ha="center", va="bottom", transform=top.get_xaxis_transform(), clip_on=True)
    colours = plt.get_cmap("tab10")
    for k, (axis, track) in enumerate(zip(axes[1:], tracks)):
        t = np.asarray(track["frame_index"]) / fps
        colour = colours(k % 10)
        if track.get("probability") is not None:
            axis.fill_between(t, 0, track["probability"], color=colour, alpha=0.45, lw=0, step="mid")
        driven = np.asarray(track["driven_weight"])
        axis.fill_between(t, -0.25, -0.25 + 0.2 * driven, color=colour, lw=0, step="mid")
        axis.set_ylim(-0.3, 1.05)
        axis.set_yticks([0, 1])
        axis.tick_params(labelsize=7)
        axis.set_ylabel(track["label"], fontsize=8, rotation=0, ha="right", va="center")
    if not tracks:
        axes[1].text(0.5, 0.5, "no dubbable face", ha="center", va="center", transform=axes[1].transAxes)
    for axis in axes:
        for start, _ in shots[1:]:
            axis.axvline(start, color="#444", lw=0.8, ls=":")
        axis.set_xlim(0, duration)
    axes[0].set_title("Who speaks when: probability of speaking in the source (filled), frames the dub drives "
                      "(bar below); dotted lines: cuts", fontsize=10)
    axes[-1].set_xlabel("time (s)")
    return _png(figure)
