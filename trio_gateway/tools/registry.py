"""The tool registry: the tools the gateway knows, and the ones an agent may use.

The registry holds tools by name; :meth:`ToolRegistry.tools_for` applies an agent's tool policy
(:func:`~trio_gateway.tools.policy.allowed`). Enforcing the policy at call time (a model calling
a tool it was not offered) is the runtime's job: look calls up in the agent's ``tools_for``
list, not in the registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..config.schema import AgentConfig, AgentDefaults
from ..errors import ToolError
from .base import Tool
from .builtin import (
    CurrentTimeTool,
    ExecTool,
    HttpFetchTool,
    ListFilesTool,
    ReadFileTool,
    WriteFileTool,
)
from .policy import allowed
from .workspace import workspace_for

__all__ = ["ToolRegistry", "default_registry", "workspace_for"]


class ToolRegistry:
    """Tools by name, in registration order."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add ``tool``; a second tool with the same name is a programming error."""
        name = tool.spec.name
        if name in self._tools:
            raise ValueError(f"a tool named {name!r} is registered already")
        self._tools[name] = tool

    def get(self, name: str) -> Tool:
        """The tool called ``name``; :class:`ToolError` (for the model) when there is none."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(self._tools) or "none"
            raise ToolError(f"there is no tool named {name!r} (tools: {known})") from None

    def names(self) -> list[str]:
        """The registered tool names, in registration order."""
        return list(self._tools)

    def tools_for(self, agent: AgentConfig, defaults: AgentDefaults) -> list[Tool]:
        """The tools ``agent`` may use under its policy over ``defaults`` (registration order)."""
        return [
            tool for name, tool in self._tools.items() if allowed(name, agent.tools, defaults.tools)
        ]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


def default_registry() -> ToolRegistry:
    """A registry with every built-in tool (policy decides which an agent gets)."""
    return ToolRegistry(
        [
            CurrentTimeTool(),
            ReadFileTool(),
            ListFilesTool(),
            WriteFileTool(),
            HttpFetchTool(),
            ExecTool(),
        ]
    )
