"""TextDecoder: token bytes, text pieces or cumulative text in; whole characters, stop strings held back, out."""

from __future__ import annotations

import pytest

from rillet.server.engine.text import StopCheck, TextDecoder


def feed_all(pieces: list[bytes], stops: tuple[str, ...] = ()) -> list[str]:
    decoder = TextDecoder(stops)
    return [decoder.feed_bytes(piece).emit for piece in pieces] + [decoder.finish().emit]


# -- bytes: never a character split across outputs -------------------------------------------------------------------


@pytest.mark.parametrize("char", ["é", "日", "🦩", "ꙮ"])
def test_a_character_split_byte_by_byte_is_emitted_once_whole(char: str) -> None:
    data = char.encode()
    outputs = feed_all([data[i : i + 1] for i in range(len(data))])
    assert outputs[: len(data) - 1] == [""] * (len(data) - 1)
    assert outputs[len(data) - 1] == char
    assert "".join(outputs) == char


def test_splits_at_every_position_of_mixed_text_reassemble_exactly() -> None:
    text = "a é 日本 🦩 z"
    data = text.encode()
    for cut in range(len(data) + 1):
        outputs = feed_all([data[:cut], data[cut:]])
        assert "".join(outputs) == text
        assert all("\ufffd" not in out for out in outputs)


def test_emits_the_longest_complete_prefix_at_once() -> None:
    decoder = TextDecoder(())
    flamingo = "🦩".encode()
    assert decoder.feed_bytes(b"ab" + flamingo[:2]) == StopCheck("ab")
    assert decoder.feed_bytes(flamingo[2:] + b"c") == StopCheck("🦩c")


def test_invalid_bytes_become_replacement_and_an_incomplete_tail_is_released_at_finish() -> None:
    decoder = TextDecoder(())
    assert decoder.feed_bytes(b"\xff").emit == "\ufffd"
    assert decoder.feed_bytes(b"ok\xf0\x9f").emit == "ok"
    assert decoder.finish() == StopCheck("\ufffd")


# -- bytes and stop strings together ---------------------------------------------------------------------------------


def test_a_stop_string_of_multibyte_characters_split_across_tokens_is_found_and_never_emitted() -> None:
    data = "x 🦩! after".encode()
    decoder = TextDecoder(("🦩!",))
    emitted: list[str] = []
    matched = None
    for byte in data:
        check = decoder.feed_bytes(bytes([byte]))
        emitted.append(check.emit)
        if check.matched is not None:
            matched = check.matched
            break
    assert matched == "🦩!"
    assert "".join(emitted) == "x "


def test_finish_releases_the_held_prefix_of_a_stop_string() -> None:
    decoder = TextDecoder(("END",))
    assert decoder.feed_bytes(b"the E") == StopCheck("the ")
    assert decoder.feed_bytes(b"N") == StopCheck("")
    assert decoder.finish() == StopCheck("EN")


def test_a_stop_string_completed_by_the_incomplete_tail_at_finish_matches() -> None:
    decoder = TextDecoder(("a\ufffd",))
    assert decoder.feed_bytes(b"a\xf0\x9f") == StopCheck("")  # "a" held: it may start the stop string
    assert decoder.finish() == StopCheck("", "a\ufffd")


# -- text pieces (the synthetic engine) ------------------------------------------------------------------------------


def test_text_pieces_pass_through_the_stop_matcher() -> None:
    decoder = TextDecoder(("river runs",))
    assert decoder.feed("the ") == StopCheck("the ")
    assert decoder.feed("river ") == StopCheck("")
    assert decoder.feed("runs ") == StopCheck("", "river runs")


# -- cumulative text (TensorRT-LLM's CompletionOutput.text) ----------------------------------------------------------


def test_cumulative_text_feeds_only_what_is_new() -> None:
    decoder = TextDecoder(())
    assert decoder.feed_cumulative("Hel") == StopCheck("Hel")
    assert decoder.feed_cumulative("Hello") == StopCheck("lo")
    assert decoder.feed_cumulative("Hello") == StopCheck("")  # new token ids, no new text (held-back UTF-8)
    assert decoder.feed_cumulative("Hello, 🦩") == StopCheck(", 🦩")
    assert decoder.finish() == StopCheck("")


def test_a_stop_string_spanning_cumulative_outputs_is_found_and_never_emitted() -> None:
    decoder = TextDecoder(("lo w",))
    assert decoder.feed_cumulative("Hel") == StopCheck("He")  # "l" may start the stop string
    assert decoder.feed_cumulative("Hello") == StopCheck("l")  # "lo" may start it
    assert decoder.feed_cumulative("Hello world") == StopCheck("", "lo w")


def test_the_final_cumulative_output_releases_what_was_held() -> None:
    decoder = TextDecoder(("END",))
    check = decoder.feed_cumulative("the answer E")
    assert check == StopCheck("the answer ")
    end = decoder.finish()  # the engine finished for another reason (length, end token)
    assert end == StopCheck("E")
    assert check.emit + end.emit == "the answer E"
