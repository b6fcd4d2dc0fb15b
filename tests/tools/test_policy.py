"""Tests for :mod:`trio_gateway.tools.policy`: which tools an agent may use."""

from __future__ import annotations

import pytest

from trio_gateway.config.schema import DEFAULT_TOOL_ALLOW, ToolPolicy
from trio_gateway.tools.policy import allowed, matches

NONE = ToolPolicy()

CASES = [
    # (tool, agent policy, defaults, allowed?)
    ("read_file", None, NONE, True),
    ("current_time", None, NONE, True),
    ("write_file", None, NONE, True),
    ("list_files", None, NONE, True),
    ("exec", None, NONE, False),
    ("http_fetch", None, NONE, False),
    ("exec", ToolPolicy(allow=["exec"]), NONE, True),
    # The agent's allow list replaces the inherited one.
    ("read_file", ToolPolicy(allow=["exec"]), NONE, False),
    ("read_file", ToolPolicy(allow=["exec"]), ToolPolicy(allow=["read_file"]), False),
    # The defaults' allow list replaces the built-in one.
    ("http_fetch", None, ToolPolicy(allow=["*"]), True),
    ("read_file", None, ToolPolicy(allow=["http_fetch"]), False),
    ("http_fetch", ToolPolicy(deny=["exec"]), ToolPolicy(allow=["*"]), True),
    # An empty allow list allows nothing.
    ("read_file", ToolPolicy(allow=[]), NONE, False),
    ("read_file", None, ToolPolicy(allow=[]), False),
    # Patterns.
    ("read_file", ToolPolicy(allow=["*_file"]), NONE, True),
    ("list_files", ToolPolicy(allow=["*_file"]), NONE, False),
    ("exec", ToolPolicy(allow=["*"]), NONE, True),
    ("Exec", ToolPolicy(allow=["exec"]), NONE, False),
    # Deny wins, from either list.
    ("exec", ToolPolicy(allow=["*"], deny=["exec"]), NONE, False),
    ("exec", ToolPolicy(allow=["exec"]), ToolPolicy(deny=["ex*"]), False),
    ("read_file", None, ToolPolicy(deny=["read_file"]), False),
    ("read_file", ToolPolicy(deny=["*"]), NONE, False),
    ("write_file", ToolPolicy(deny=["write_*"]), NONE, False),
    ("read_file", ToolPolicy(deny=["write_*"]), NONE, True),
    # The agent cannot lift a default deny.
    ("exec", ToolPolicy(allow=["exec"], deny=[]), ToolPolicy(deny=["exec"]), False),
]


@pytest.mark.parametrize(("name", "policy", "defaults", "expected"), CASES)
def test_allowed_follows_the_policy_table(
    name: str, policy: ToolPolicy | None, defaults: ToolPolicy, expected: bool
) -> None:
    assert allowed(name, policy, defaults) is expected


def test_allowed_defaults_to_the_built_in_allow_list() -> None:
    everything = ["current_time", "read_file", "list_files", "write_file", "http_fetch", "exec"]
    assert [name for name in everything if allowed(name, None, NONE)] == list(DEFAULT_TOOL_ALLOW)


@pytest.mark.parametrize(
    ("name", "patterns", "expected"),
    [
        ("exec", [], False),
        ("exec", ["exec"], True),
        ("exec", ["e*"], True),
        ("exec", ["*c"], True),
        ("exec", ["ex"], False),
        ("exec", ["EXEC"], False),
        ("read_file", ["list_*", "read_*"], True),
    ],
)
def test_matches_uses_fnmatch_patterns(name: str, patterns: list[str], expected: bool) -> None:
    assert matches(name, patterns) is expected
