"""Agent workspaces: where each agent's workspace lives, and keeping file paths inside it.

:func:`workspace_for` only computes the path (it is pure); :func:`open_workspace` creates the
directory on first use (mode ``0o700``); :func:`confine` maps a path the model gave to a real
path inside the workspace, or refuses it. ``confine`` touches the file system (it resolves
symbolic links), so callers run it in a worker thread.

Imports only ``errors`` and the config schema.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from ..config.schema import AgentConfig, AgentDefaults
from ..errors import ToolError

__all__ = ["confine", "open_workspace", "workspace_for"]

#: Mode of a workspace directory the gateway creates: only its owner may enter it.
WORKSPACE_MODE = 0o700


def _under_state_dir(configured: str, state_dir: Path) -> Path:
    path = Path(configured).expanduser()
    return path if path.is_absolute() else state_dir / path


def workspace_for(agent: AgentConfig, defaults: AgentDefaults, state_dir: Path) -> Path:
    """The workspace directory of ``agent`` (not created here: see :func:`open_workspace`).

    * ``agent.workspace`` when set: that directory, as is;
    * else ``agents.defaults.workspace`` when set: a directory *under which* each agent gets
      its own ``<agent id>`` subdirectory, so agents never share files by accident;
    * else ``<state dir>/workspaces/<agent id>``.

    ``~`` is expanded; a relative path is taken relative to the state directory (not the
    process's working directory, which the gateway does not control).
    """
    if agent.workspace:
        return _under_state_dir(agent.workspace, state_dir)
    if defaults.workspace:
        return _under_state_dir(defaults.workspace, state_dir) / agent.id
    return state_dir / "workspaces" / agent.id


def _create(workspace: Path) -> Path:
    try:
        workspace.mkdir(mode=WORKSPACE_MODE, parents=True, exist_ok=True)
        return workspace.resolve(strict=True)
    except FileExistsError as exc:
        raise ToolError(f"the workspace {workspace} exists but is not a directory") from exc
    except OSError as exc:
        raise ToolError(f"cannot create the workspace {workspace}: {exc.strerror}") from exc


async def open_workspace(workspace: Path) -> Path:
    """Create ``workspace`` if it does not exist yet (mode ``0o700``); return its real path.

    An existing directory is used as it is (its mode is left alone).
    """
    return await trio.to_thread.run_sync(_create, workspace)


def confine(workspace: Path, path: str) -> Path:
    """The real path that ``path`` names inside ``workspace``, or a :class:`ToolError`.

    ``path`` is taken relative to the workspace; an absolute path is accepted only when it lies
    inside the workspace. Refused: ``..`` that climbs out of the workspace, absolute paths
    elsewhere, and paths that leave it through a symbolic link (in any component, the last one
    included, even a dangling one). The result has every symbolic link resolved, so using it
    does not follow a link the check did not see. Blocking: run it in a worker thread.
    """
    if "\x00" in path:
        raise ToolError(f"the path {path!r} contains a NUL character")
    root = workspace.resolve()
    requested = Path(path)
    candidate = root / requested  # an absolute ``requested`` replaces ``root``
    lexical = Path(os.path.normpath(candidate))
    spelled = Path(os.path.abspath(workspace))  # the workspace as configured, links unresolved
    if not (lexical.is_relative_to(root) or lexical.is_relative_to(spelled)):
        if requested.is_absolute():
            raise ToolError(
                f"the path {path!r} is outside the workspace ({root}); use a path relative to "
                "the workspace"
            )
        raise ToolError(
            f"the path {path!r} climbs out of the workspace with '..'; use a path inside the "
            "workspace"
        )
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ToolError(f"the path {path!r} cannot be resolved: {exc}") from exc
    if not resolved.is_relative_to(root):
        raise ToolError(
            f"the path {path!r} leads out of the workspace through a symbolic link; only "
            "files inside the workspace can be used"
        )
    return resolved
