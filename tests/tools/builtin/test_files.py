"""Tests for :mod:`trio_gateway.tools.builtin.files`: read, list and write, confined."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import trio

from trio_gateway.errors import ToolError
from trio_gateway.tools import ListFilesTool, ReadFileTool, ToolContext, WriteFileTool


def arguments(**values: object) -> str:
    return json.dumps(values)


async def read(context: ToolContext, **values: object) -> str:
    with trio.fail_after(5):
        return await ReadFileTool().call(arguments(**values), context)


async def write(context: ToolContext, **values: object) -> str:
    with trio.fail_after(5):
        return await WriteFileTool().call(arguments(**values), context)


async def listing(context: ToolContext, **values: object) -> str:
    with trio.fail_after(5):
        return await ListFilesTool().call(arguments(**values), context)


# --- the happy paths -----------------------------------------------------------------------


async def test_write_file_creates_the_workspace_and_parent_directories(
    context: ToolContext, workspace: Path
) -> None:
    assert not await trio.Path(workspace).exists()
    result = await write(context, path="notes/2025/todo.md", content="- tea\n- café\n")
    assert result == "wrote 14 bytes to notes/2025/todo.md"
    written = trio.Path(workspace / "notes" / "2025" / "todo.md")
    assert await written.read_text() == "- tea\n- café\n"
    assert stat.S_IMODE((await trio.Path(workspace).stat()).st_mode) == 0o700


async def test_write_file_replaces_an_existing_file(context: ToolContext, workspace: Path) -> None:
    await write(context, path="a.txt", content="a long first version")
    await write(context, path="a.txt", content="short")
    assert await trio.Path(workspace / "a.txt").read_text() == "short"


async def test_read_file_returns_the_text(context: ToolContext) -> None:
    await write(context, path="dir/hello.txt", content="hello wörld\n")
    assert await read(context, path="dir/hello.txt") == "hello wörld\n"
    assert await read(context, path="./dir/../dir/hello.txt") == "hello wörld\n"


async def test_read_file_accepts_an_absolute_path_inside_the_workspace(
    context: ToolContext, workspace: Path
) -> None:
    await write(context, path="a.txt", content="inside")
    assert await read(context, path=str(workspace / "a.txt")) == "inside"


async def test_read_file_replaces_invalid_utf8(context: ToolContext, workspace: Path) -> None:
    await trio.Path(workspace).mkdir()
    await trio.Path(workspace / "bin.dat").write_bytes(b"ok\xff\xfeok")
    assert await read(context, path="bin.dat") == "ok\ufffd\ufffdok"


async def test_read_file_truncates_at_max_bytes_and_says_so(
    context: ToolContext, workspace: Path
) -> None:
    await trio.Path(workspace).mkdir()
    await trio.Path(workspace / "big.txt").write_text("é" * 1000)  # 2000 bytes
    result = await read(context, path="big.txt", max_bytes=5)
    text, _, note = result.partition("\n")
    assert text == "éé"  # the cut-off third character is dropped, not garbled
    assert "truncated: showed the first 5 bytes of 2000" in note
    assert "max_bytes" in note
    assert await read(context, path="big.txt", max_bytes=2000) == "é" * 1000


async def test_read_file_symlink_inside_the_workspace_is_followed(
    context: ToolContext, workspace: Path
) -> None:
    await write(context, path="real/file.txt", content="real")
    await trio.Path(workspace / "alias").symlink_to("real")
    assert await read(context, path="alias/file.txt") == "real"


async def test_list_files_lists_sorted_entries_with_directories_marked(
    context: ToolContext, workspace: Path
) -> None:
    await write(context, path="b.txt", content="")
    await write(context, path="a/inner.txt", content="")
    await write(context, path=".hidden", content="")
    assert await listing(context) == "\n".join(
        [".: 3 entries (directories end with '/')", ".hidden", "a/", "b.txt"]
    )
    assert await listing(context, path="a") == "\n".join(
        ["a: 1 entry (directories end with '/')", "inner.txt"]
    )


async def test_list_files_of_an_empty_workspace(context: ToolContext) -> None:
    assert await listing(context) == ".: empty directory"


async def test_list_files_is_bounded_by_limit(context: ToolContext, workspace: Path) -> None:
    await trio.Path(workspace).mkdir()
    for number in range(30):
        await trio.Path(workspace / f"f{number:02}").write_text("")
    result = (await listing(context, limit=10)).splitlines()
    assert result[0] == ".: 30 entries (directories end with '/')"
    assert result[1:11] == [f"f{number:02}" for number in range(10)]
    assert result[11].startswith("[truncated: 20 more entries not shown")
    assert len(result) == 12


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["../x", "../outside/secret.txt", "a/../../x", ".."])
async def test_file_tools_refuse_dot_dot_traversal(
    context: ToolContext, outside: Path, path: str
) -> None:
    with pytest.raises(ToolError, match=r"climbs out of the workspace with '\.\.'"):
        await read(context, path=path)
    with pytest.raises(ToolError, match=r"climbs out of the workspace with '\.\.'"):
        await write(context, path=path, content="pwned")
    with pytest.raises(ToolError, match=r"climbs out of the workspace with '\.\.'"):
        await listing(context, path=path)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert await trio.Path(outside / "secret.txt").read_text() == "top secret"


async def test_file_tools_refuse_absolute_paths_outside(
    context: ToolContext, outside: Path
) -> None:
    secret = str(outside / "secret.txt")
    with pytest.raises(ToolError, match="is outside the workspace"):
        await read(context, path=secret)
    with pytest.raises(ToolError, match="is outside the workspace"):
        await read(context, path="/etc/passwd")
    with pytest.raises(ToolError, match="is outside the workspace"):
        await write(context, path=secret, content="pwned")
    with pytest.raises(ToolError, match="is outside the workspace"):
        await listing(context, path=str(outside))
    assert await trio.Path(outside / "secret.txt").read_text() == "top secret"


async def test_read_file_refuses_a_symlink_pointing_outside(
    context: ToolContext, workspace: Path, outside: Path
) -> None:
    await trio.Path(workspace).mkdir()
    await trio.Path(workspace / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(ToolError, match="through a symbolic link"):
        await read(context, path="link.txt")


async def test_write_file_refuses_a_symlink_pointing_outside(
    context: ToolContext, workspace: Path, outside: Path
) -> None:
    await trio.Path(workspace).mkdir()
    await trio.Path(workspace / "link.txt").symlink_to(outside / "secret.txt")
    await trio.Path(workspace / "dangling.txt").symlink_to(outside / "new.txt")
    with pytest.raises(ToolError, match="through a symbolic link"):
        await write(context, path="link.txt", content="pwned")
    with pytest.raises(ToolError, match="through a symbolic link"):
        await write(context, path="dangling.txt", content="pwned")
    assert await trio.Path(outside / "secret.txt").read_text() == "top secret"
    assert not await trio.Path(outside / "new.txt").exists()


async def test_write_file_refuses_a_symlinked_parent_directory_leading_outside(
    context: ToolContext, workspace: Path, outside: Path
) -> None:
    await trio.Path(workspace).mkdir()
    await trio.Path(workspace / "dir").symlink_to(outside)
    with pytest.raises(ToolError, match="through a symbolic link"):
        await write(context, path="dir/new.txt", content="pwned")
    with pytest.raises(ToolError, match="through a symbolic link"):
        await write(context, path="dir/deeper/new.txt", content="pwned")
    with pytest.raises(ToolError, match="through a symbolic link"):
        await listing(context, path="dir")
    assert sorted(os.listdir(outside)) == ["secret.txt"]


async def test_read_file_missing_file_is_a_tool_error(context: ToolContext) -> None:
    with pytest.raises(ToolError, match=r"cannot read 'nope\.txt': no such file or directory"):
        await read(context, path="nope.txt")


async def test_read_file_of_a_directory_points_to_list_files(
    context: ToolContext, workspace: Path
) -> None:
    await trio.Path(workspace / "dir").mkdir(parents=True)
    with pytest.raises(ToolError, match=r"it is a directory \(use list_files\)"):
        await read(context, path="dir")


async def test_read_file_of_a_fifo_is_refused_without_blocking(
    context: ToolContext, workspace: Path
) -> None:
    await trio.Path(workspace).mkdir()
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        await read(context, path="pipe")


async def test_write_file_to_a_fifo_is_refused_without_blocking(
    context: ToolContext, workspace: Path
) -> None:
    await trio.Path(workspace).mkdir()
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ToolError, match="cannot write 'pipe'"):
        await write(context, path="pipe", content="x")


async def test_list_files_of_a_file_points_to_read_file(context: ToolContext) -> None:
    await write(context, path="a.txt", content="")
    with pytest.raises(ToolError, match=r"it is a file, not a directory \(use read_file\)"):
        await listing(context, path="a.txt")


async def test_list_files_missing_directory_is_a_tool_error(context: ToolContext) -> None:
    with pytest.raises(ToolError, match="cannot list 'nope': no such file or directory"):
        await listing(context, path="nope")


async def test_write_file_refuses_the_workspace_itself(context: ToolContext) -> None:
    with pytest.raises(ToolError, match="it is the workspace directory"):
        await write(context, path=".", content="x")


async def test_write_file_refuses_a_directory(context: ToolContext, workspace: Path) -> None:
    await trio.Path(workspace / "dir").mkdir(parents=True)
    with pytest.raises(ToolError, match="cannot write 'dir'"):
        await write(context, path="dir", content="x")


async def test_write_file_under_a_file_is_a_tool_error(context: ToolContext) -> None:
    await write(context, path="a.txt", content="")
    with pytest.raises(ToolError, match=r"cannot write 'a\.txt/b\.txt'"):
        await write(context, path="a.txt/b.txt", content="x")
    with pytest.raises(ToolError, match=r"cannot write 'a\.txt/c/b\.txt'"):
        await write(context, path="a.txt/c/b.txt", content="x")


@pytest.mark.parametrize(
    ("tool", "text", "complaint"),
    [
        (ReadFileTool(), "{", "not valid JSON"),
        (ReadFileTool(), "{}", "missing required field `path`"),
        (ReadFileTool(), '{"path": "a", "max_bytes": 0}', "`int` >= 1 - at `$.max_bytes`"),
        (ReadFileTool(), '{"path": ["a"]}', "Expected `str`, got `array` - at `$.path`"),
        (WriteFileTool(), '{"path": "a"}', "missing required field `content`"),
        (WriteFileTool(), '{"path": "a", "content": 1}', "Expected `str`, got `int`"),
        (WriteFileTool(), "not json", "not valid JSON"),
        (ListFilesTool(), '{"limit": 100000}', "`int` <= 2000 - at `$.limit`"),
        (ListFilesTool(), '{"path": "."} trailing', "not valid JSON"),
        (ListFilesTool(), '{"recursive": true}', "unknown field `recursive`"),
    ],
)
async def test_file_tools_invalid_arguments_are_a_tool_error(
    context: ToolContext,
    tool: ReadFileTool | WriteFileTool | ListFilesTool,
    text: str,
    complaint: str,
) -> None:
    with trio.fail_after(5), pytest.raises(ToolError, match=tool.spec.name) as caught:
        await tool.call(text, context)
    assert complaint in caught.value.message
