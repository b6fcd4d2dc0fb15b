"""Tests for :mod:`trio_gateway.wire.sse`: SSE framing and the incremental decoder."""

from __future__ import annotations

import pytest

from trio_gateway.wire.sse import DONE, KEEP_ALIVE, SSEDecoder, SSEError, SSEEvent, encode_data

# A stream exercising most of the parser: comments, multi-line data, named events, ids, retry,
# a BOM, every line ending, a field without a colon and an event without data.
MIXED_STREAM = (
    b"\xef\xbb\xbf: hello comment\n"
    b"data: first\n"
    b"\n"
    b"event: update\r\n"
    b"id: 42\r\n"
    b"data: line one\r\n"
    b"data:line two\r\n"
    b"\r\n"
    b"retry: 1500\r"
    b"data:  two spaces\r"
    b"\r"
    b"event: lonely\n"
    b"\n"
    b"data\n"
    b"\n"
    b'data: {"k": "\xc3\xbc\xf0\x9f\x98\x80"}\n'
    b"\n"
)
MIXED_EVENTS = [
    SSEEvent(data="first"),
    SSEEvent(data="line one\nline two", event="update", id="42"),
    SSEEvent(data=" two spaces", id="42", retry=1500),
    SSEEvent(data="", id="42", retry=1500),
    SSEEvent(data='{"k": "ü😀"}', id="42", retry=1500),
]


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


# --- encoding ------------------------------------------------------------------------------------


def test_encode_data_frames_one_event() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_data(b"") == b"data: \n\n"


def test_done_and_keep_alive_constants() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert KEEP_ALIVE == b": keep-alive\n\n"


def test_encode_data_decodes_back() -> None:
    frames = encode_data(b'{"x":"y"}') + KEEP_ALIVE + DONE

    assert decode(frames) == [SSEEvent(data='{"x":"y"}'), SSEEvent(data="[DONE]")]


# --- feeding strategies --------------------------------------------------------------------------


def test_sse_decoder_mixed_stream_whole() -> None:
    assert decode(MIXED_STREAM) == MIXED_EVENTS


def test_sse_decoder_mixed_stream_byte_by_byte() -> None:
    chunks = [MIXED_STREAM[i : i + 1] for i in range(len(MIXED_STREAM))]

    assert decode(*chunks) == MIXED_EVENTS


def test_sse_decoder_mixed_stream_split_at_every_position() -> None:
    for position in range(len(MIXED_STREAM) + 1):
        head, tail = MIXED_STREAM[:position], MIXED_STREAM[position:]
        assert decode(head, tail) == MIXED_EVENTS, f"split at byte {position}"


def test_sse_decoder_mixed_stream_split_at_every_pair_of_positions() -> None:
    size = len(MIXED_STREAM)
    for first in range(size + 1):
        for second in range(first, size + 1, 7):
            chunks = (MIXED_STREAM[:first], MIXED_STREAM[first:second], MIXED_STREAM[second:])
            assert decode(*chunks) == MIXED_EVENTS, f"split at bytes {first} and {second}"


A_THEN_B = [SSEEvent(data="a"), SSEEvent(data="b")]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: a\n\ndata: b\n\n", A_THEN_B, id="LF"),
        pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", A_THEN_B, id="CRLF"),
        pytest.param(b"data: a\r\rdata: b\r\r", A_THEN_B, id="CR"),
        pytest.param(b"data: a\r\n\ndata: b\r\n\n", A_THEN_B, id="CRLF-then-LF"),
        pytest.param(b"data: a\n\r\ndata: b\n\r\n", A_THEN_B, id="LF-then-CRLF"),
        pytest.param(b"data: a\r\n\rdata: b\r\n\r", A_THEN_B, id="CRLF-then-CR"),
        pytest.param(
            b"data: a\r\ndata: \r\n\ndata: b\n\n",
            [SSEEvent(data="a\n"), SSEEvent(data="b")],
            id="empty-data-line",
        ),
    ],
)
def test_sse_decoder_small_streams_any_feeding(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode(stream) == expected, "whole"
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == expected, "byte by byte"
    for position in range(len(stream) + 1):
        assert decode(stream[:position], stream[position:]) == expected, f"split at {position}"


def test_sse_decoder_lf_after_a_split_crlf_is_a_blank_line() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    # This LF is not part of the CRLF above: it is the blank line that ends the event.
    assert decoder.feed(b"\n") == [SSEEvent(data="a")]


def test_sse_decoder_returns_events_as_they_complete() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(data="a")]
    assert decoder.feed(b"data: b\n\ndata: c\n\ndata: d") == [
        SSEEvent(data="b"),
        SSEEvent(data="c"),
    ]
    assert decoder.feed(b"\n\n") == [SSEEvent(data="d")]
    assert decoder.feed(b"") == []


