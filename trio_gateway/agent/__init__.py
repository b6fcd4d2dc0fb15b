"""The agent runtime: routing a request to an agent and a session, and running it.

Every transport (the HTTP chat completions route, the WebSocket control plane and the
``epiloop agent`` CLI) calls the same two steps of :class:`AgentRuntime`: ``prepare`` (pure
routing and validation, so errors come before the first byte) and ``run`` (the agent run, which
emits :mod:`events <trio_gateway.agent.events>` and stops promptly when cancelled).
"""

from .events import RunEvent as RunEvent
from .events import RunFailed as RunFailed
from .events import RunFinished as RunFinished
from .events import RunStarted as RunStarted
from .routing import RunTarget as RunTarget
from .runtime import AgentRuntime as AgentRuntime
from .runtime import PreparedRun as PreparedRun
from .runtime import RunResult as RunResult
from .runtime import open_runtime as open_runtime
