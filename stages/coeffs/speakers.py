"""Who speaks when: audio-visual active speaker detection on the source, and the dub's turns.

The constants below were set on synthetic dialogues and on ``video/train`` clips (never on
``video/eval``).

**Active speaker detection.** A face speaks when its filmed mouth follows the source's speech. The
evidence per face track and frame is the Pearson correlation, over a sliding window
(``WINDOW_S``), between the mouth the audio->mouth model predicts from the *source* audio (the
same prediction the speaker calibration uses) and the track's measured jaw_open. Correlation
normalises each window by itself (loudness, mouth size and the model's scale do not matter);
it is damped where the mouth hardly moves around that frame (a listener's mesh jitter, or a still
face beside a turn, must not pass for speech), where the face is small (its mouth is measured
coarsely) and where the window runs off the track. Footage is often out of sync (broadcast
clips by a few frames, one training clip by 0.24 s), so each track is first lined up with the
audio at the lag, within ``MAX_AV_OFFSET_S``, where its mouth follows the speech best.
Faces of one shot compete with each other and with *nobody* (off-screen speech, narration): per
frame a categorical distribution over {nobody, track 1, …} whose logits are the damped
correlations above ``R_SPEAKING``, in units of ``TEMPERATURE``; the probability of a face is that
distribution times the source's voice activity (nobody speaks in silence). A Viterbi path over
the same states with a cost per change of speaker gives one label per frame, smooth in time;
silent frames carry no evidence, so a label holds through the pauses of a turn.

**Turns.** Each speech segment of the dub (dub lines follow the original's timing) is cut where
the source's speaker changes, pieces shorter than ``MIN_TURN_S`` joining a neighbour, and every
piece goes to the face labelled there, or to nobody (off-screen speech, no face on screen, no
speech in the source at that time). Per-speaker stems are bound to faces per shot instead: each
stem to the face that speaks most during that stem's speech (``bind_stems``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.ndimage import gaussian_filter1d

WINDOW_S = 2.0  # correlation window (±2σ of its Gaussian): a few words; shorter is noise, longer blurs turns
MOTION_S = 0.25  # mouth motion is measured over about this much (±σ) around each frame
MOTION_FLOOR_IOD = 0.01  # local jaw std (IOD) at which the correlation counts half: mesh jitter is ~0.003
RELIABLE_FACE_PX = 64.0  # face height from which the mouth is measured well (the faces stage's dubbing floor)
R_SPEAKING = 0.25  # damped correlation at which a face is as likely to speak as nobody
TEMPERATURE = 0.08  # correlation units per nat
SWITCH_COST = 6.0  # nats to change speaker: a change needs a few frames of clear evidence
MIN_TURN_S = 0.5  # a piece of a dub segment shorter than this joins its neighbour
FADE_S = 0.16  # the driven mouth fades in and out over this much around a face's driven frames
MAX_GAP_S = 0.5  # a face driven on both sides of a shorter gap stays driven through it
MIN_BIND_SHARE = 0.3  # mean speaking probability during a stem's speech needed to bind it to a face
MAX_AV_OFFSET_S = 0.3  # largest audio/picture offset of the source looked for (ITU-R BT.1359 allows ~0.1-0.2 s)
#: A face alone on screen (alone in its shot, or while the shot's other faces are away) is the
#: speaker on all those frames when it is labelled speaker on at least this share of their speech,
#: or when over its whole track its mouth follows the speech (the damped correlation of the whole
#: track, at its lag, reaches ``R_SPEAKING``): on talking-head
#: footage the windowed correlation dips on many words (the audio->mouth model follows a filmed
#: mouth at r ~0.5 over a clip), and those words must not go undubbed. A listener under narration
#: stays near 0 on both.
SINGLE_FACE_SHARE = 0.25
#: Logit margin (nats) within which a second face whose own evidence says "speaking" speaks too:
#: two faces saying the same words at once (a split screen, a mirror, a chorus) are both driven.
CO_SPEAKER_MARGIN = 1.5

NOBODY = -1  # label: nobody on screen speaks (silence, or a voice from off screen)
NO_FACE = -2  # label: no face track on screen


@dataclass(frozen=True)
class FaceMouth:
    """One face track as the detector sees it: consecutive frames from ``first``."""

    track_id: int
    shot_index: int
    first: int  # first frame on the title's clock
    jaw: np.ndarray  # T_k measured jaw_open (inter-ocular distances)
    height_px: np.ndarray  # T_k face box height (px)

    @property
    def stop(self) -> int:
        return self.first + len(self.jaw)


@dataclass(frozen=True)
class ActiveSpeakers:
    """Who speaks when, on the title's frame clock (T frames)."""

    probability: dict[int, np.ndarray]  # track id -> T_k: probability that this face is the one speaking
    labels: np.ndarray  # T int: the speaking track's id, ``NOBODY`` or ``NO_FACE``
    speech: np.ndarray  # T bool: voice activity in the source
    also_speaking: dict[int, np.ndarray]  # track id -> T_k bool: speaks at once with the labelled face


