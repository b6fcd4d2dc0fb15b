"""Reconciling a stored transcript with a request's messages: pure, table-driven, no event loop."""

from __future__ import annotations

from dataclasses import replace

import pytest

from trio_gateway.messages import Image, Message, ToolCall
from trio_gateway.sessions.reconcile import Reconciled, matches, reconcile
from trio_gateway.sessions.store import RunStatus, TranscriptEntry

CALL = ToolCall("call_1", "lookup", '{"q": "trio"}')


def u(text: str) -> Message:
    return Message("user", text)


def a(text: str, *calls: ToolCall) -> Message:
    return Message("assistant", text, tool_calls=calls)


def stored(message: Message, status: RunStatus = "completed") -> TranscriptEntry:
    return TranscriptEntry.of(message, status=status)


def internal(message: Message) -> TranscriptEntry:
    return TranscriptEntry.of(message, internal=True)


# The gateway's own tool traffic around a reply: never seen by the client.
TOOL_CALL = internal(a("", ToolCall("gw_1", "exec", "{}")))
TOOL_RESULT = internal(Message("tool", "output", tool_call_id="gw_1"))

# U1 A1 U2 t t A2: indexes 0-5, visible 0, 1, 2, 5.
HISTORY = [
    stored(u("U1")),
    stored(a("A1")),
    stored(u("U2")),
    TOOL_CALL,
    TOOL_RESULT,
    stored(a("A2")),
]


# --- continued ------------------------------------------------------------------------------


def test_reconcile_continued_when_the_client_resends_everything() -> None:
    result = reconcile(HISTORY, [u("U1"), a("A1"), u("U2"), a("A2"), u("U3")])
    assert result == Reconciled(None, (u("U3"),), "continued")


def test_reconcile_continued_with_nothing_new() -> None:
    result = reconcile(HISTORY, [u("U1"), a("A1"), u("U2"), a("A2")])
    assert result == Reconciled(None, (), "continued")


def test_reconcile_continued_with_several_new_messages() -> None:
    result = reconcile([stored(u("U1")), stored(a("A1"))], [u("U1"), a("A1"), u("U2"), u("U3")])
    assert result == Reconciled(None, (u("U2"), u("U3")), "continued")


def test_reconcile_continued_ignores_internal_entries_at_the_end() -> None:
    transcript = [stored(u("U1")), stored(a("A1")), TOOL_CALL, TOOL_RESULT]
    result = reconcile(transcript, [u("U1"), a("A1"), u("U2")])
    assert result == Reconciled(None, (u("U2"),), "continued")


def test_reconcile_continued_with_client_tool_calls_and_results() -> None:
    transcript = [
        stored(u("U1")),
        stored(a("", CALL)),
        stored(Message("tool", "result", tool_call_id="call_1")),
        stored(a("A1")),
    ]
    incoming = [
        u("U1"),
        a("", CALL),
        Message("tool", "result", tool_call_id="call_1"),
        a("A1"),
        u("U2"),
    ]
    assert reconcile(transcript, incoming) == Reconciled(None, (u("U2"),), "continued")


@pytest.mark.parametrize("status", ["aborted", "failed"])
def test_reconcile_continued_when_a_partial_reply_is_resent_exactly(status: RunStatus) -> None:
    transcript = [stored(u("U1")), stored(a("Hel"), status)]
    result = reconcile(transcript, [u("U1"), a("Hel"), u("U2")])
    assert result == Reconciled(None, (u("U2"),), "continued")


def test_reconcile_continued_when_the_only_visible_message_is_resent() -> None:
    # Rule (a) comes first: the request starts with every visible stored message.
    result = reconcile([stored(u("U1")), TOOL_CALL], [u("U1")])
    assert result == Reconciled(None, (), "continued")


# --- rebased --------------------------------------------------------------------------------


def test_reconcile_rebased_on_an_edited_message() -> None:
    result = reconcile(HISTORY, [u("U1"), a("A1"), u("U2 edited")])
    assert result == Reconciled(2, (u("U2 edited"),), "rebased")


def test_reconcile_rebased_on_an_edited_second_message() -> None:
    result = reconcile(HISTORY, [u("U1"), u("U1b")])
    assert result == Reconciled(1, (u("U1b"),), "rebased")


def test_reconcile_rebased_drops_internal_entries_after_the_divergence() -> None:
    result = reconcile(HISTORY, [u("U1"), a("A1"), u("U2"), a("A2 rewritten"), u("U3")])
    # A2 is at index 5: the tool traffic before it (3, 4) stays.
    assert result == Reconciled(5, (a("A2 rewritten"), u("U3")), "rebased")


