"""The ``exec`` tool: run a shell command in the workspace, bounded in time and output.

The command runs as ``/bin/sh -c <command>`` in the agent's workspace, in a new session (so a
new process group whose id is the shell's pid), with stdin from ``/dev/null`` and a trimmed
environment (no gateway secrets). stdout and stderr share one pipe; a reader task owned by the
call keeps draining it past ``tools.exec.maxOutputBytes`` (the excess is discarded, so the
child never blocks on a full pipe). When the shell exits, what is left of its process group
(background jobs) is killed; when the deadline passes or the caller is cancelled, the whole
group is killed with ``SIGKILL`` under a shielded, bounded cleanup, and the shell is reaped.

It is not a sandbox: the command runs with the gateway's user rights. Policy keeps it off unless
an agent's tool policy allows ``exec``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Annotated

import msgspec
import trio

from ...errors import ToolError
from ..base import Arguments, StructTool, ToolContext
from ..workspace import open_workspace
from .text import decode_text

__all__ = ["CommandOutput", "ExecArguments", "ExecTool", "describe_exit", "run_command"]

logger = logging.getLogger(__name__)

SHELL = "/bin/sh"
#: How long killing and reaping the process group may take (shielded from cancellation).
KILL_BOUND_SECONDS = 5.0
#: After the shell exits and its group is killed, how long to wait for the last output.
DRAIN_BOUND_SECONDS = 1.0
_READ_SIZE = 64 * 1024
#: Environment variables passed on to the command; everything else (API keys) stays out.
_PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class ExecArguments(Arguments, frozen=True):
    command: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="A shell command line, run with /bin/sh -c in your workspace.",
        ),
    ]
    timeout_seconds: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0,
                description=(
                    "Stop the command after this many seconds; at most (and by default) the "
                    "gateway's limit."
                ),
            ),
        ]
        | None
    ) = None


class CommandOutput:
    """What a command wrote: the first ``limit`` bytes kept, all of it counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0
        #: Set when the output pipe reached end of file.
        self.closed = trio.Event()

    def add(self, chunk: bytes | bytearray) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.kept)

    def text(self) -> str:
        """The kept output as text, with a note when some was discarded."""
        text = decode_text(bytes(self.kept), complete=not self.truncated)
        if self.truncated:
            text += (
                f"\n[output truncated: showed the first {len(self.kept)} of {self.total} bytes "
                "(tools.exec.maxOutputBytes)]"
            )
        return text or "(no output)"


def describe_exit(returncode: int) -> str:
    """``exit code: 1``, or ``exit code: -9 (killed by SIGKILL)``."""
    if returncode >= 0:
        return f"exit code: {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"exit code: {returncode} (killed by {name})"


def _environment(workspace: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    env["PWD"] = str(workspace)
    return env


def _kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid``; a group that is gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


async def _drain(stream: trio.abc.ReceiveStream, output: CommandOutput) -> None:
    while chunk := await stream.receive_some(_READ_SIZE):
        output.add(chunk)
    output.closed.set()


async def run_command(command: str, *, cwd: Path, output: CommandOutput) -> int:
    """Run ``command`` with ``/bin/sh -c`` in ``cwd``; return its exit status.

    What it writes (stdout and stderr) goes to ``output``, which the caller owns: after a
    deadline it holds what was written so far. The caller sets the deadline
    (``trio.fail_after``). Whether the command exits, the deadline passes or the caller is
    cancelled, nothing of its process group outlives this call (short of a process that left
    the group on purpose, e.g. with ``setsid``).
    """
    process = await trio.lowlevel.open_process(
        [SHELL, "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=_environment(cwd),
        start_new_session=True,
    )
    assert process.stdout is not None  # stdout=PIPE
    logger.debug("exec.started pid=%d", process.pid)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stdout, output)
            returncode = await process.wait()
            # Background jobs of the shell would hold the pipe open and outlive the call.
            _kill_group(process.pid)
            with trio.move_on_after(DRAIN_BOUND_SECONDS):
                await output.closed.wait()
            nursery.cancel_scope.cancel(reason="exec: the command ended, stop reading its output")
    finally:
        with trio.move_on_after(KILL_BOUND_SECONDS, shield=True) as cleanup:
            if process.returncode is None:
                _kill_group(process.pid)
                await process.wait()
            await process.stdout.aclose()
        if cleanup.cancelled_caught:
            logger.warning("exec.cleanup_slow pid=%d bound=%s", process.pid, KILL_BOUND_SECONDS)
    logger.debug("exec.complete pid=%d returncode=%d", process.pid, returncode)
    return returncode


class ExecTool(StructTool[ExecArguments]):
    """``exec``: a shell command's exit code and combined output.

    Off unless a tool policy allows it. Runs under ``tools.exec.timeoutSeconds`` (or the call's
    shorter ``timeout_seconds``).
    """

    def __init__(self) -> None:
        super().__init__(
            name="exec",
            description=(
                "Run a shell command (/bin/sh -c) in your workspace and return its exit code "
                "and combined stdout and stderr (long output is truncated). stdin is empty; "
                "background processes are killed when the command ends."
            ),
            arguments=ExecArguments,
        )

    async def run(self, arguments: ExecArguments, context: ToolContext) -> str:
        config = context.config.exec
        seconds = config.timeout_seconds
        if arguments.timeout_seconds is not None:
            seconds = min(seconds, arguments.timeout_seconds)
        workspace = await open_workspace(context.workspace)
        output = CommandOutput(config.max_output_bytes)
        try:
            with trio.fail_after(seconds):
                returncode = await run_command(arguments.command, cwd=workspace, output=output)
        except trio.TooSlowError as exc:
            raise ToolError(
                f"the command did not finish within {seconds:g} s and was killed with its whole "
                f"process group; its output so far:\n{output.text()}"
            ) from exc
        except OSError as exc:
            raise ToolError(f"cannot run the command: {exc.strerror or exc}") from exc
        return f"{describe_exit(returncode)}\n{output.text()}"