@dataclass(frozen=True)
class Turn:
    """A piece of the dub's speech ([start, stop) frames) and the face it drives (None: nobody)."""

    start: int
    stop: int
    track_id: int | None
    reason: str  # why nobody ("" when a face was given the turn)
    voice: str | None = None  # the stem's speaker (None: the mix)


def frame_mask(segments: Sequence[tuple[float, float]], frames: int, fps: float) -> np.ndarray:
    """(start_s, end_s) spans -> T bool, True on every frame a span touches."""
    mask = np.zeros(frames, bool)
    for start, end in segments:
        mask[max(0, int(start * fps)) : min(frames, int(np.ceil(end * fps)))] = True
    return mask


def runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal values: (start, stop, value) with stop exclusive."""
    if not len(values):
        return []
    edges = np.flatnonzero(np.diff(values)) + 1
    starts, stops = np.r_[0, edges], np.r_[edges, len(values)]
    return [(int(a), int(b), int(values[a])) for a, b in zip(starts, stops)]


def window_correlation(x: np.ndarray, y: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pearson r of x and y (T each) around every frame t, frames weighted by a Gaussian of
    ``sigma`` frames centred on t (a window whose edges fade, so a turn next door leaks in less).

    Returns (r, weighted std of y, the window's weight inside the arrays: 1 far from their ends,
    0.5 at an end), each T; r is 0 where either signal is constant.
    """
    x = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64) - np.mean(y)
    inside = gaussian_filter1d(np.ones(len(x)), sigma, mode="constant")

    def mean(v: np.ndarray) -> np.ndarray:
        return gaussian_filter1d(v, sigma, mode="constant") / inside

    mx, my = mean(x), mean(y)
    vx = np.maximum(mean(x * x) - mx * mx, 0.0)
    vy = np.maximum(mean(y * y) - my * my, 0.0)
    cov = mean(x * y) - mx * my
    valid = (vx > 1e-10) & (vy > 1e-10)
    r = np.zeros(len(x))
    r[valid] = np.clip(cov[valid] / np.sqrt(vx[valid] * vy[valid]), -1.0, 1.0)
    return r, np.sqrt(vy), inside


def _smoothed_jaw(face: FaceMouth) -> np.ndarray:
    return gaussian_filter1d(np.asarray(face.jaw, np.float64), 1.0, mode="nearest")  # mesh jitter


def _size_weight(face: FaceMouth) -> np.ndarray:
    return np.clip(np.asarray(face.height_px, np.float64) / RELIABLE_FACE_PX, 0.0, 1.0)


def _shifted(audio_jaw: np.ndarray, face: FaceMouth, lag: int) -> np.ndarray:
    """T_k: the audio's jaw under the face's frames, ``lag`` frames later (edges repeated)."""
    index = np.clip(np.arange(face.first, face.stop) + lag, 0, len(audio_jaw) - 1)
    return np.asarray(audio_jaw, np.float64)[index]


def av_offset(audio_jaw: np.ndarray, speech: np.ndarray, face: FaceMouth, fps: float) -> tuple[int, float]:
    """(lag, evidence): the lag in frames (frame t of the face goes with the audio at t + lag,
    within ±``MAX_AV_OFFSET_S``) at which the face's filmed mouth follows the source's speech
    best, and how well over the whole track: Pearson r over its speech frames, damped like the
    windowed evidence by how much the mouth moves there and by the face's size.
    """
    jaw, talk = _smoothed_jaw(face), np.asarray(speech[face.first : face.stop], bool)
    if talk.sum() < 3 or np.std(jaw[talk]) == 0:
        return 0, 0.0
    span = int(round(MAX_AV_OFFSET_S * fps))
    scores = []  # (r, -|lag|, lag): the best r, and of equals the smallest offset
    for lag in range(-span, span + 1):
        audio = _shifted(audio_jaw, face, lag)[talk]
        r = float(np.corrcoef(audio, jaw[talk])[0, 1]) if np.std(audio) > 0 else 0.0
        scores.append((r, -abs(lag), lag))
    r, _, lag = max(scores)
    motion = float(np.std(jaw[talk]))
    return int(lag), float(r * motion / (motion + MOTION_FLOOR_IOD) * _size_weight(face)[talk].mean())


