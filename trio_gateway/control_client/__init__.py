"""A client of the gateway's WebSocket control plane (protocol: docs/control-protocol.md).

``open_control_client(url, token=...)`` connects, answers the ``connect.challenge`` and yields a
:class:`ControlClient` whose reader task (in a nursery the client owns) routes every frame that
arrives: a response to the request waiting for its id, an ``agent`` event to the run it belongs
to. ``request`` sends one request and returns its payload; ``run_agent`` starts a run, hands its
events to a callback and returns the final result. Cancelling ``run_agent`` after the run was
accepted aborts the run on the gateway (``agent.abort``, shielded and bounded).

Every failure leaves as a :class:`~trio_gateway.errors.ControlPlaneError`: an ``ok: false``
response carries the gateway's ``code``; a connection the gateway refused or closed carries the
close code and reason. trio-websocket's and the socket's exceptions are translated here, once.

The protocol itself (frames, close codes, method params) is :mod:`trio_gateway.wire.control`,
which the gateway reads too; only the client itself does I/O here. This package imports nothing
from the server: it is the gateway's outside view. Its modules: ``open`` (connecting, the
handshake's deadline, closing), ``client`` (requests, runs, the reader that routes frames) and
``failures`` (how failures are named).
"""

from __future__ import annotations

from ..wire.control import PROTOCOL_VERSION as PROTOCOL_VERSION
from ..wire.control import EventFrame as EventFrame
from ..wire.control import Frame as Frame
from ..wire.control import ResponseFrame as ResponseFrame
from ..wire.control import encode_request as encode_request
from ..wire.control import parse_frame as parse_frame
from .client import ControlClient as ControlClient
from .client import ControlStatistics as ControlStatistics
from .client import EventHandler as EventHandler
from .failures import AUTH_FAILED as AUTH_FAILED
from .failures import GATEWAY_UNREACHABLE as GATEWAY_UNREACHABLE
from .failures import ControlError as ControlError
from .failures import closed_error as closed_error
from .failures import is_auth_failure as is_auth_failure
from .open import open_control_client as open_control_client

__all__ = [
    "AUTH_FAILED",
    "GATEWAY_UNREACHABLE",
    "PROTOCOL_VERSION",
    "ControlClient",
    "ControlError",
    "ControlStatistics",
    "EventFrame",
    "EventHandler",
    "Frame",
    "ResponseFrame",
    "closed_error",
    "encode_request",
    "is_auth_failure",
    "open_control_client",
    "parse_frame",
]
