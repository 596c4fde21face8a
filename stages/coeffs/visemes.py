"""Viseme targets: what the mouth does for each speech sound, in the face stage's units.

The audio->expression model predicts ``MOUTH_COEFFS`` per video frame. ``jaw_open`` is absolute
(inner-lip gap in inter-ocular distances, 0 = lips together); the others are offsets from the
speaker's resting mouth (same units). Training targets come from phone timings: each phone maps
to a viseme class with a target, the targets are blended over time (coarticulation), and
bilabials (p, b, m) are forced shut at their centre.

Phone inventories: ARPAbet (LibriVox alignments from pocketsphinx) and espeak-ng's ASCII phoneme
mnemonics (any of its languages), mapped by articulation.
"""

from __future__ import annotations

import numpy as np

MOUTH_COEFFS: tuple[str, ...] = ("jaw_open", "lip_width", "lip_pucker", "lip_press")

#: class -> (jaw_open, Δlip_width, Δlip_pucker, Δlip_press). Magnitudes follow the spread measured
#: on real talking clips (jaw_open up to ~0.3 IOD, lip width ±0.08, pucker ±0.02, press ±0.03).
VISEMES: dict[str, tuple[float, float, float, float]] = {
    "rest": (0.00, 0.00, 0.000, 0.00),
    "bilabial": (0.00, 0.00, 0.000, 0.03),  # p b m: lips pressed together
    "labiodental": (0.02, 0.00, -0.005, 0.01),  # f v: lower lip to upper teeth
    "dental": (0.06, 0.01, 0.000, 0.00),  # th
    "alveolar": (0.06, 0.01, 0.000, 0.00),  # t d n s z l
    "sibilant": (0.03, 0.03, 0.000, 0.00),  # s z with teeth close
    "postalveolar": (0.05, -0.04, 0.015, 0.00),  # sh zh ch j: protruded
    "velar": (0.08, 0.01, 0.000, 0.00),  # k g ng x h
    "rhotic": (0.05, -0.03, 0.010, 0.00),  # r
    "rounded": (0.06, -0.08, 0.020, 0.00),  # w, u, oo
    "open": (0.25, 0.02, 0.000, 0.00),  # a
    "mid_open": (0.16, 0.04, 0.000, 0.00),  # e, ae
    "close_spread": (0.07, 0.06, -0.005, 0.00),  # i, y (palatal glide)
    "open_rounded": (0.18, -0.05, 0.012, 0.00),  # o
    "front_rounded": (0.07, -0.06, 0.018, 0.00),  # French u, German ü/ö
    "mid": (0.12, 0.00, 0.000, 0.00),  # schwa, uh, er
}
#: Viseme classes in a fixed order: the mouth model's class outputs and the aligner's columns.
VISEME_CLASSES: tuple[str, ...] = tuple(VISEMES)

_ARPABET = {
    "P": "bilabial", "B": "bilabial", "M": "bilabial",
    "F": "labiodental", "V": "labiodental",
    "TH": "dental", "DH": "dental",
    "T": "alveolar", "D": "alveolar", "N": "alveolar", "L": "alveolar",
    "S": "sibilant", "Z": "sibilant",
    "SH": "postalveolar", "ZH": "postalveolar", "CH": "postalveolar", "JH": "postalveolar",
    "K": "velar", "G": "velar", "NG": "velar", "HH": "velar",
    "R": "rhotic", "ER": "rhotic",
    "W": "rounded", "UW": "rounded", "UH": "rounded",
    "AA": "open", "AY": "open", "AW": "open",
    "AE": "mid_open", "EH": "mid_open", "EY": "mid_open",
    "IY": "close_spread", "IH": "close_spread", "Y": "close_spread",
    "AO": "open_rounded", "OW": "open_rounded", "OY": "open_rounded",
    "AH": "mid",
    "SIL": "rest", "SP": "rest", "+SPN+": "rest", "+NSN+": "rest",
}