def speaking_logit(audio_jaw: np.ndarray, face: FaceMouth, fps: float, lag: int = 0) -> np.ndarray:
    """T_k logits of "this face speaks" against "nobody on screen speaks".

    ``audio_jaw``: T, the jaw_open predicted from the source audio on the title's frame clock;
    ``lag``: the track's audio/picture offset in frames (``av_offset``).
    """
    jaw = _smoothed_jaw(face)
    r, _, inside = window_correlation(_shifted(audio_jaw, face, lag), jaw, WINDOW_S * fps / 4)
    # The mouth must move *now*: a still face next to a turn must not borrow that turn's evidence.
    local = max(1.0, MOTION_S * fps / 2)
    motion = np.sqrt(np.maximum(gaussian_filter1d(jaw * jaw, local) - gaussian_filter1d(jaw, local) ** 2, 0.0))
    damped = r * motion / (motion + MOTION_FLOOR_IOD)
    damped *= _size_weight(face)
    damped *= inside  # a window cut by the track's ends (0.5 at an end) rests on fewer frames
    return (damped - R_SPEAKING) / TEMPERATURE


def detect(audio_jaw: np.ndarray, speech: np.ndarray, faces: Sequence[FaceMouth], fps: float,
           excluded: frozenset[int] = frozenset(), forced: Mapping[int, int] | None = None) -> ActiveSpeakers:
    """Active speakers of a title.

    audio_jaw: T jaw_open predicted from the source audio; speech: T bool voice activity of the
    source; faces: every face track (any shot). ``excluded`` tracks never get the label (a manual
    binding to nobody); ``forced`` maps a shot to the one track labelled speaker wherever it is on
    screen (a manual binding). Probabilities are the detector's own either way.
    """
    frames = len(audio_jaw)
    labels = np.full(frames, NO_FACE, dtype=np.int64)
    probability: dict[int, np.ndarray] = {}
    also = {f.track_id: np.zeros(len(f.jaw), bool) for f in faces}
    forced = forced or {}
    for shot in sorted({f.shot_index for f in faces}):
        in_shot = [f for f in faces if f.shot_index == shot]
        first, stop = min(f.first for f in in_shot), max(f.stop for f in in_shot)
        logits = np.full((stop - first, len(in_shot) + 1), -np.inf)
        logits[:, 0] = 0.0  # nobody
        offsets = {face.track_id: av_offset(audio_jaw, speech, face, fps) for face in in_shot}
        for k, face in enumerate(in_shot, start=1):
            logits[face.first - first : face.stop - first, k] = speaking_logit(audio_jaw, face, fps, offsets[face.track_id][0])
        talk = speech[first:stop]
        posterior = np.exp(logits - logits.max(axis=1, keepdims=True))
        posterior /= posterior.sum(axis=1, keepdims=True)
        for k, face in enumerate(in_shot, start=1):
            probability[face.track_id] = (posterior[:, k] * talk)[face.first - first : face.stop - first]
        if shot in forced:
            face = next(f for f in in_shot if f.track_id == forced[shot])
            labels[first:stop] = NOBODY
            labels[face.first : face.stop] = face.track_id
            continue
        allowed = np.array([True] + [f.track_id not in excluded for f in in_shot])
        emission = np.where(allowed, np.log(np.maximum(posterior, 1e-12)), -np.inf)
        emission[~talk] = np.where(allowed, 0.0, -np.inf)  # silence says nothing about who speaks
        emission[~np.isfinite(logits)] = -np.inf  # a face that is not on screen cannot speak
        states = _viterbi(emission, SWITCH_COST)
        ids = np.array([NOBODY] + [f.track_id for f in in_shot])
        labels[first:stop] = ids[states]
        on_screen = np.isfinite(logits[:, 1:])
        for k, face in enumerate(in_shot, start=1):  # a face alone on screen, as in a lone-face shot
            alone = np.zeros(frames, bool)
            alone[first:stop] = on_screen[:, k - 1] & (on_screen.sum(axis=1) == 1)
            heard = (speech & alone).sum()
            share = ((labels == face.track_id) & speech & alone).sum() / heard if heard else 0.0
            if face.track_id not in excluded and heard and (share >= SINGLE_FACE_SHARE
                                                            or offsets[face.track_id][1] >= R_SPEAKING):
                labels[alone] = face.track_id
        if len(in_shot) > 1:
            winner = np.take_along_axis(logits, states[:, None], axis=1)[:, 0]
            for k, face in enumerate(in_shot, start=1):
                near = (logits[:, k] >= 0.0) & (logits[:, k] >= winner - CO_SPEAKER_MARGIN) & talk
                near = _held_through_silence(near, talk) & (states != k) & np.isfinite(logits[:, k])
                near &= face.track_id not in excluded
                also[face.track_id] = _steady(near, max(1, round(MIN_TURN_S * fps)))[face.first - first : face.stop - first]
    return ActiveSpeakers(probability, labels, np.asarray(speech, bool), also)