def test_reconcile_rebased_keeps_internal_entries_before_the_divergence() -> None:
    transcript = [stored(u("U1")), TOOL_CALL, TOOL_RESULT, stored(a("A1")), stored(u("U2"))]
    result = reconcile(transcript, [u("U1"), a("other")])
    assert result == Reconciled(3, (a("other"),), "rebased")


def test_reconcile_rebased_when_the_request_ends_first() -> None:
    # The client regenerates the last reply: it resends up to U2 only.
    result = reconcile(HISTORY, [u("U1"), a("A1"), u("U2")])
    assert result == Reconciled(5, (), "rebased")


def test_reconcile_rebased_when_the_request_is_a_shorter_prefix() -> None:
    result = reconcile(HISTORY, [u("U1"), a("A1")])
    assert result == Reconciled(2, (), "rebased")


@pytest.mark.parametrize("status", ["aborted", "failed"])
def test_reconcile_rebased_when_a_partial_reply_is_not_resent(status: RunStatus) -> None:
    transcript = [stored(u("U1")), stored(a("Hel"), status)]
    result = reconcile(transcript, [u("U1"), u("U2")])
    assert result == Reconciled(1, (u("U2"),), "rebased")


def test_reconcile_rebased_when_a_partial_reply_is_resent_differently() -> None:
    transcript = [stored(u("U1")), stored(a("Hel"), "aborted")]
    result = reconcile(transcript, [u("U1"), a("Hello"), u("U2")])
    assert result == Reconciled(1, (a("Hello"), u("U2")), "rebased")


@pytest.mark.parametrize(
    "resent",
    [
        a("", ToolCall("call_2", "lookup", '{"q": "trio"}')),
        a("", ToolCall("call_1", "search", '{"q": "trio"}')),
        a("", ToolCall("call_1", "lookup", '{"q":"trio"}')),
        a(""),
        a("", CALL, CALL),
    ],
)
def test_reconcile_rebased_when_tool_calls_differ(resent: Message) -> None:
    transcript = [stored(u("U1")), stored(a("", CALL)), stored(Message("tool", "r"))]
    result = reconcile(transcript, [u("U1"), resent, Message("tool", "r")])
    assert result == Reconciled(1, (resent, Message("tool", "r")), "rebased")


# --- appended -------------------------------------------------------------------------------


def test_reconcile_appended_to_an_empty_transcript() -> None:
    assert reconcile([], [u("U1"), a("A1"), u("U2")]) == Reconciled(
        None, (u("U1"), a("A1"), u("U2")), "appended"
    )


def test_reconcile_appended_when_every_stored_entry_is_internal() -> None:
    result = reconcile([TOOL_CALL, TOOL_RESULT], [u("U1")])
    assert result == Reconciled(None, (u("U1"),), "appended")


def test_reconcile_appended_for_a_client_that_sends_only_its_new_message() -> None:
    assert reconcile(HISTORY, [u("U3")]) == Reconciled(None, (u("U3"),), "appended")


def test_reconcile_appended_for_a_single_message_equal_to_the_first_stored_one() -> None:
    # A CLI that says "U1" again: a new message, not a rebase onto the first one.
    assert reconcile(HISTORY, [u("U1")]) == Reconciled(None, (u("U1"),), "appended")


def test_reconcile_appended_when_the_first_message_differs() -> None:
    incoming = [u("another conversation"), a("A1"), u("U2")]
    assert reconcile(HISTORY, incoming) == Reconciled(None, tuple(incoming), "appended")


def test_reconcile_appended_when_the_first_message_differs_in_role() -> None:
    incoming = [a("U1"), u("next")]
    assert reconcile(HISTORY, incoming) == Reconciled(None, tuple(incoming), "appended")


def test_reconcile_appended_with_no_incoming_messages() -> None:
    assert reconcile(HISTORY, []) == Reconciled(None, (), "appended")


def test_reconcile_does_not_resend_internal_entries() -> None:
    # A client that somehow resent the gateway's tool traffic diverges at that point.
    incoming = [u("U1"), a("A1"), u("U2"), a("", ToolCall("gw_1", "exec", "{}")), a("A2")]
    result = reconcile(HISTORY, incoming)
    assert result == Reconciled(5, tuple(incoming[3:]), "rebased")


