"""The speech segmenter: boundaries, abbreviations, the length cap, order, flush, and piece-split independence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from rillet.server.engine.segment import Segment, Segmenter, segments


def cut(text: str, **options: int) -> list[Segment]:
    """Segments of `text` fed whole, checked equal to those of the same text fed one character at a time."""
    whole = Segmenter(**options)
    at_once = whole.feed(text) + whole.flush()
    single = Segmenter(**options)
    by_char = [segment for char in text for segment in single.feed(char)] + single.flush()
    assert by_char == at_once
    return at_once


def test_sentences_are_cut_and_keep_their_punctuation() -> None:
    assert cut("Hello there. How are you? Fine! Well… maybe") == [
        "Hello there.",
        "How are you?",
        "Fine!",
        "Well…",
        "maybe",
    ]


def test_a_sentence_end_needs_following_whitespace_or_the_end_of_input() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("It is done.") == []  # "." might still be a decimal point or an abbreviation
    assert segmenter.feed(" Next") == ["It is done."]
    assert segmenter.flush() == ["Next"]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith and Mr. Jones met Prof. Lee.",
        "Bring fruit, e.g. apples or pears, and i.e. nothing else.",
        "The U.S. team arrived at 5 p.m. yesterday.",
        "J. R. R. Tolkien wrote it.",
        "It costs 3.5 dollars, or 3.50 with tax.",
        "Version 2.0.1 is out.",
    ],
)
def test_abbreviations_initials_and_decimals_do_not_end_a_sentence(text: str) -> None:
    assert cut(text, clause_chars=160, first_clause_chars=160) == [text]


def test_a_list_number_opening_a_segment_is_not_a_sentence() -> None:
    assert cut("1. Buy milk. 2. Get eggs.") == ["1. Buy milk.", "2. Get eggs."]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert cut('He said "stop." Then (quietly.) he left.') == ['He said "stop."', "Then (quietly.)", "he left."]


def test_the_first_segment_may_end_at_an_early_clause_later_ones_only_when_long() -> None:
    text = (
        "Well, as I was saying earlier, the plan is simple, and the later clauses wait, "
        "until they are long enough to cut, which they now are."
    )
    assert cut(text, first_clause_chars=20, clause_chars=60) == [
        "Well, as I was saying earlier,",  # "Well," is under 20 characters: no cut there
        "the plan is simple, and the later clauses wait, until they are long enough to cut,",  # 60+ characters
        "which they now are.",
    ]


@pytest.mark.parametrize("mark", [",", ";", ":", " —", "—", " -", " \u2013"])  # \u2013: en dash
def test_clause_marks(mark: str) -> None:
    text = f"one two three four{mark} five six seven eight"
    assert cut(text, first_clause_chars=10) == [f"one two three four{mark}".strip(), "five six seven eight"]


def test_numbers_with_commas_and_times_are_not_clauses() -> None:
    text = "We counted 1,000 birds at 10:30 this morning"
    assert cut(text, first_clause_chars=5) == [text]


def test_line_breaks_are_clauses_and_blank_lines_are_sentences() -> None:
    assert cut("Title\n\nShort line\nanother", first_clause_chars=5, clause_chars=5) == [
        "Title",
        "Short line",
        "another",
    ]
    assert cut("ab\ncd", first_clause_chars=5) == ["ab\ncd"]


def test_a_long_run_is_cut_at_the_last_space_within_the_cap() -> None:
    text = " ".join(["word"] * 50)  # 249 characters, no punctuation
    segments_ = cut(text, max_chars=40, clause_chars=20, first_clause_chars=10)
    assert all(len(s) <= 40 for s in segments_)
    assert all(s.split() == ["word"] * len(s.split()) for s in segments_)  # never mid-word
    assert " ".join(segments_) == text


def test_the_cap_prefers_a_late_clause_end_over_the_last_space() -> None:
    text = "aaaa bbbb cccc dddd eeee, ffff gggg hhhh iiii jjjj kkkk"
    assert cut(text, max_chars=40, clause_chars=40, first_clause_chars=40) == [
        "aaaa bbbb cccc dddd eeee,",
        "ffff gggg hhhh iiii jjjj kkkk",
    ]


def test_a_word_longer_than_the_cap_is_cut_mid_word() -> None:
    assert cut("x" * 50, max_chars=20) == ["x" * 20, "x" * 20, "x" * 10]


def test_the_first_segment_can_have_its_own_cap() -> None:
    text = " ".join(["word"] * 20)
    segments_ = cut(text, max_chars=60, clause_chars=30, first_clause_chars=10, first_max_chars=20)
    assert len(segments_[0]) <= 20
    assert all(len(s) <= 60 for s in segments_)


def test_order_and_words_are_preserved_whatever_the_piece_boundaries() -> None:
    text = (
        "The river runs past the mill, where light falls on stone. Dr. Ames said e.g. 3.5 metres! "
        "Is that right? Yes; and then—later—the water turns slowly under the old bridge "
        + "while birds sing " * 12
        + "of morning."
    )
    reference = cut(text, max_chars=60, clause_chars=30, first_clause_chars=10)
    assert " ".join(reference).split() == text.split()
    for size in (1, 2, 3, 7, 13):
        segmenter = Segmenter(max_chars=60, clause_chars=30, first_clause_chars=10)
        pieces = [text[k : k + size] for k in range(0, len(text), size)]
        out = [segment for piece in pieces for segment in segmenter.feed(piece)] + segmenter.flush()
        assert out == reference


def test_words_split_across_pieces_are_joined() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("Hel") == []
    assert segmenter.feed("lo wor") == []
    assert segmenter.feed("ld. Bye") == ["Hello world."]
    assert segmenter.flush() == ["Bye"]


def test_flush_emits_the_rest_and_whitespace_only_input_is_empty() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("  \n\t ") == []
    assert segmenter.flush() == []
    assert segmenter.emitted == 0
    assert segmenter.characters == 5
    assert segmenter.feed(" the tail without a stop ") == []
    assert segmenter.flush() == ["the tail without a stop"]
    assert segmenter.emitted == 1


def test_lengths_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Segmenter(max_chars=0)


async def _pieces(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_async_segments_yield_each_segment_as_soon_as_it_is_complete() -> None:
    seen: list[str] = []

    async def pieces() -> AsyncIterator[str]:
        for piece in ["First one.", " Second", " one.", " Tail"]:
            seen.append(piece)
            yield piece

    out: list[tuple[str, int]] = [(segment, len(seen)) async for segment in segments(pieces())]
    # "First one." is confirmed by the space that opens the second piece, before the third arrives.
    assert out == [("First one.", 2), ("Second one.", 4), ("Tail", 4)]


async def test_async_segments_use_the_given_segmenter() -> None:
    segmenter = Segmenter(max_chars=20)
    out = [s async for s in segments(_pieces(["abcdefghij" * 3]), segmenter)]
    assert out == ["abcdefghij" * 2, "abcdefghij"]
    assert segmenter.characters == 30