def _held_through_silence(mask: np.ndarray, talk: np.ndarray) -> np.ndarray:
    """``mask`` (decided on speech frames) carried through the silent frames from the last speech
    frame before them (from the first one after, at the start), as the speaker labels are."""
    if not talk.any():
        return np.zeros(len(mask), bool)
    index = np.where(talk, np.arange(len(talk)), -1)
    last = np.maximum.accumulate(index)
    last[last < 0] = int(np.flatnonzero(talk)[0])
    return mask[last]


def _steady(mask: np.ndarray, min_frames: int) -> np.ndarray:
    """``mask`` without its runs of True shorter than ``min_frames`` (a flicker is not a speaker)."""
    out = np.zeros(len(mask), bool)
    for start, stop, on in runs(mask.astype(np.int64)):
        if on and stop - start >= min_frames:
            out[start:stop] = True
    return out


def _viterbi(emission: np.ndarray, switch_cost: float) -> np.ndarray:
    """Best state path (T) under per-frame log emissions (T×S) and a constant cost per change."""
    count, states = emission.shape
    score = emission[0].copy()
    back = np.zeros((count, states), dtype=np.int64)
    for t in range(1, count):
        best = int(np.argmax(score))
        stay, switch = score, score[best] - switch_cost
        back[t] = np.where(stay >= switch, np.arange(states), best)
        score = np.maximum(stay, switch) + emission[t]
    path = np.zeros(count, dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(count - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def dub_turns(segments: Sequence[tuple[int, int]], speakers: ActiveSpeakers, fps: float,
              voice: str | None = None) -> list[Turn]:
    """The dub's speech segments ([start, stop) frames) cut into turns at changes of the source's
    speaker; each turn goes to the face speaking there, or to nobody with the reason."""
    min_frames = max(1, round(MIN_TURN_S * fps))
    turns = []
    for start, stop in segments:
        pieces = _merge_short(runs(speakers.labels[start:stop]), min_frames)
        for a, b, label in pieces:
            a, b = a + start, b + start
            if label >= 0:
                turns.append(Turn(a, b, int(label), "", voice))
            elif label == NO_FACE:
                turns.append(Turn(a, b, None, "no face on screen", voice))
            elif speakers.speech[a:b].any():
                turns.append(Turn(a, b, None, "off-screen speech (no face on screen speaks)", voice))
            else:
                turns.append(Turn(a, b, None, "no speech in the source at that time", voice))
    return turns


def _merge_short(pieces: list[tuple[int, int, int]], min_frames: int) -> list[tuple[int, int, int]]:
    """Runs (start, stop, label): while the shortest is under ``min_frames`` it joins its longer
    neighbour and takes that one's label (turn boundaries are blurred by the window anyway)."""
    pieces = list(pieces)
    while len(pieces) > 1:
        for i in range(len(pieces) - 1, 0, -1):  # neighbours with one label are one piece
            if pieces[i][2] == pieces[i - 1][2]:
                pieces[i - 1 : i + 1] = [(pieces[i - 1][0], pieces[i][1], pieces[i][2])]
        if len(pieces) == 1:
            break
        short = min(range(len(pieces)), key=lambda i: pieces[i][1] - pieces[i][0])
        if pieces[short][1] - pieces[short][0] >= min_frames:
            break
        keep = max((i for i in (short - 1, short + 1) if 0 <= i < len(pieces)),
                   key=lambda i: pieces[i][1] - pieces[i][0])
        low, high = sorted((short, keep))
        pieces[low : high + 1] = [(pieces[low][0], pieces[high][1], pieces[keep][2])]
    return pieces


def bind_stems(stem_speech: Mapping[str, np.ndarray], speakers: ActiveSpeakers, faces: Sequence[FaceMouth],
               bound: Mapping[int, Mapping[int, str]] | None = None) -> dict[int, dict[int, str]]:
    """Per shot, which face each speaker's stem drives: {shot: {track id: speaker}}.

    ``stem_speech``: speaker -> T bool voice activity of the stem. Shots in ``bound`` (a manual
    binding) keep it. Elsewhere each stem goes to the face whose mean speaking probability during
    the stem's speech is highest (at least ``MIN_BIND_SHARE``), one stem per face, best pairs first;
    a stem may also drive tracks that are never on screen at the same time as its face, such as
    the pieces of one face cut at a track segment's first frame (the faces stage's
    ``segment_frames``).
    """
    bound = bound or {}
    binding: dict[int, dict[int, str]] = {}
    for shot in sorted({f.shot_index for f in faces}):
        if shot in bound:
            binding[shot] = dict(bound[shot])
            continue
        pairs = []
        spans = {f.track_id: (f.first, f.stop) for f in faces if f.shot_index == shot}
        for face in (f for f in faces if f.shot_index == shot):
            for speaker, speech in stem_speech.items():
                active = speech[face.first : face.stop]
                if active.any():
                    pairs.append((float(speakers.probability[face.track_id][active].mean()), face.track_id, speaker))
        binding[shot] = {}
        for share, track, speaker in sorted(pairs, reverse=True):
            (first, stop) = spans[track]
            beside = any(s == speaker and spans[t][0] < stop and first < spans[t][1] for t, s in binding[shot].items())
            if share >= MIN_BIND_SHARE and track not in binding[shot] and not beside:
                binding[shot][track] = speaker
    return binding


def stem_turns(segments: Mapping[str, Sequence[tuple[int, int]]], binding: Mapping[int, Mapping[int, str]],
               faces: Sequence[FaceMouth], frames: int) -> list[Turn]:
    """Each stem's speech segments, cut at shots, as turns of the face bound to its speaker there."""
    owner: dict[str, np.ndarray] = {speaker: np.full(frames, NO_FACE, dtype=np.int64) for speaker in segments}
    for face in faces:
        for speaker in segments:
            owner[speaker][face.first : face.stop] = np.maximum(owner[speaker][face.first : face.stop], NOBODY)
        speaker = binding.get(face.shot_index, {}).get(face.track_id)
        if speaker in owner:
            owner[speaker][face.first : face.stop] = face.track_id
    turns = []
    for speaker, spans in segments.items():
        for start, stop in spans:
            for a, b, label in runs(owner[speaker][start:stop]):
                a, b = a + start, b + start
                if label >= 0:
                    turns.append(Turn(a, b, int(label), "", speaker))
                else:
                    reason = "no face on screen" if label == NO_FACE else f"speaker {speaker} has no face in the shot"
                    turns.append(Turn(a, b, None, reason, speaker))
    return turns


def driven_weight(turns: np.ndarray, speaking: np.ndarray, fps: float) -> np.ndarray:
    """T_k weights of the driven mouth over the filmed one (0: exactly as filmed, 1: driven).

    A face is driven where a turn of the dub is its own (``turns``, T_k bool) and where it speaks
    in the source (``speaking``): there its filmed mouth says the original's words, which must not
    show. Gaps shorter than ``MAX_GAP_S`` are bridged, and the weight ramps over ``FADE_S`` on
    either side, so the mouth never jumps between filmed and driven.
    """
    driven = np.asarray(turns, bool) | np.asarray(speaking, bool)
    gap = round(MAX_GAP_S * fps)
    spans = [(a, b) for a, b, on in runs(driven.astype(np.int64)) if on]
    for (_, stop), (start, _) in pairwise(spans):
        if start - stop < gap:
            driven[stop:start] = True
    fade = max(1, round(FADE_S * fps))
    # Distance (frames) to the nearest driven frame, turned into a linear ramp outside.
    distance = np.full(len(driven), np.inf)
    index = np.flatnonzero(driven)
    if len(index):
        positions = np.arange(len(driven))
        nearest = np.clip(np.searchsorted(index, positions), 0, len(index) - 1)
        before = np.clip(nearest - 1, 0, len(index) - 1)
        distance = np.minimum(np.abs(index[nearest] - positions), np.abs(index[before] - positions)).astype(float)
    return np.clip(1.0 - distance / (fade + 1), 0.0, 1.0)