# espeak mnemonics, longest first: multi-letter consonants, then single letters.
_ESPEAK_MULTI = {"tS": "postalveolar", "dZ": "postalveolar", "ts": "alveolar", "dz": "alveolar",
                 "n^": "alveolar", "l^": "alveolar", "N": "velar"}
_ESPEAK_SINGLE = {
    "p": "bilabial", "b": "bilabial", "m": "bilabial", "B": "bilabial",
    "f": "labiodental", "v": "labiodental",
    "T": "dental", "D": "dental",
    "t": "alveolar", "d": "alveolar", "n": "alveolar", "l": "alveolar", "L": "alveolar",
    "s": "sibilant", "z": "sibilant", "C": "sibilant",
    "S": "postalveolar", "Z": "postalveolar",
    "k": "velar", "g": "velar", "x": "velar", "h": "velar", "q": "velar", "G": "velar", "Q": "velar",
    "r": "rhotic", "R": "rhotic", "*": "alveolar",
    "w": "rounded", "u": "rounded", "U": "rounded", "W": "front_rounded",
    "a": "open", "A": "open", "&": "mid_open",
    "e": "mid_open", "E": "mid_open",
    "i": "close_spread", "I": "close_spread", "j": "close_spread",
    "o": "open_rounded", "O": "open_rounded",
    "y": "front_rounded", "Y": "front_rounded", "2": "front_rounded", "9": "front_rounded",
    "@": "mid", "3": "mid", "V": "mid", "0": "open_rounded",
    ";": "close_spread",  # Russian palatalisation: the tongue (and lips) of an "i"
    "H": "velar",  # Hindi breathy h
    "X": "velar",  # Mandarin velar fricative
}


def arpabet_viseme(phone: str) -> str:
    """Viseme class of an ARPAbet phone (stress digits ignored); unknown -> "mid"."""
    return _ARPABET.get(phone.upper().rstrip("012"), "mid")


def espeak_viseme(phoneme: str) -> str:
    """Viseme class of an espeak-ng phoneme mnemonic; pauses ("_", "_:") -> "rest"."""
    core = phoneme.lstrip("'%,=")
    if not core or core.startswith("_"):
        return "rest"
    for prefix, viseme in _ESPEAK_MULTI.items():
        if core.startswith(prefix):
            return viseme
    return _ESPEAK_SINGLE.get(core[0], "mid")


def target_curve(
    segments: list[tuple[str, float, float]], frames: int, fps: float, blend_s: float = 0.025
) -> np.ndarray:
    """Frame-rate targets T×4 from viseme segments (class, start_s, end_s).

    Targets are laid out at 200 Hz, blended with a Gaussian of ``blend_s`` (coarticulation),
    bilabials are then shut at their centre, and the result is averaged over each video frame.
    """
    rate = 200
    duration = frames / fps
    fine = np.tile(np.asarray(VISEMES["rest"]), (int(np.ceil(duration * rate)) + 1, 1))
    for viseme, start, end in segments:
        fine[int(start * rate) : max(int(start * rate) + 1, int(end * rate))] = VISEMES[viseme]
    radius = int(3 * blend_s * rate)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / (blend_s * rate)) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(fine, ((radius, radius), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(fine.shape[1])], axis=1)
    for viseme, start, end in segments:
        if viseme == "bilabial":
            centre = int((start + end) / 2 * rate)
            # Shut for half the segment, and never for less than one video frame: espeak's p/b/m
            # are often shorter than a frame, and a closure between frames would never be seen.
            half = max(int((end - start) * rate / 4), int(np.ceil(rate / fps / 2)))
            smooth[max(0, centre - half) : centre + half + 1, 0] = 0.0
    edges = np.round(np.arange(frames + 1) / fps * rate).astype(int)
    return np.stack([smooth[a : max(a + 1, b)].mean(axis=0) for a, b in zip(edges[:-1], edges[1:])]).astype(np.float32)
