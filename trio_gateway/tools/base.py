"""The tool protocol, the context a call runs in, and the declarative argument machinery.

A tool receives the model's raw JSON argument text and parses it itself. Built-ins do that by
declaring their arguments as an :class:`Arguments` struct: :func:`arguments_schema` derives the
JSON schema offered to the model and :func:`parse_arguments` validates a call against the same
struct, so what the model is told and what is accepted never disagree. :class:`StructTool` ties
the two together for a tool.

Imports ``messages``, ``errors`` and ``config`` only; never the agent or the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import msgspec
import trio

from ..config.schema import ToolsConfig
from ..errors import ToolError
from ..messages import ToolSpec
from ..wire.decoding import DECODE_ERRORS, DecodeFault, decode_fault

__all__ = [
    "Arguments",
    "StructTool",
    "Tool",
    "ToolContext",
    "arguments_schema",
    "call_tool",
    "parse_arguments",
    "truncate_result",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Where and for whom a tool call runs.

    ``workspace`` is the agent's working directory (see
    :func:`~trio_gateway.tools.workspace.workspace_for`); it need not exist yet: the tools that
    use it create it on first use.
    """

    agent_id: str
    run_id: str
    workspace: Path
    config: ToolsConfig


class Tool(Protocol):
    """A tool the model can call.

    ``call`` gets the model's raw JSON ``arguments`` text, parses and validates it, and returns
    the result text for the model. It raises :class:`~trio_gateway.errors.ToolError` when the
    call cannot be done (bad arguments, a refused path, a failed fetch): the message goes back to
    the model, so it says what to change. It stops promptly when cancelled and leaves nothing
    running behind it.
    """

    @property
    def spec(self) -> ToolSpec: ...

    async def call(self, arguments: str, context: ToolContext) -> str: ...


class Arguments(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of a tool's argument struct: unknown fields are refused, as the schema says.

    Describe each field with ``Annotated[T, msgspec.Meta(description=...)]``: the description
    is what the model reads.
    """


A = TypeVar("A", bound=Arguments)


def arguments_schema(arguments: type[Arguments]) -> dict[str, object]:
    """The JSON schema object of ``arguments``, inlined at the top as OpenAI expects.

    ``msgspec.json.schema`` puts every struct under ``$defs`` and refers to it; the top struct is
    inlined here (without its ``title`` and docstring ``description``: the tool's description
    says what it does). Nested structs, if any, stay under ``$defs``.
    """
    schema = msgspec.json.schema(arguments)
    definitions = schema.pop("$defs", {})
    reference = schema.pop("$ref", None)
    if isinstance(reference, str) and isinstance(definitions, dict):
        top = definitions.pop(reference.rsplit("/", 1)[-1])
        schema = {key: value for key, value in top.items() if key not in ("title", "description")}
        if definitions:
            schema["$defs"] = definitions
    return schema


def _usage(name: str, schema: dict[str, object]) -> str:
    """``name(path: string, max_bytes?: integer)``: a reminder of the expected arguments."""
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict):
        return f"{name}()"
    needed = set(required) if isinstance(required, list) else set()
    parts = []
    for key, value in properties.items():
        kind = _kind(value)
        parts.append(f"{key}{'' if key in needed else '?'}: {kind}")
    return f"{name}({', '.join(parts)})"


def _kind(schema: object) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema and isinstance(schema["enum"], list):
        return " | ".join(repr(value) for value in schema["enum"])
    if isinstance(schema.get("type"), str):
        return str(schema["type"])
    options = schema.get("anyOf")
    if isinstance(options, list):
        kinds = [_kind(option) for option in options]
        return " | ".join(kind for kind in kinds if kind != "null") or "null"
    return "any"


def parse_arguments(arguments: type[A], text: str, *, tool: str) -> A:
    """Decode the model's argument ``text`` into ``arguments``, or raise :class:`ToolError`.

    Empty text counts as ``{}`` (models send it for calls without arguments). The error says
    what is wrong (msgspec names the offending field as ``$.field``) and what the call should
    look like.
    """
    if not text.strip():
        text = "{}"
    try:
        return msgspec.json.decode(text, type=arguments)
    except DECODE_ERRORS as exc:
        usage = _usage(tool, arguments_schema(arguments))
        fault = decode_fault(exc, text)
        if fault is DecodeFault.SCHEMA:
            raise ToolError(f"invalid arguments for {tool}: {exc}; expected {usage}") from exc
        detail = fault.value if fault is not DecodeFault.SYNTAX else str(exc)
        raise ToolError(
            f"the arguments of {tool} are not valid JSON ({detail}); send one JSON object, "
            f"expected {usage}"
        ) from exc


class StructTool(Generic[A]):
    """A tool whose arguments are the :class:`Arguments` struct ``A``.

    Subclasses pass their name, description and argument struct to ``__init__`` and implement
    :meth:`run`, which receives the validated arguments.
    """

    def __init__(self, *, name: str, description: str, arguments: type[A]) -> None:
        self._arguments = arguments
        self._spec = ToolSpec(name, description, arguments_schema(arguments))

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: str, context: ToolContext) -> str:
        parsed = parse_arguments(self._arguments, arguments, tool=self._spec.name)
        return await self.run(parsed, context)

    async def run(self, arguments: A, context: ToolContext) -> str:
        """Do the work for validated ``arguments``; raise :class:`ToolError` on refusal."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._spec.name}>"


def truncate_result(result: str, max_chars: int) -> str:
    """``result`` cut to its first ``max_chars`` characters, with a note saying so to the model,
    when it is longer (``tools.maxResultChars``); else ``result`` itself."""
    if len(result) <= max_chars:
        return result
    return (
        f"{result[:max_chars]}\n[truncated by the gateway: showed the first {max_chars} of "
        f"{len(result)} characters; ask for less at a time]"
    )


async def call_tool(tool: Tool, arguments: str, context: ToolContext) -> str:
    """Call ``tool`` under the ``tools.timeoutSeconds`` deadline, logging the operation.

    A call that passes the deadline is cancelled (and cleans up) and becomes a
    :class:`ToolError` for the model. Other errors propagate unchanged. A result longer than
    ``tools.maxResultChars`` is cut by :func:`truncate_result`: whatever a tool returns, what
    goes back to the model is bounded.
    """
    name = tool.spec.name
    seconds = context.config.timeout_seconds
    logger.debug("tool.started name=%s agent=%s run=%s", name, context.agent_id, context.run_id)
    try:
        with trio.fail_after(seconds):
            result = await tool.call(arguments, context)
    except trio.TooSlowError as exc:
        logger.info(
            "tool.failed name=%s agent=%s run=%s reason=deadline seconds=%s",
            name,
            context.agent_id,
            context.run_id,
            seconds,
        )
        raise ToolError(
            f"{name} did not finish within {seconds:g} s (tools.timeoutSeconds) and was stopped"
        ) from exc
    except ToolError as exc:
        logger.debug(
            "tool.failed name=%s agent=%s run=%s error=%s",
            name,
            context.agent_id,
            context.run_id,
            exc.message,
        )
        raise
    logger.debug(
        "tool.complete name=%s agent=%s run=%s chars=%d",
        name,
        context.agent_id,
        context.run_id,
        len(result),
    )
    return truncate_result(result, context.config.max_result_chars)
