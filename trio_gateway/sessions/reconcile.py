"""Reconciling a session's stored transcript with the messages a request sends. Pure, no I/O.

An OpenAI client may resend the whole conversation, edit an earlier message and resend from
there, or (a CLI, a chat box identified by ``user``) send only its new message. :func:`reconcile`
compares the request's non-system messages with the *visible* stored entries, those not marked
``internal`` (the gateway's own tool traffic, which a client never sees and never resends), and
says which stored entries to keep and which incoming messages to append.

Two messages match when their roles are equal, their contents are equal (exact strings), their
images are the same images in the same order (compared by identity: the SHA-256 of the bytes,
or the URL of a remote image; never by the bytes themselves), and, for assistant messages, their
tool calls (id, name, arguments) are equal. So a client that resends an image it sent before
continues the session; the image is not stored twice. A partial reply (status
``aborted`` or ``failed``) is stored with the text produced so far, so it matches only a client
that resent exactly that text.

The rules, first match wins. In the examples ``U1`` is a user message, ``A1`` an assistant
reply, ``t`` an internal entry, and indexes count the whole stored transcript.

``continued``
    The request starts with every visible stored message: keep all, append the rest.

    stored ``U1 A1``, incoming ``U1 A1 U2`` → ``keep=None, new=(U2,)``.
    A request that is exactly the visible transcript appends nothing: ``new=()``.

``rebased``
    At least two incoming messages; the first matches the first visible stored message; they
    diverge at visible position ``j``, or the request ends before the stored transcript does.
    Keep the transcript up to the ``j``-th visible entry (internal entries before it stay,
    everything from it on goes) and append ``incoming[j:]``.

    stored ``U1 A1 U2 t t A2`` (indexes 0-5), incoming ``U1 A1 U2'`` (U2 edited):
    ``j=2``, ``keep=2``, ``new=(U2',)``.

    Same stored, incoming ``U1 A1 U2`` (the client regenerates the last reply): the request
    ends at ``j=3``, ``keep=5`` (A2's index: the tool traffic that preceded it stays),
    ``new=()``.

    stored ``U1 A1*`` (``A1*``: an aborted partial reply), incoming ``U1 U2`` (the client never
    showed the partial reply): ``j=1``, ``keep=1``, ``new=(U2,)``. Had the client resent
    ``U1 A1* U2`` with exactly the partial text, the rule would be ``continued``.

``appended``
    Anything else: an empty (or all internal) stored transcript, a first message that differs,
    or a single incoming message, even one equal to the first stored message (a client that
    sends only its new message, say "hi" twice). Keep all, append every incoming message.

    stored ``U1 A1``, incoming ``U2`` → ``keep=None, new=(U2,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..messages import Message
from .store import TranscriptEntry, visible

__all__ = ["ReconcileRule", "Reconciled", "matches", "reconcile"]

ReconcileRule = Literal["continued", "rebased", "appended"]


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What to do with a stored transcript, given a request's messages."""

    #: ``None``: keep the whole stored transcript; else truncate it to this many entries.
    keep: int | None
    #: The request's messages to append (after truncating).
    new: tuple[Message, ...]
    rule: ReconcileRule


def matches(entry: TranscriptEntry, message: Message) -> bool:
    """A stored entry and an incoming message are the same message (see the module docs)."""
    if entry.role != message.role or entry.content != message.content:
        return False
    if [image.key for image in entry.images] != [image.key for image in message.images]:
        return False
    if entry.role == "assistant":
        return tuple(entry.tool_calls) == tuple(message.tool_calls)
    return True


def reconcile(stored: Sequence[TranscriptEntry], incoming: Sequence[Message]) -> Reconciled:
    """Decide what to keep of ``stored`` and what to append from ``incoming``.

    ``incoming`` is the request's messages without system and developer ones.
    """
    shown = visible(stored)
    if not shown:
        return Reconciled(None, tuple(incoming), "appended")
    agreed = 0
    for index, message in zip(shown, incoming, strict=False):
        if not matches(stored[index], message):
            break
        agreed += 1
    if agreed == len(shown):
        return Reconciled(None, tuple(incoming[agreed:]), "continued")
    if len(incoming) >= 2 and agreed >= 1:
        return Reconciled(shown[agreed], tuple(incoming[agreed:]), "rebased")
    return Reconciled(None, tuple(incoming), "appended")
