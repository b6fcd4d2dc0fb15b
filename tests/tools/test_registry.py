"""Tests for :mod:`trio_gateway.tools.registry`: the built-ins and the tools an agent gets."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from trio_gateway.config.schema import AgentConfig, AgentDefaults, ToolPolicy
from trio_gateway.errors import ToolError
from trio_gateway.tools import CurrentTimeTool, Tool, ToolRegistry, default_registry

BUILT_INS = ["current_time", "read_file", "list_files", "write_file", "http_fetch", "exec"]


def names(tools: Iterable[Tool]) -> list[str]:
    return [tool.spec.name for tool in tools]


def test_default_registry_holds_every_built_in() -> None:
    registry = default_registry()
    assert registry.names() == BUILT_INS
    assert len(registry) == len(BUILT_INS)
    assert "exec" in registry
    assert "nope" not in registry
    assert names(registry) == BUILT_INS


def test_registry_get_returns_the_tool_by_name() -> None:
    registry = default_registry()
    assert registry.get("read_file").spec.name == "read_file"


def test_registry_get_unknown_tool_is_a_tool_error_listing_the_tools() -> None:
    with pytest.raises(ToolError, match=r"no tool named 'nope' \(tools: current_time, read_file"):
        default_registry().get("nope")


def test_registry_register_refuses_a_duplicate_name() -> None:
    registry = ToolRegistry([CurrentTimeTool()])
    with pytest.raises(ValueError, match="registered already"):
        registry.register(CurrentTimeTool())


def test_registry_tools_for_applies_the_default_allow_list() -> None:
    tools = default_registry().tools_for(AgentConfig(id="main"), AgentDefaults())
    assert names(tools) == ["current_time", "read_file", "list_files", "write_file"]


def test_registry_tools_for_applies_the_agent_policy_over_the_defaults() -> None:
    agent = AgentConfig(id="ops", tools=ToolPolicy(allow=["*"], deny=["write_file"]))
    defaults = AgentDefaults(tools=ToolPolicy(deny=["http_fetch"]))
    tools = default_registry().tools_for(agent, defaults)
    assert names(tools) == ["current_time", "read_file", "list_files", "exec"]


def test_registry_tools_for_can_give_an_agent_no_tools() -> None:
    agent = AgentConfig(id="plain", tools=ToolPolicy(allow=[]))
    assert default_registry().tools_for(agent, AgentDefaults()) == []
