"""Renumbering a model's tool-call deltas for the client. Sans-IO: deltas in, deltas out.

A model numbers the tool calls of each answer 0, 1, 2, ... and may call the agent's own tools
and the client's tools in one answer. The client sees only calls of its own tools, numbered
0, 1, 2, ... across the run, with each call's first delta carrying its id and name. A call's
name may arrive after its first pieces: those pieces are held (they are bounded by the run's
output limits) until the name says whose call it is. Must not import trio or anything that
does I/O.
"""

from __future__ import annotations

from collections.abc import Collection

from ..providers.base import ToolCallDelta

__all__ = ["ToolCallRenumbering"]

#: The index of a call of an agent tool: the client never sees it.
_AGENT_CALL = -1


class ToolCallRenumbering:
    """Feed it a run's tool-call deltas; it returns the ones the client sees, renumbered."""

    def __init__(self, client_names: Collection[str]) -> None:
        self._client_names = client_names
        #: The client's index of each call of the current answer, by the model's index.
        self._indexes: dict[int, int] = {}
        #: Pieces of calls whose name has not arrived yet: (id, arguments so far).
        self._unnamed: dict[int, tuple[str | None, str]] = {}
        #: Client calls seen in the run so far (the next one's index).
        self._client_calls = 0

    def start_answer(self) -> None:
        """A new model answer begins: its calls are numbered from 0 again by the model."""
        self._indexes.clear()
        self._unnamed.clear()

    def feed(self, delta: ToolCallDelta) -> ToolCallDelta | None:
        """The delta to send the client, or ``None`` (an agent tool's, or held until named)."""
        index = delta.index
        client_index = self._indexes.get(index)
        if client_index is None:
            if delta.name is None:
                call_id, arguments = self._unnamed.get(index, (None, ""))
                self._unnamed[index] = (call_id or delta.id, arguments + delta.arguments)
                return None
            call_id, arguments = self._unnamed.pop(index, (None, ""))
            if delta.name not in self._client_names:
                self._indexes[index] = _AGENT_CALL
                return None
            client_index = self._indexes[index] = self._client_calls
            self._client_calls += 1
            return ToolCallDelta(
                client_index, delta.id or call_id, delta.name, arguments + delta.arguments
            )
        if client_index == _AGENT_CALL:
            return None
        return ToolCallDelta(client_index, delta.id, delta.name, delta.arguments)
