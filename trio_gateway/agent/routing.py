"""Which agent and which session a request goes to. Pure functions, no I/O.

Agent: the ``x-epiloop-agent-id`` header wins; else a ``model`` of the form ``epiloop:<id>``,
``epiloop/<id>`` or ``agent:<id>``; any other model string (``epiloop``, ``gpt-4o``, ...) means
the default agent. An id that is not configured is an error listing the configured ones. The
control plane and the CLI name the agent by id, or not at all.

Session: ``x-epiloop-session-key`` is used as is; else an OpenAI ``user`` derives a stable key
scoped to the agent (hashed, so any value is safe); else the request gets a fresh key and is
stateless (the control plane and the CLI continue the agent's main session instead). Keys
that start with ``agent:<id>`` are the agents' own namespace: such a key must name the agent
that runs it, so no agent can create sessions in another agent's name.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from ..config import AgentConfig, Config
from ..config.schema import AGENT_ID_RE
from ..errors import InvalidRequestError, ModelNotFoundError
from .request import RunRequest

__all__ = [
    "MAX_SESSION_KEY_LENGTH",
    "RunTarget",
    "agent_id_from_model",
    "check_session_key_owner",
    "default_agent",
    "find_agent",
    "named_agent",
    "resolve_target",
    "select_agent",
]

MAX_SESSION_KEY_LENGTH = 256
_MODEL_PREFIXES = ("epiloop:", "epiloop/", "agent:")
_AGENT_KEY_PREFIX = "agent:"


@dataclass(frozen=True, slots=True)
class RunTarget:
    agent: AgentConfig
    session_key: str
    #: ``True`` when the session key was made up for this request alone.
    stateless: bool
    #: ``True`` when the key was made up for this request and is recorded: nothing is stored
    #: under it yet, so there is nothing to read.
    fresh: bool = False


def default_agent(config: Config) -> AgentConfig:
    """The agent marked ``default: true``, else the first one."""
    agents = config.agents.entries
    if not agents:
        raise ModelNotFoundError("No agents are configured (agents.list is empty).", param="model")
    return next((agent for agent in agents if agent.default), agents[0])


def agent_id_from_model(model: str) -> str | None:
    """The agent id a model string names, or ``None`` for "the default agent"."""
    lowered = model.lower()
    for prefix in _MODEL_PREFIXES:
        if lowered.startswith(prefix):
            return model[len(prefix) :]
    return None


def named_agent(*, header_agent_id: str | None, model: str) -> tuple[str | None, str]:
    """The agent id an OpenAI-style request names (the header, else the model string; ``None``
    for the default agent) and the field that named it."""
    if header_agent_id is not None:
        return header_agent_id.strip(), "x-epiloop-agent-id"
    return agent_id_from_model(model), "model"


def select_agent(config: Config, *, header_agent_id: str | None, model: str) -> AgentConfig:
    """The agent an OpenAI-style request names (see :func:`named_agent`)."""
    agent_id, param = named_agent(header_agent_id=header_agent_id, model=model)
    return find_agent(config, agent_id, param=param)


def find_agent(config: Config, agent_id: str | None, *, param: str) -> AgentConfig:
    """The configured agent ``agent_id`` names (``None``: the default one); ``param`` is the
    request field that named it, for the refusal."""
    if agent_id is None:
        return default_agent(config)
    wanted = agent_id
    if not AGENT_ID_RE.match(wanted):
        raise InvalidRequestError(
            f"Invalid agent id {wanted!r}: expected 1-64 characters of letters, digits, '_' and "
            "'-', starting with a letter or digit.",
            param=param,
        )
    for agent in config.agents.entries:
        if agent.id.lower() == wanted.lower():
            return agent
    available = ", ".join(f"epiloop:{agent.id}" for agent in config.agents.entries) or "none"
    raise ModelNotFoundError(
        f"The model 'epiloop:{wanted}' does not exist: no agent {wanted!r} is configured. "
        f"Available: {available}.",
        param=param,
    )


def resolve_target(config: Config, request: RunRequest) -> RunTarget:
    """The agent and the session ``request`` runs in; see the module docstring."""
    agent = find_agent(config, request.agent_id, param=request.agent_param)
    if request.session_key is not None:
        key = _checked_session_key(request.session_key)
        check_session_key_owner(key, agent.id)
        return RunTarget(agent, key, stateless=False)
    if request.user:
        digest = hashlib.sha256(request.user.encode("utf-8")).hexdigest()[:32]
        return RunTarget(agent, f"agent:{agent.id.lower()}:user:{digest}", stateless=False)
    if request.default_session == "main":
        return RunTarget(agent, f"agent:{agent.id.lower()}:main", stateless=False)
    if request.default_session == "own":
        key = f"agent:{agent.id.lower()}:run:{uuid.uuid4().hex}"
        return RunTarget(agent, key, stateless=False, fresh=True)
    return RunTarget(agent, f"agent:{agent.id.lower()}:run:{uuid.uuid4().hex}", stateless=True)


def _checked_session_key(key: str) -> str:
    if not key or len(key) > MAX_SESSION_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise InvalidRequestError(
            "Invalid 'x-epiloop-session-key': expected 1 to "
            f"{MAX_SESSION_KEY_LENGTH} printable ASCII characters.",
            param="x-epiloop-session-key",
        )
    return key


def check_session_key_owner(key: str, agent_id: str) -> None:
    """Refuse a key of the form ``agent:<id>[:...]`` whose ``<id>`` is not ``agent_id``.

    Ids compare ignoring case, as everywhere else. Keys outside the ``agent:`` namespace are
    the caller's own names and belong to whichever agent first records them.
    """
    if key[: len(_AGENT_KEY_PREFIX)].lower() != _AGENT_KEY_PREFIX:
        return
    named = key[len(_AGENT_KEY_PREFIX) :].partition(":")[0]
    if named.lower() == agent_id.lower():
        return
    own = f"'agent:{agent_id.lower()}:...'"
    if AGENT_ID_RE.match(named):
        message = (
            f"The session key belongs to agent {named!r} (a key 'agent:<id>:...' belongs to agent "
            f"<id>), but this request runs agent {agent_id!r}. Select agent {named!r} (model "
            f"'epiloop:{named}' or the x-epiloop-agent-id header), or use a key of the form {own} "
            "or one without the 'agent:' prefix."
        )
    else:
        message = (
            "The session key starts with 'agent:' but does not name the agent that runs this "
            f"request, {agent_id!r} (a key 'agent:<id>:...' belongs to agent <id>). Use a key of "
            f"the form {own} or one without the 'agent:' prefix."
        )
    raise InvalidRequestError(
        message,
        param="x-epiloop-session-key",
        code="session_agent_mismatch",
    )