def test_sse_decoder_openai_style_stream() -> None:
    stream = encode_data(b'{"n":1}') + encode_data(b'{"n":2}') + KEEP_ALIVE + DONE

    assert decode(stream) == [
        SSEEvent(data='{"n":1}'),
        SSEEvent(data='{"n":2}'),
        SSEEvent(data="[DONE]"),
    ]


# --- line endings --------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_sse_decoder_line_endings(eol: bytes) -> None:
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol + b"data: x"
    stream += eol + eol

    # Only the first two: the trailing-CR case is covered by the next test.
    assert decode(stream)[:2] == [SSEEvent(data="a\nb"), SSEEvent(data="c")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_sse_decoder_dispatches_an_event_as_soon_as_its_blank_line_arrives(eol: bytes) -> None:
    # A CR ends a line by itself (WHATWG): the event must not wait for the next byte, which may
    # never come when the server closes the stream after its last event.
    assert decode(b"data: last" + eol + eol) == [SSEEvent(data="last")]


def test_sse_decoder_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\n"

    assert decode(stream) == [SSEEvent(data="a\nb\nc"), SSEEvent(data="d")]


def test_sse_decoder_crlf_split_across_feeds_is_one_line_ending() -> None:
    # Were the "\r" and the "\n" two line endings, the LF would be a blank line dispatching "a".
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\ndata: c\r\n\r\n") == [SSEEvent(data="a\nb\nc")]
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SSEEvent(data="a\nb")]


def test_sse_decoder_cr_then_other_byte_in_next_feed() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"data: b\r\r\n") == [SSEEvent(data="a\nb")]


def test_sse_decoder_blank_lines_between_events_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n\r\rdata: x\n\n\n\n") == [SSEEvent(data="x")]


# --- fields --------------------------------------------------------------------------------------


def test_sse_decoder_skips_comments() -> None:
    stream = b": comment\n:\n:data: not data\ndata: real\n: between\n\n"

    assert decode(stream) == [SSEEvent(data="real")]


def test_sse_decoder_comment_only_block_dispatches_nothing() -> None:
    assert decode(KEEP_ALIVE * 3) == []


def test_sse_decoder_joins_multi_line_data_with_newlines() -> None:
    assert decode(b"data: a\ndata: b\ndata:\ndata: c\n\n") == [SSEEvent(data="a\nb\n\nc")]


def test_sse_decoder_event_field_names_the_event_once() -> None:
    assert decode(b"event: ping\ndata: 1\n\ndata: 2\n\n") == [
        SSEEvent(data="1", event="ping"),
        SSEEvent(data="2", event="message"),
    ]


def test_sse_decoder_empty_event_field_means_message() -> None:
    assert decode(b"event:\ndata: x\n\n") == [SSEEvent(data="x", event="message")]


def test_sse_decoder_id_persists_until_changed() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n"

    assert decode(stream) == [
        SSEEvent(data="a", id="1"),
        SSEEvent(data="b", id="1"),
        SSEEvent(data="c", id="2"),
        SSEEvent(data="d", id=""),
    ]


def test_sse_decoder_id_with_nul_is_ignored() -> None:
    assert decode(b"id: 7\ndata: a\n\nid: x\x00y\ndata: b\n\n") == [
        SSEEvent(data="a", id="7"),
        SSEEvent(data="b", id="7"),
    ]


@pytest.mark.parametrize(
    ("line", "retry"),
    [
        (b"retry: 3000", 3000),
        (b"retry:0", 0),
        (b"retry: 10x", None),
        (b"retry: -5", None),
        (b"retry: 1.5", None),
        (b"retry: ", None),
        (b"retry:  100", None),
    ],
)
def test_sse_decoder_retry_field(line: bytes, retry: int | None) -> None:
    assert decode(line + b"\ndata: x\n\n") == [SSEEvent(data="x", retry=retry)]


@pytest.mark.parametrize(
    "value",
    ["\u00b2", "\u0661\u0660", "\uff11"],
    ids=["superscript-two", "arabic-indic-ten", "fullwidth-one"],
)
def test_sse_decoder_retry_accepts_only_ascii_digits(value: str) -> None:
    # WHATWG: "If the field value consists of only ASCII digits"; str.isdigit() is wider, and
    # int() rejects some of what it accepts ("²"), so the decoder must not crash or accept them.
    stream = b"retry: " + value.encode() + b"\ndata: x\n\n"

    assert decode(stream) == [SSEEvent(data="x", retry=None)]


def test_sse_decoder_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: x\nDATA: y\nData: z\n\n") == [SSEEvent(data="x")]


def test_sse_decoder_field_without_colon_has_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [SSEEvent(data="\n")]
    assert decode(b"event\ndata: x\n\n") == [SSEEvent(data="x", event="message")]


