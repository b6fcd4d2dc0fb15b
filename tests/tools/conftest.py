"""Fixtures shared by the tool tests: a workspace under ``tmp_path`` and a context for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_gateway.config.schema import ToolsConfig
from trio_gateway.tools import ToolContext


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The agent's workspace; not created: the tools create it on first use."""
    return tmp_path / "workspace"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, which no file tool may reach."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("top secret")
    return path


@pytest.fixture
def context(workspace: Path) -> ToolContext:
    return ToolContext(agent_id="main", run_id="run-1", workspace=workspace, config=ToolsConfig())
