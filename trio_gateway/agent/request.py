"""The run request: what a transport asks the runtime to run, in the runtime's own terms.

Each transport translates its own input into a :class:`RunRequest`: the HTTP chat completions
route its OpenAI body and headers, the WebSocket control plane its ``agent`` params, the CLI its
options. The runtime never sees a transport's wire types. Plain data, no behaviour; it must not
import ``wire`` or anything above ``agent``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..messages import Message, ToolSpec

__all__ = ["RunRequest"]


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One run, as every transport can express it."""

    #: The conversation, in order: system and developer messages are the request's
    #: instructions (after the agent's system prompt), the others its conversation.
    messages: Sequence[Message]
    #: The agent the transport was told to run, or ``None`` for the default agent.
    agent_id: str | None = None
    #: Which of the transport's fields named ``agent_id`` (the ``param`` of a refusal).
    agent_param: str = "x-epiloop-agent-id"
    #: The session to continue, used as is (checked against the agent's key namespace).
    session_key: str | None = None
    #: A caller's stable identity: without ``session_key`` it derives a session of its own.
    user: str | None = None
    #: Without ``session_key`` and ``user``: ``"stateless"`` runs in a fresh session of its own,
    #: ``"main"`` continues the agent's main session (``agent:<id>:main``), ``"own"`` runs in a
    #: fresh session of its own that is recorded (a stored response, which a later request may
    #: continue).
    default_session: Literal["stateless", "main", "own"] = "stateless"
    #: Continue the session right after its first ``continue_at`` transcript entries (what a
    #: stored response's turn left), appending ``messages`` as they are (no reconciling):
    #: ``previous_response_id``. ``None``: reconcile the messages with the stored transcript.
    continue_at: int | None = None
    #: Tools the client runs itself: a call of one ends the run with ``tool_calls``.
    client_tools: Sequence[ToolSpec] = ()
    #: ``"auto"``, ``"none"``, ``"required"`` or a function object, for the first model call.
    tool_choice: str | Mapping[str, object] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    #: A key that makes a retry follow the run the first request started (see ``active_runs``).
    idempotency_key: str | None = None
    #: Which transport started the run (the ``source`` of its listing and its metrics).
    source: str = "http"
