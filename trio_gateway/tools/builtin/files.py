"""The workspace file tools: ``read_file``, ``list_files`` and ``write_file``.

Every path is confined to the agent's workspace by
:func:`~trio_gateway.tools.workspace.confine` (no ``..`` escapes, no absolute paths elsewhere,
no symbolic links leading out). File system work runs in worker threads; ``OSError`` becomes a
:class:`~trio_gateway.errors.ToolError` here, at the boundary.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from ...errors import ToolError
from ..base import Arguments, StructTool, ToolContext
from ..workspace import confine, open_workspace
from .text import decode_text

__all__ = [
    "ListFilesArguments",
    "ListFilesTool",
    "ReadFileArguments",
    "ReadFileTool",
    "WriteFileArguments",
    "WriteFileTool",
]

DEFAULT_READ_BYTES = 128 * 1024
MAX_READ_BYTES = 1024 * 1024
DEFAULT_LIST_ENTRIES = 200
MAX_LIST_ENTRIES = 2000

_PATH_DESCRIPTION = "A path relative to the workspace, e.g. 'notes/todo.md'."


def _os_error(action: str, path: str, exc: OSError) -> ToolError:
    if isinstance(exc, FileNotFoundError):
        return ToolError(f"cannot {action} {path!r}: no such file or directory")
    if isinstance(exc, PermissionError):
        return ToolError(f"cannot {action} {path!r}: permission denied")
    if isinstance(exc, IsADirectoryError):
        return ToolError(f"cannot {action} {path!r}: it is a directory (use list_files)")
    if isinstance(exc, NotADirectoryError):
        return ToolError(f"cannot {action} {path!r}: a part of the path is not a directory")
    if exc.errno == errno.ELOOP:
        return ToolError(f"cannot {action} {path!r}: it is a symbolic link")
    return ToolError(f"cannot {action} {path!r}: {exc.strerror or exc}")


def _display(root: Path, target: Path) -> str:
    relative = target.relative_to(root).as_posix()
    return relative if relative != "." else "."


# --- read_file ---------------------------------------------------------------------------------


class ReadFileArguments(Arguments, frozen=True):
    path: Annotated[str, msgspec.Meta(min_length=1, description=_PATH_DESCRIPTION)]
    max_bytes: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=MAX_READ_BYTES,
            description="Read at most this many bytes from the start of the file.",
        ),
    ] = DEFAULT_READ_BYTES


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK


def _read(root: Path, arguments: ReadFileArguments) -> str:
    target = confine(root, arguments.path)
    try:
        # O_NONBLOCK: opening a FIFO must not hang the worker thread; non-files are refused.
        with os.fdopen(os.open(target, _READ_FLAGS), "rb") as file:
            status = os.fstat(file.fileno())
            if stat.S_ISDIR(status.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(status.st_mode):
                raise ToolError(f"cannot read {arguments.path!r}: it is not a regular file")
            size = status.st_size
            data = file.read(arguments.max_bytes + 1)
    except OSError as exc:
        raise _os_error("read", arguments.path, exc) from exc
    truncated = len(data) > arguments.max_bytes
    text = decode_text(data[: arguments.max_bytes], complete=not truncated)
    if truncated:
        text += (
            f"\n[truncated: showed the first {arguments.max_bytes} bytes of {max(size, len(data))}"
            f"; pass a larger max_bytes (at most {MAX_READ_BYTES}) to read more]"
        )
    return text


class ReadFileTool(StructTool[ReadFileArguments]):
    """``read_file``: the text of a file in the workspace (UTF-8, bad bytes replaced)."""

    def __init__(self) -> None:
        super().__init__(
            name="read_file",
            description=(
                "Read a text file from your workspace. Returns its content as UTF-8 text; long "
                "files are truncated to max_bytes, with a note saying so."
            ),
            arguments=ReadFileArguments,
        )

    async def run(self, arguments: ReadFileArguments, context: ToolContext) -> str:
        root = await open_workspace(context.workspace)
        return await trio.to_thread.run_sync(_read, root, arguments)


# --- list_files --------------------------------------------------------------------------------


class ListFilesArguments(Arguments, frozen=True):
    path: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="A directory relative to the workspace; default: the workspace itself.",
        ),
    ] = "."
    limit: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_LIST_ENTRIES, description="List at most this many entries."),
    ] = DEFAULT_LIST_ENTRIES


def _is_directory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _list(root: Path, arguments: ListFilesArguments) -> str:
    target = confine(root, arguments.path)
    try:
        with os.scandir(target) as entries:
            names = sorted(entry.name + ("/" if _is_directory(entry) else "") for entry in entries)
    except OSError as exc:
        if isinstance(exc, NotADirectoryError):
            raise ToolError(
                f"cannot list {arguments.path!r}: it is a file, not a directory (use read_file)"
            ) from exc
        raise _os_error("list", arguments.path, exc) from exc
    where = _display(root, target)
    if not names:
        return f"{where}: empty directory"
    count = f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}"
    lines = [f"{where}: {count} (directories end with '/')", *names[: arguments.limit]]
    if len(names) > arguments.limit:
        lines.append(
            f"[truncated: {len(names) - arguments.limit} more entries not shown; "
            f"pass a larger limit (at most {MAX_LIST_ENTRIES}) or list a subdirectory]"
        )
    return "\n".join(lines)


class ListFilesTool(StructTool[ListFilesArguments]):
    """``list_files``: the entries of a workspace directory, sorted, directories marked."""

    def __init__(self) -> None:
        super().__init__(
            name="list_files",
            description=(
                "List the files and directories in a directory of your workspace, sorted by "
                "name; directory names end with '/'."
            ),
            arguments=ListFilesArguments,
        )

    async def run(self, arguments: ListFilesArguments, context: ToolContext) -> str:
        root = await open_workspace(context.workspace)
        return await trio.to_thread.run_sync(_list, root, arguments)


# --- write_file --------------------------------------------------------------------------------


class WriteFileArguments(Arguments, frozen=True):
    path: Annotated[str, msgspec.Meta(min_length=1, description=_PATH_DESCRIPTION)]
    content: Annotated[
        str, msgspec.Meta(description="The complete new content of the file (UTF-8 text).")
    ]


_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_NOFOLLOW


def _write(root: Path, arguments: WriteFileArguments) -> str:
    target = confine(root, arguments.path)
    if target == root:
        raise ToolError(f"cannot write {arguments.path!r}: it is the workspace directory")
    data = arguments.content.encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: ``target`` has its links resolved; a link created since is refused.
        # O_NONBLOCK: opening a FIFO without a reader fails instead of hanging the thread.
        descriptor = os.open(target, _WRITE_FLAGS, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ToolError(f"cannot write {arguments.path!r}: it is not a regular file")
            file.write(data)
    except FileExistsError as exc:  # mkdir: a parent is a file
        raise ToolError(
            f"cannot write {arguments.path!r}: a part of the path is a file, not a directory"
        ) from exc
    except OSError as exc:
        raise _os_error("write", arguments.path, exc) from exc
    return f"wrote {len(data)} bytes to {_display(root, target)}"


class WriteFileTool(StructTool[WriteFileArguments]):
    """``write_file``: create or replace a file in the workspace, with its parent directories."""

    def __init__(self) -> None:
        super().__init__(
            name="write_file",
            description=(
                "Write a text file in your workspace, replacing it if it exists; missing parent "
                "directories are created."
            ),
            arguments=WriteFileArguments,
        )

    async def run(self, arguments: WriteFileArguments, context: ToolContext) -> str:
        root = await open_workspace(context.workspace)
        return await trio.to_thread.run_sync(_write, root, arguments)
