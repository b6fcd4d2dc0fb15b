"""``epiloop agent``: send a message to an agent and stream its answer, through the running
gateway's control plane or, with ``--local``, in this process. Ctrl-C aborts the run."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import click
import msgspec
import trio

from ..agent import RunEvent, RunRequest, open_runtime
from ..agent.events import ToolFinished, ToolStarted
from ..agent.routing import resolve_target
from ..cancellation import INTERRUPTED
from ..config import Config, load_config, state_dir
from ..control_client import ControlClient, open_control_client
from ..errors import (
    ConfigError,
    ControlPlaneError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestError,
)
from ..messages import Message
from ..providers.base import ReasoningDelta, TextDelta
from ..server.control_runs import result_payload
from ..wire.control import AgentsListResult, ErrorInfo, RunOutcome, read_payload
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Exit
from .remote import Target, client_options, control_failure, gateway_target
from .render import Printer, print_json, show_event


def finish_run(printer: Printer, result: dict[str, object], *, as_json: bool) -> int:
    """Print the end of a run; its exit status."""
    printer.end()
    if as_json:
        print_json(result)
    try:
        view = msgspec.convert(result, RunOutcome)
    except msgspec.ValidationError:
        click.echo(f"unexpected result from the gateway: {result!r}", err=True)
        return EXIT_FAILED
    if view.status == "completed":
        return 0
    if view.status == "aborted":
        click.echo("the run was aborted", err=True)
        return EXIT_FAILED
    error = view.error or ErrorInfo()
    code = f" ({error.code})" if error.code else ""
    click.echo(f"the run failed: {error.message or 'no reason given'}{code}", err=True)
    return EXIT_FAILED


def _unknown_agent_message(agent_id: str, available: list[str]) -> str:
    return f"unknown agent '{agent_id}' (available: {', '.join(available) or 'none'})"


async def _unknown_agent(client: ControlClient, agent_id: str) -> Exit:
    try:
        listed = read_payload(await client.request("agents.list"), AgentsListResult)
    except ControlPlaneError:
        listed = AgentsListResult(agents=[])
    ids = [entry.id for entry in listed.agents]
    return Exit(_unknown_agent_message(agent_id, ids), EXIT_USAGE)


@dataclass
class _Interrupt:
    """Ctrl-C during a run: cancels ``scope`` (the run) instead of raising KeyboardInterrupt."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    happened: bool = False

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            self.happened = True
            self.scope.cancel(reason=INTERRUPTED)
            return


async def _agent_remote(
    target: Target,
    message: str,
    *,
    agent_id: str | None,
    session_key: str | None,
    printer: Printer,
) -> dict[str, object] | None:
    """Run over the control plane; ``None`` if Ctrl-C aborted the run."""
    interrupt = _Interrupt()
    result: dict[str, object] | None = None
    failure: ControlPlaneError | Exit | None = None
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupt.watch, signals)
            try:
                with interrupt.scope:
                    async with open_control_client(
                        target.url, token=target.token, password=target.password
                    ) as client:
                        try:
                            # Cancelling run_agent (Ctrl-C) sends agent.abort, bounded.
                            result = await client.run_agent(
                                message,
                                agent_id=agent_id,
                                session_key=session_key,
                                on_event=partial(show_event, printer),
                            )
                        except ControlPlaneError as exc:
                            if exc.code != "model_not_found" or agent_id is None:
                                raise
                            failure = await _unknown_agent(client, agent_id)
            except (ControlPlaneError, Exit) as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel(reason="the run is over")
    if isinstance(failure, ControlPlaneError):
        raise control_failure(failure, target.url) from failure
    if failure is not None:
        raise failure
    if result is None and not interrupt.happened:
        raise Exit("the run ended without a result", EXIT_FAILED)
    return result


async def _agent_local(
    config: Config,
    state: Path,
    message: str,
    *,
    agent_id: str | None,
    session_key: str | None,
    printer: Printer,
) -> dict[str, object] | None:
    """The same run in this process, without a gateway; ``None`` if Ctrl-C aborted it."""
    run_request = RunRequest(
        messages=(Message("user", message),),
        agent_id=None if agent_id is None else agent_id.strip(),
        session_key=session_key or None,
        default_session="main",
    )
    try:
        resolve_target(config, run_request)  # refused here, before anything is opened
    except ModelNotFoundError as exc:
        available = [entry.id for entry in config.agents.entries]
        raise Exit(_unknown_agent_message(agent_id or "", available), EXIT_USAGE) from exc
    except RequestError as exc:
        raise Exit(exc.message, EXIT_USAGE) from exc

    async def emit(event: RunEvent) -> None:
        if isinstance(event, TextDelta):
            printer.text(event.text)
        elif isinstance(event, ReasoningDelta):
            printer.reasoning(event.text)
        elif isinstance(event, ToolStarted):
            printer.tool_started(event.call_id, event.arguments)
        elif isinstance(event, ToolFinished):
            printer.tool_finished(event.call_id, event.name, event.ok)

    interrupt = _Interrupt()
    result: dict[str, object] | None = None
    failure: Exit | None = None
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with open_runtime(config, state_dir=state) as runtime, trio.open_nursery() as nursery:
            nursery.start_soon(interrupt.watch, signals)
            try:
                with interrupt.scope:
                    prepared = await runtime.prepare(run_request)
                    with await runtime.admit(prepared) as admitted:
                        run = await admitted.run(emit)
                    # The result as the gateway would answer it over the control plane.
                    result = msgspec.to_builtins(result_payload(run, prepared.run_id))
            except (InvalidRequestError, ModelNotFoundError) as exc:
                failure = Exit(exc.message, EXIT_USAGE)
            except GatewayError as exc:
                failure = Exit(f"{exc.message} ({exc.code})", EXIT_FAILED)
            finally:
                nursery.cancel_scope.cancel(reason="the run is over")
    if failure is not None:
        raise failure
    return result


@click.command("agent")
@click.option("-m", "--message", required=True, help="The message to send.")
@click.option("--agent", "agent_id", help="The agent (default: the default agent).")
@click.option(
    "--session-key",
    help="The session (default: the agent's main session, agent:<id>:main).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the final result, as JSON.")
@click.option("--local", is_flag=True, help="Run in this process, without a gateway.")
@click.option("--reasoning", is_flag=True, help="Show the model's reasoning (dim, on stderr).")
@client_options
def agent_command(
    message: str,
    agent_id: str | None,
    session_key: str | None,
    as_json: bool,
    local: bool,
    reasoning: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    """Send a message to an agent and stream its answer.

    Without --local it goes through the running gateway. Ctrl-C aborts the run (exit 130).
    """
    printer = Printer(quiet=as_json, reasoning=reasoning)
    if local:
        try:
            config = load_config(config_file).config
        except ConfigError as exc:
            raise Exit(f"invalid configuration: {exc}", EXIT_USAGE) from exc
        run = partial(
            _agent_local,
            config,
            state_dir(),
            message,
            agent_id=agent_id,
            session_key=session_key,
            printer=printer,
        )
    else:
        target = gateway_target(url, token, password, config_file)
        run = partial(
            _agent_remote,
            target,
            message,
            agent_id=agent_id,
            session_key=session_key,
            printer=printer,
        )
    result = trio.run(run)
    if result is None:
        printer.end()
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    status = finish_run(printer, result, as_json=as_json)
    if status:
        sys.exit(status)
