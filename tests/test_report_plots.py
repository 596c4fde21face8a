"""The report's plots: the transcript's words along the speaker timeline never overlap."""

from __future__ import annotations

from dubline.stages.report.plots import WORD_LANES, speaker_timeline, word_lanes


def _words(count: int, every_s: float) -> list[dict]:
    return [{"word": f" word{i}", "start_s": i * every_s, "end_s": i * every_s + 0.8 * every_s} for i in range(count)]


def test_sparse_words_are_all_labelled_on_the_first_lane():
    placed = word_lanes(_words(10, 2.0), char_s=0.05)  # "word0" is 0.3 s wide with its space
    assert [lane for _, lane in placed] == [0] * 10


def test_dense_words_take_the_free_lanes_and_the_rest_are_left_out():
    """Ten minutes of speech, three words a second, on ~8.5 in of axis: no two labels of a lane
    overlap at the estimated width."""
    words = _words(1800, 1 / 3)
    char_s = 600 / (8.5 * 72 / (5.5 * 0.65))
    placed = word_lanes(words, char_s)
    assert 0 < len(placed) < len(words)
    for lane in range(WORD_LANES):
        spans = sorted(((w["start_s"] + w["end_s"]) / 2 - (len(w["word"].strip()) + 1) * char_s / 2,
                        (w["start_s"] + w["end_s"]) / 2 + (len(w["word"].strip()) + 1) * char_s / 2)
                       for w, k in placed if k == lane)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # a few words a second at a readable scale: every word finds a lane
    assert len(word_lanes(_words(30, 1 / 3), char_s=0.02)) == 30


def test_the_timeline_of_a_long_title_renders():
    track = {"label": "track 0", "frame_index": list(range(0, 15000, 5)), "probability": [0.5] * 3000,
             "driven_weight": [1.0] * 3000}
    png = speaker_timeline(25.0, 15000, [(0.0, 600.0)], [(1.0, 599.0)], [track], _words(1800, 1 / 3))
    assert png.startswith(b"\x89PNG")
