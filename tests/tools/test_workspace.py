"""Tests for :mod:`trio_gateway.tools.workspace`: where workspaces live and path confinement."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from trio_gateway.config.schema import AgentConfig, AgentDefaults
from trio_gateway.errors import ToolError
from trio_gateway.tools import confine, open_workspace, workspace_for

STATE = Path("/var/lib/epiloop")


def test_workspace_for_defaults_to_the_state_dir() -> None:
    path = workspace_for(AgentConfig(id="main"), AgentDefaults(), STATE)
    assert path == STATE / "workspaces" / "main"


def test_workspace_for_puts_each_agent_under_the_defaults_workspace() -> None:
    defaults = AgentDefaults(workspace="/srv/agents")
    assert workspace_for(AgentConfig(id="ops"), defaults, STATE) == Path("/srv/agents/ops")


def test_workspace_for_uses_the_agent_workspace_as_is() -> None:
    defaults = AgentDefaults(workspace="/srv/agents")
    agent = AgentConfig(id="ops", workspace="/home/me/project")
    assert workspace_for(agent, defaults, STATE) == Path("/home/me/project")


def test_workspace_for_expands_the_home_directory() -> None:
    agent = AgentConfig(id="ops", workspace="~/project")
    assert workspace_for(agent, AgentDefaults(), STATE) == Path.home() / "project"
    defaults = AgentDefaults(workspace="~/agents")
    assert workspace_for(AgentConfig(id="a"), defaults, STATE) == Path.home() / "agents" / "a"


def test_workspace_for_takes_relative_paths_from_the_state_dir() -> None:
    agent = AgentConfig(id="ops", workspace="work/ops")
    assert workspace_for(agent, AgentDefaults(), STATE) == STATE / "work" / "ops"
    defaults = AgentDefaults(workspace="shared")
    assert workspace_for(AgentConfig(id="a"), defaults, STATE) == STATE / "shared" / "a"


async def test_open_workspace_creates_it_private_on_first_use(tmp_path: Path) -> None:
    workspace = tmp_path / "state" / "workspaces" / "main"
    with trio.fail_after(5):
        assert await open_workspace(workspace) == workspace.resolve()
        assert stat.S_IMODE(workspace.stat().st_mode) == 0o700
        # Again: an existing workspace is used as it is.
        workspace.chmod(0o750)
        assert await open_workspace(workspace) == workspace.resolve()
    assert stat.S_IMODE(workspace.stat().st_mode) == 0o750


async def test_open_workspace_that_is_a_file_is_a_tool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with trio.fail_after(5), pytest.raises(ToolError, match="exists but is not a directory"):
        await open_workspace(tmp_path / "file")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    (path / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    return path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.txt", "a.txt"),
        ("sub/a.txt", "sub/a.txt"),
        ("./sub/../a.txt", "a.txt"),
        (".", "."),
        ("sub/", "sub"),
        ("new/deeper/file", "new/deeper/file"),
    ],
)
def test_confine_maps_relative_paths_into_the_workspace(
    root: Path, path: str, expected: str
) -> None:
    assert confine(root, path) == (root / expected).resolve()


def test_confine_accepts_an_absolute_path_inside_the_workspace(root: Path) -> None:
    assert confine(root, str(root / "sub" / "x")) == root.resolve() / "sub" / "x"


@pytest.mark.parametrize("path", ["..", "../x", "sub/../../x", "../ws2/x", "../ws/../../x"])
def test_confine_refuses_dot_dot_out_of_the_workspace(root: Path, path: str) -> None:
    with pytest.raises(ToolError, match=r"climbs out of the workspace with '\.\.'"):
        confine(root, path)


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "//x"])
def test_confine_refuses_absolute_paths_outside(root: Path, path: str) -> None:
    with pytest.raises(ToolError, match="is outside the workspace"):
        confine(root, path)


def test_confine_refuses_symlinks_leading_out(root: Path, tmp_path: Path) -> None:
    (root / "out").symlink_to(tmp_path / "elsewhere")
    (root / "sub" / "up").symlink_to("../..")
    (root / "dangling").symlink_to(tmp_path / "elsewhere" / "nothing-yet")
    for path in ["out", "out/x", "sub/up/elsewhere", "dangling", "out/../elsewhere"]:
        with pytest.raises(ToolError, match="out of the workspace through a symbolic link"):
            confine(root, path)


def test_confine_follows_symlinks_that_stay_inside(root: Path) -> None:
    (root / "alias").symlink_to("sub")
    assert confine(root, "alias/x") == root.resolve() / "sub" / "x"


def test_confine_accepts_a_workspace_reached_through_a_symlink(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "link-to-ws"
    link.symlink_to(root)
    assert confine(link, "sub/x") == root.resolve() / "sub" / "x"
    assert confine(link, str(link / "sub" / "x")) == root.resolve() / "sub" / "x"


def test_confine_refuses_nul_characters(root: Path) -> None:
    with pytest.raises(ToolError, match="NUL"):
        confine(root, "a\x00b")


def test_confine_reports_a_symlink_loop(root: Path) -> None:
    os.symlink("loop", root / "loop")
    with pytest.raises(ToolError):
        confine(root, "loop/x")