def test_sse_decoder_event_without_data_is_not_dispatched() -> None:
    stream = b"event: orphan\nid: 9\n\ndata: next\n\n"

    # The orphan's event type is dropped with it; the id, a stream-level setting, stays.
    assert decode(stream) == [SSEEvent(data="next", event="message", id="9")]


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data: value", "value"),
        (b"data:value", "value"),
        (b"data:  value", " value"),
        (b"data:   value", "  value"),
        (b"data: ", ""),
        (b"data:", ""),
        (b"data:\tvalue", "\tvalue"),
        (b"data: value ", "value "),
        (b"data: a: b", "a: b"),
        (b"data: : x", ": x"),
    ],
)
def test_sse_decoder_removes_one_leading_space(line: bytes, data: str) -> None:
    assert decode(line + b"\n\n") == [SSEEvent(data=data)]


# --- BOM and encoding ----------------------------------------------------------------------------


def test_sse_decoder_strips_a_leading_bom() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent(data="x")]


def test_sse_decoder_strips_a_bom_split_across_feeds() -> None:
    assert decode(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [SSEEvent(data="x")]


def test_sse_decoder_strips_only_one_bom_and_only_at_the_start() -> None:
    # A second BOM makes the first field name "\ufeffdata", which is unknown.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [SSEEvent(data="y")]
    assert decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\ndata: c\n\n") == [
        SSEEvent(data="a"),
        SSEEvent(data="c"),
    ]


def test_sse_decoder_multibyte_utf8_split_across_feeds() -> None:
    payload = "data: ü 😀 中\n\n".encode()

    for position in range(len(payload) + 1):
        assert decode(payload[:position], payload[position:]) == [SSEEvent(data="ü 😀 中")]


def test_sse_decoder_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\n\n") == [SSEEvent(data="a\ufffdb")]


def test_sse_event_defaults() -> None:
    event = SSEEvent(data="d")

    assert (event.data, event.event, event.id, event.retry) == ("d", "message", None, None)


# --- limits --------------------------------------------------------------------------------------


def test_sse_decoder_refuses_a_line_longer_than_the_limit_in_one_feed() -> None:
    decoder = SSEDecoder(max_event_bytes=1024)

    assert decoder.feed(b"data: " + b"x" * 1018 + b"\n\n") == [SSEEvent(data="x" * 1018)]
    with pytest.raises(SSEError, match="longer than 1024 bytes"):
        decoder.feed(b"data: " + b"x" * 1019 + b"\n\n")


def test_sse_decoder_refuses_a_line_that_never_ends() -> None:
    decoder = SSEDecoder(max_event_bytes=4096)
    assert decoder.feed(b"data: ok\n\ndata: ") == [SSEEvent(data="ok")]
    for _ in range(4):  # 4,000 bytes after "data: ": still within the limit
        assert decoder.feed(b"y" * 1000) == []
    with pytest.raises(SSEError, match="longer than 4096 bytes"):
        decoder.feed(b"y" * 1000)


def test_sse_decoder_refuses_a_long_line_ended_in_a_later_feed() -> None:
    decoder = SSEDecoder(max_event_bytes=2048)
    assert decoder.feed(b"data: " + b"z" * 1500) == []
    with pytest.raises(SSEError):
        decoder.feed(b"z" * 1000 + b"\n\n")


def test_sse_decoder_refuses_an_event_with_too_much_data() -> None:
    # Every line is short; the event they make up is not.
    decoder = SSEDecoder(max_event_bytes=1024)
    assert decoder.feed(b"data: " + b"a" * 1000 + b"\n\n") == [SSEEvent(data="a" * 1000)]
    with pytest.raises(SSEError, match="more than 1024 bytes of data"):
        decoder.feed(b"data: " + b"b" * 600 + b"\n" + b"data: " + b"b" * 600 + b"\n\n")


def test_sse_decoder_counts_data_per_event() -> None:
    line = b"data: " + b"c" * 700 + b"\n\n"

    assert decode(line * 50) == [SSEEvent(data="c" * 700)] * 50


def test_sse_decoder_a_long_stream_split_anywhere_decodes_the_same() -> None:
    stream = b"".join(b"data: " + str(index).encode() * 90 + b"\r\n\r\n" for index in range(200))
    expected = decode(stream)
    assert len(expected) == 200
    for size in (1, 7, 64, 1000):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert decode(*chunks) == expected


def test_sse_decoder_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SSEDecoder(max_event_bytes=0)


def test_sse_decoder_counts_empty_data_lines_against_the_limit() -> None:
    # Each data line adds a newline to the event's data: empty ones must not grow it unbounded.
    decoder = SSEDecoder(max_event_bytes=1024)
    with pytest.raises(SSEError, match="more than 1024 bytes of data"):
        decoder.feed(b"data:\n" * 2000)
