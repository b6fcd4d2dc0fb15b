"""Renumbering tool-call deltas for the client: sans-IO, no event loop."""

from __future__ import annotations

from trio_gateway.agent.renumbering import ToolCallRenumbering
from trio_gateway.providers.base import ToolCallDelta


def feed(renumbering: ToolCallRenumbering, *deltas: ToolCallDelta) -> list[ToolCallDelta]:
    out = [renumbering.feed(delta) for delta in deltas]
    return [delta for delta in out if delta is not None]


def test_renumbering_hides_agent_calls_and_numbers_client_calls_from_zero() -> None:
    renumbering = ToolCallRenumbering({"ask_user"})
    sent = feed(
        renumbering,
        ToolCallDelta(0, "a", "read_file", '{"path":'),
        ToolCallDelta(1, "b", "ask_user", '{"q":'),
        ToolCallDelta(0, None, None, '"x"}'),
        ToolCallDelta(1, None, None, '"hi"}'),
    )
    assert sent == [
        ToolCallDelta(0, "b", "ask_user", '{"q":'),
        ToolCallDelta(0, None, None, '"hi"}'),
    ]


def test_renumbering_holds_pieces_until_the_name_arrives() -> None:
    renumbering = ToolCallRenumbering({"ask_user"})
    assert renumbering.feed(ToolCallDelta(0, "a", None, '{"q"')) is None
    assert renumbering.feed(ToolCallDelta(0, None, None, ":")) is None
    named = renumbering.feed(ToolCallDelta(0, None, "ask_user", '"hi"}'))
    assert named == ToolCallDelta(0, "a", "ask_user", '{"q":"hi"}')


def test_renumbering_drops_held_pieces_of_an_agent_call() -> None:
    renumbering = ToolCallRenumbering({"ask_user"})
    assert renumbering.feed(ToolCallDelta(0, "a", None, "{")) is None
    assert renumbering.feed(ToolCallDelta(0, None, "read_file", "}")) is None
    assert renumbering.feed(ToolCallDelta(0, None, None, "more")) is None


def test_renumbering_continues_the_client_numbers_across_answers() -> None:
    renumbering = ToolCallRenumbering({"ask_user", "pick"})
    first = feed(renumbering, ToolCallDelta(0, "a", "ask_user", "{}"))
    renumbering.start_answer()
    second = feed(
        renumbering,
        ToolCallDelta(0, "b", "read_file", "{}"),
        ToolCallDelta(1, "c", "pick", "{}"),
    )
    assert [delta.index for delta in first] == [0]
    assert second == [ToolCallDelta(1, "c", "pick", "{}")]
