"""Tests for :mod:`trio_gateway.tools.builtin.exec`: the ``exec`` tool.

Process-group tests have the shell report the pids of its children (in its output or in a file
of the workspace), then check that every one of them is gone once the call is over.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from trio_gateway.config.schema import ExecToolConfig, ToolsConfig
from trio_gateway.errors import ToolError
from trio_gateway.tools import ExecTool, ToolContext

#: A shell with a background child and a foreground child, each printing its pid, then waiting.
FAMILY = "echo shell $$; sleep 30 & echo background $!; sh -c 'echo foreground $$; exec sleep 30'"


def exec_context(
    context: ToolContext, *, timeout_seconds: float = 60.0, max_output_bytes: int = 64 * 1024
) -> ToolContext:
    config = ExecToolConfig(timeout_seconds=timeout_seconds, max_output_bytes=max_output_bytes)
    return replace(context, config=ToolsConfig(exec=config))


async def run(context: ToolContext, command: str, **extra: object) -> str:
    with trio.fail_after(10):
        return await ExecTool().call(json.dumps({"command": command, **extra}), context)


def pids_in(text: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"(?:shell|background|foreground) (\d+)", text)]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def reported(pidfile: trio.Path) -> list[int]:
    """The pids the shell wrote to ``pidfile`` so far."""
    return pids_in(await pidfile.read_text()) if await pidfile.exists() else []


async def wait_gone(pids: list[int]) -> None:
    with trio.fail_after(5):
        # Polling: nothing signals the death of a process we are not the parent of.
        while any(alive(pid) for pid in pids):
            await trio.sleep(0.01)


async def test_exec_returns_exit_code_and_combined_output(context: ToolContext) -> None:
    result = await run(context, "echo out; echo err >&2; exit 7")
    assert result == "exit code: 7\nout\nerr\n"


async def test_exec_without_output_says_so(context: ToolContext) -> None:
    assert await run(context, "true") == "exit code: 0\n(no output)"


async def test_exec_reports_death_by_signal(context: ToolContext) -> None:
    assert await run(context, "kill -TERM $$") == "exit code: -15 (killed by SIGTERM)\n(no output)"


async def test_exec_runs_in_the_workspace_created_on_first_use(
    context: ToolContext, workspace: Path
) -> None:
    result = await run(context, "pwd; echo data > made.txt")
    assert result == f"exit code: 0\n{await trio.Path(workspace).resolve()}\n"
    assert await trio.Path(workspace / "made.txt").read_text() == "data\n"
    assert stat.S_IMODE((await trio.Path(workspace).stat()).st_mode) == 0o700


async def test_exec_passes_no_gateway_secrets_and_no_stdin(
    context: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPILOOP_TEST_API_KEY", "sk-secret")
    result = await run(context, 'echo "key=${EPILOOP_TEST_API_KEY:-unset}"; cat; echo "$PATH"')
    lines = result.splitlines()
    assert lines[:2] == ["exit code: 0", "key=unset"]
    assert lines[2] == os.environ["PATH"]


async def test_exec_truncates_output_but_keeps_draining(context: ToolContext) -> None:
    # 1 MB is far more than a pipe holds: the command finishes only if the pipe is drained.
    context = exec_context(context, max_output_bytes=1000)
    result = await run(context, "head -c 1000000 /dev/zero | tr '\\0' a; echo done >&2")
    status, _, rest = result.partition("\n")
    assert status == "exit code: 0"
    output, _, note = rest.partition("\n")
    assert output == "a" * 1000
    assert note == (
        "[output truncated: showed the first 1000 of 1000005 bytes (tools.exec.maxOutputBytes)]"
    )


async def test_exec_kills_background_jobs_when_the_shell_exits(context: ToolContext) -> None:
    started = time.monotonic()
    result = await run(context, "sleep 30 & echo background $!")
    assert time.monotonic() - started < 3
    pids = pids_in(result)
    assert len(pids) == 1
    await wait_gone(pids)


async def test_exec_deadline_kills_the_whole_process_group(context: ToolContext) -> None:
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        await run(context, FAMILY, timeout_seconds=0.5)
    assert time.monotonic() - started < 3
    message = caught.value.message
    assert message.startswith(
        "the command did not finish within 0.5 s and was killed with its whole process group; "
        "its output so far:\n"
    )
    pids = pids_in(message)
    assert len(pids) == 3, message
    await wait_gone(pids)


async def test_exec_timeout_argument_cannot_exceed_the_configured_limit(
    context: ToolContext,
) -> None:
    context = exec_context(context, timeout_seconds=0.3)
    with pytest.raises(ToolError, match=r"did not finish within 0\.3 s"):
        await run(context, "sleep 30", timeout_seconds=100)


async def test_exec_caller_cancellation_kills_the_whole_process_group(
    context: ToolContext, workspace: Path
) -> None:
    command = (
        "echo shell $$ >>pids; "
        "sleep 30 & echo background $! >>pids; "
        "sh -c 'echo foreground $$ >>pids; exec sleep 30'"
    )
    pidfile = trio.Path(workspace / "pids")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, context, command)
            # Polling: the shell reports its family through a file.
            while len(await reported(pidfile)) < 3:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel(reason="test: the caller gives up")
    pids = await reported(pidfile)
    assert len(pids) == 3
    await wait_gone(pids)


async def test_exec_in_an_unusable_workspace_is_a_tool_error(
    context: ToolContext, workspace: Path
) -> None:
    await trio.Path(workspace).write_text("not a directory")
    with pytest.raises(ToolError, match="exists but is not a directory"):
        await run(context, "true")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{}", "missing required field `command`"),
        ('{"command": ""}', "length >= 1 - at `$.command`"),
        ('{"command": "true", "timeout_seconds": 0}', "`float` > 0.0 - at `$.timeout_seconds`"),
        ('{"command": ["ls"]}', "Expected `str`, got `array`"),
        ('{"command": "ls"', "not valid JSON"),
    ],
)
async def test_exec_invalid_arguments_are_a_tool_error(
    context: ToolContext, text: str, complaint: str
) -> None:
    with trio.fail_after(5), pytest.raises(ToolError, match="exec") as caught:
        await ExecTool().call(text, context)
    assert complaint in caught.value.message