# --- matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message", "expected"),
    [
        (stored(u("hi")), u("hi"), True),
        (stored(u("hi")), u("hi "), False),
        (stored(u("hi")), u("Hi"), False),
        (stored(u("hi")), a("hi"), False),
        (stored(u("hi")), Message("user", "hi", name="alice"), True),
        (stored(a("x", CALL)), a("x", CALL), True),
        (stored(a("x", CALL)), a("x"), False),
        (stored(a("x", CALL)), a("y", CALL), False),
        (stored(a("partial"), "aborted"), a("partial"), True),
        (stored(a("partial"), "failed"), a("partial and more"), False),
        (
            stored(Message("tool", "r", tool_call_id="call_1")),
            Message("tool", "r", tool_call_id="call_1"),
            True,
        ),
        (stored(Message("tool", "r")), Message("tool", "other"), False),
        (internal(u("hi")), u("hi"), True),  # matching itself ignores ``internal``
    ],
)
def test_matches(entry: TranscriptEntry, message: Message, expected: bool) -> None:
    assert matches(entry, message) is expected


# --- the worked examples of docs/sessions.md ------------------------------------------------


def test_reconcile_docs_examples() -> None:
    trio_q, trio_a = u("What is trio?"), a("A structured concurrency library.")
    # 1: the client resends everything (the system message is left out by the caller).
    assert reconcile([stored(trio_q), stored(trio_a)], [trio_q, trio_a, u("Who wrote it?")]) == (
        Reconciled(None, (u("Who wrote it?"),), "continued")
    )
    # 2: an edited question, then a regenerated answer, then a partial reply left out.
    transcript = [
        stored(trio_q),
        stored(trio_a),
        stored(u("Show me an example with sockets.")),
        internal(a("", ToolCall("gw_1", "http_fetch", "{}"))),
        internal(Message("tool", "<html>", tool_call_id="gw_1")),
        stored(a("Here is an example...")),
    ]
    edited = u("Show me an example with channels.")
    assert reconcile(transcript, [trio_q, trio_a, edited]) == Reconciled(2, (edited,), "rebased")
    regenerate = [trio_q, trio_a, u("Show me an example with sockets.")]
    assert reconcile(transcript, regenerate) == Reconciled(5, (), "rebased")
    aborted = [*transcript[:5], stored(a("Here is an ex"), "aborted")]
    assert reconcile(aborted, [*regenerate, u("Go on")]) == Reconciled(5, (u("Go on"),), "rebased")
    # 3: a command-line client sends only its new message.
    assert reconcile(transcript, [u("And in Rust?")]) == Reconciled(
        None, (u("And in Rust?"),), "appended"
    )


# -- images: compared by identity (hash or URL), never by bytes ------------------------------

CAT = Image("image/png", "c" * 64, b"cat bytes")
DOG = Image("image/png", "d" * 64, b"dog bytes")
REMOTE = Image(url="https://images.example/cat.png")


def look(text: str, *images: Image) -> Message:
    return Message("user", text, images=images)


@pytest.mark.parametrize(
    ("history", "incoming", "expected"),
    [
        # The client resends the image it sent: the session continues, nothing is duplicated.
        ([look("U1", CAT), a("A1")], [look("U1", CAT), a("A1"), u("U2")], (None, 2, "continued")),
        # The stored copy has no bytes loaded: the hash alone decides.
        (
            [look("U1", replace(CAT, data=None)), a("A1")],
            [look("U1", CAT), a("A1"), u("U2")],
            (None, 2, "continued"),
        ),
        # Same text, another image: a different message (the client re-based on it).
        (
            [u("U0"), a("A0"), look("U1", CAT)],
            [u("U0"), a("A0"), look("U1", DOG)],
            (2, 2, "rebased"),
        ),
        # The image dropped from the resent message: different too.
        ([u("U0"), a("A0"), look("U1", CAT)], [u("U0"), a("A0"), u("U1")], (2, 2, "rebased")),
        # Order counts; a remote image is compared by its URL.
        (
            [look("U1", CAT, REMOTE), a("A1")],
            [look("U1", REMOTE, CAT), a("A1")],
            (None, 0, "appended"),
        ),
        (
            [look("U1", REMOTE), a("A1")],
            [look("U1", replace(REMOTE, detail="low")), a("A1")],
            (None, 2, "continued"),
        ),
    ],
)
def test_reconcile_compares_images_by_identity(
    history: list[Message], incoming: list[Message], expected: tuple[int | None, int, str]
) -> None:
    result = reconcile([stored(message) for message in history], incoming)
    keep, new_from, rule = expected
    assert (result.keep, result.rule) == (keep, rule)
    assert result.new == tuple(incoming[new_from:])
