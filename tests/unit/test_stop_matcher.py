"""StopMatcher: matches across piece boundaries, never emits a match, emits everything else as early as it can."""

from __future__ import annotations

import pytest

from rillet.server.engine.text import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[list[str], str | None, str]:
    matcher = StopMatcher(stops)
    emitted: list[str] = []
    for piece in pieces:
        check = matcher.feed(piece)
        emitted.append(check.emit)
        if check.matched is not None:
            return emitted, check.matched, ""
    return emitted, None, matcher.flush()


def test_no_stops_passes_everything_through() -> None:
    assert run([], ["a", "b"]) == (["a", "b"], None, "")


def test_match_spanning_pieces_is_found_and_not_emitted() -> None:
    emitted, matched, _ = run(["END"], ["hello E", "N", "D tail"])
    assert matched == "END"
    assert "".join(emitted) == "hello "


def test_partial_prefix_is_held_then_released() -> None:
    emitted, matched, tail = run(["END"], ["abc E", "x"])
    assert matched is None
    assert emitted == ["abc ", "Ex"]
    assert tail == ""


def test_held_text_is_flushed_at_the_end() -> None:
    emitted, matched, tail = run(["\n\n"], ["line\n"])
    assert (emitted, matched, tail) == (["line"], None, "\n")


def test_earliest_of_several_stops_wins() -> None:
    emitted, matched, _ = run(["world", "lo w"], ["hello world"])
    assert matched == "lo w"
    assert emitted == ["hel"]


@pytest.mark.parametrize("split", range(1, 11))
def test_result_is_independent_of_piece_boundaries(split: int) -> None:
    text = "one two STOP three"
    emitted, matched, _ = run(["STOP"], [text[:split], text[split:]])
    assert matched == "STOP"
    assert "".join(emitted) == "one two "
