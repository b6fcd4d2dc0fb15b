"""The ``epiloop`` command: ``gateway`` serves, ``config init|validate|show|set|unset`` manage the
config; ``agent``, ``sessions``, ``health`` and ``status`` talk to a running gateway over its
WebSocket control plane (``agent --local`` runs in-process instead).

This is the only module that configures logging handlers and talks to the terminal.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial, wraps
from pathlib import Path
from typing import Literal

import click
import msgspec
import trio

from ._version import __version__
from .agent import AgentRuntime, RunEvent, open_runtime
from .agent.events import ToolFinished, ToolStarted
from .agent.routing import select_agent
from .auth import is_loopback_host, needs_secret
from .cancellation import INTERRUPTED
from .config import (
    EMBEDDED_SOURCE,
    Config,
    LoadedConfig,
    config_path,
    load_config,
    parse_config,
    redacted,
    starter_config,
    state_dir,
)
from .config.credentials import with_mode_secret
from .config.edit import Edit, Segment, parse_key_path, parse_value, set_key, unset_key
from .control_client import (
    GATEWAY_UNREACHABLE,
    ControlClient,
    is_auth_failure,
    open_control_client,
)
from .errors import (
    ConfigError,
    ControlPlaneError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestError,
    SessionStoreError,
)
from .logs import configure_logging
from .providers.base import ReasoningDelta, TextDelta
from .server import (
    check_exposure,
    listen_sockets,
    resolve_host,
    serve_gateway,
    startup_failure,
)
from .server.workers import WorkerReport, run_workers
from .sessions.check import check_session_store
from .wire.chat import ChatRequest

__all__ = ["main"]


def _load(config_file: Path | None) -> LoadedConfig:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@click.group()
@click.version_option(__version__, prog_name="epiloop")
def main() -> None:
    """Epiloop Gateway: agents behind an OpenAI-compatible API."""


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: gateway.port).")
@click.option("--bind", help='"loopback", "lan" or a host address (default: gateway.bind).')
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Config file (default: $EPILOOP_CONFIG_PATH, else epiloop.json in $EPILOOP_STATE_DIR "
    "or ~/.epiloop).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level (default: gateway.logging.level, else info).",
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    help="Log lines on stderr: human-readable or one JSON object each (default: "
    "gateway.logging.format, else console).",
)
@click.option("--verbose", is_flag=True, help="Show the traceback when the gateway fails.")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Serve from N worker processes that share the port, started and stopped by this one "
    "(default: serve from this process).",
)
def gateway(
    port: int | None,
    bind: str | None,
    config_file: Path | None,
    log_level: str | None,
    log_format: Literal["console", "json"] | None,
    verbose: bool,
    workers: int | None,
) -> None:
    """Run the gateway until Ctrl-C or SIGTERM."""
    loaded = _load(config_file)
    config = loaded.config
    log_level = log_level or config.gateway.logging.level
    log_format = log_format or config.gateway.logging.format
    configure_logging(level=log_level, fmt=log_format)
    host = resolve_host(bind or config.gateway.bind)
    port = config.gateway.port if port is None else port
    generated = None
    if needs_secret(config.gateway.auth) and is_loopback_host(host):
        generated = secrets.token_urlsafe(32)
        config = with_mode_secret(config, generated)
    try:
        check_exposure(host, config.gateway.auth)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Epiloop Gateway {__version__} - config: {loaded.source}")
    if generated is not None:
        mode = config.gateway.auth.mode
        click.echo(
            f"No {mode} is configured: generated one for this run only: {generated}\n"
            "  (run 'epiloop config init' to write a config with a permanent token)"
        )
    if not config.gateway.http.endpoints.chat_completions.enabled:
        click.echo(
            "Note: POST /v1/chat/completions is disabled; enable it with "
            "gateway.http.endpoints.chatCompletions.enabled: true"
        )
    try:
        config_path = None if loaded.source == EMBEDDED_SOURCE else Path(loaded.source)
        sockets = listen_sockets(host, port)  # first: a port in use fails before anything opens
        try:
            if workers is None:
                trio.run(
                    partial(
                        _serve_until_signal, config, state_dir(), config_path, host, port, sockets
                    )
                )
            else:
                arguments = (config, state_dir(), config_path, host, port, sockets)
                outcome = run_workers(
                    workers,
                    _gateway_worker,
                    (*arguments, log_level, log_format, verbose),
                    stop_seconds=config.gateway.shutdown_grace_seconds + WORKER_STOP_MARGIN_SECONDS,
                    on_ready=_print_listening,
                    on_signal=_print_signal,
                )
                if outcome.error is not None:
                    raise click.ClickException(outcome.error)
        finally:
            for sock in sockets:
                sock.close()
    except click.ClickException:
        raise
    except SessionStoreError as exc:  # a damaged or unwritable store: no traceback
        if verbose:
            traceback.print_exception(exc)
        raise click.ClickException(exc.message) from exc
    except Exception as exc:  # a failure to start (or to go on): one line, or the traceback
        if verbose:
            traceback.print_exception(exc)
        raise click.ClickException(startup_failure(exc)) from exc


#: ``--workers``: how long after the grace period a worker may take to clean up before it is
#: killed (recording aborted turns, closing the store and the upstream connections).
WORKER_STOP_MARGIN_SECONDS = 15.0


def _print_listening(urls: Sequence[str]) -> None:
    for url in urls:
        click.echo(f"Listening on {url} (Ctrl-C to stop)")


def _print_signal(received: signal.Signals) -> None:
    action = "passed on to the workers" if received == signal.SIGHUP else "shutting down"
    click.echo(f"{received.name}: {action}", err=True)


def _gateway_worker(
    config: Config,
    state: Path,
    config_path: Path | None,
    host: str,
    port: int,
    sockets: list[socket.socket],
    log_level: str,
    log_format: Literal["console", "json"],
    verbose: bool,
    report: WorkerReport,
) -> None:
    """One process of ``epiloop gateway --workers N``: serves on the parent's sockets and tells
    the parent when it serves, or in one line why it cannot."""
    # Signals are handled while serving; before and after that, the parent's are ignored (a
    # second SIGTERM, sent to the whole process group and passed on by the parent, must not
    # kill a worker that is finishing its shutdown). SIGINT is ignored from the start.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    configure_logging(level=log_level, fmt=log_format)
    try:
        trio.run(
            partial(
                _serve_until_signal,
                config,
                state,
                config_path,
                host,
                port,
                sockets,
                report=report,
            )
        )
    except Exception as exc:
        if verbose:
            traceback.print_exception(exc)
        report.failed(startup_failure(exc))
        sys.exit(1)


async def _serve_until_signal(
    config: Config,
    state: Path,
    config_path: Path | None,
    host: str,
    port: int,
    sockets: list[socket.socket],
    *,
    report: WorkerReport | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP reloads the config. ``report``: this process is a
    worker of ``--workers``, whose parent prints the banner and the shutdown line once."""
    # The signal receiver is open first, so Ctrl-C during start-up also shuts down cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        serving: list[AgentRuntime] = []  # the runtime, once it is open

        async def wait_for_signal() -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    for runtime in serving:
                        _reload(runtime)
                    continue
                if report is None:
                    click.echo(f"{signal.Signals(signum).name}: shutting down", err=True)
                return

        async with (
            open_runtime(config, state_dir=state, config_path=config_path) as runtime,
            trio.open_nursery() as nursery,
        ):
            serving.append(runtime)
            urls = await nursery.start(
                partial(
                    serve_gateway,
                    runtime,
                    host=host,
                    port=port,
                    sockets=sockets,
                    shutdown_trigger=wait_for_signal,
                    freeze_heap=True,
                )
            )
            if report is None:
                _print_listening(urls)
            else:
                report.ready(urls)


def _reload(runtime: AgentRuntime) -> None:
    """SIGHUP: load the config file again; keep the running config if the new one is bad."""
    try:
        result = runtime.reload_from_file()
    except ConfigError as exc:
        click.echo(f"SIGHUP: config not reloaded, the running config stays: {exc}", err=True)
        return
    click.echo("SIGHUP: config reloaded (new runs use it)", err=True)
    for warning in result.warnings:
        click.echo(f"  note: {warning}", err=True)
    if result.restart_required:
        click.echo(f"  restart required for: {', '.join(result.restart_required)}", err=True)


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def doctor(config_file: Path | None) -> None:
    """Check the session store: it opens, answers a read and a write, passes SQLite's integrity
    check. Exit 1 if something is wrong."""
    loaded = _load(config_file)
    report = trio.run(check_session_store, loaded.config.session, state_dir())
    if report.path is None:
        click.echo(f"OK: session store {report.store!r} (nothing on disk to check)")
        return
    if not report.exists:
        click.echo(f"OK: no session store at {report.path} yet (the gateway creates it)")
        return
    if not report.problems:
        click.echo(f"OK: session store {report.path} (reads, writes, integrity check passed)")
        return
    click.echo(f"session store {report.path}: {len(report.problems)} problem(s):", err=True)
    for problem in report.problems[:50]:
        click.echo(f"  {problem}", err=True)
    raise click.ClickException(
        "the session store is damaged; stop the gateway, then restore the file from a backup "
        "or move it away (the gateway then starts with no sessions)"
    )


@main.group()
def config() -> None:
    """Create, check and print the configuration."""


@config.command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option("--port", type=click.IntRange(1, 65535), default=18789, show_default=True)
def config_init(force: bool, port: int) -> None:
    """Write a starter config: a fresh random token, the chat completions endpoint enabled."""
    path = config_path()
    if path.exists() and not force:
        raise click.ClickException(
            f"{path} already exists; pass --force to overwrite it "
            "(or set EPILOOP_CONFIG_PATH to write elsewhere)."
        )
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(starter_config(token=token, port=port))
    click.echo(f"Wrote {path}")
    click.echo(f"Gateway token: {token}")
    click.echo("Start the gateway:  epiloop gateway")
    click.echo("Then call it:")
    click.echo(
        f"  curl -s http://127.0.0.1:{port}/v1/chat/completions \\\n"
        f"    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
        """    -d '{"model": "epiloop:main", "messages": [{"role": "user", "content": "hello"}]}'"""
    )


@config.command("validate")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def config_validate(config_file: Path | None) -> None:
    """Check the config file; exit 1 with the offending key if it is invalid."""
    loaded = _load(config_file)
    agents = ", ".join(agent.id for agent in loaded.config.agents.entries)
    click.echo(f"OK: {loaded.source} (agents: {agents})")


@config.command("show")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def config_show(config_file: Path | None) -> None:
    """Print the effective config as JSON (secrets redacted); where it came from on stderr."""
    loaded = _load(config_file)
    click.echo(f"source: {loaded.source}", err=True)
    for name, source in sorted(loaded.secret_sources.items()):
        click.echo(f"gateway.auth.{name} from {source}", err=True)
    click.echo(msgspec.json.format(msgspec.json.encode(redacted(loaded.config)), indent=2))


# -- talking to a running gateway: agent, sessions, health, status ---------------------------
#
# These commands speak the WebSocket control plane (trio_gateway.control_client). Exit status:
# 0 done, 1 the run or request failed, 2 usage or configuration error, 3 the gateway is not
# running, 4 authentication failed, 130 interrupted (Ctrl-C).

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 130

#: Longest tool arguments shown in a ``[tool]`` line.
_TOOL_ARGS_SHOWN = 80
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "*", "")


class _Exit(Exception):
    """Ends a command: ``message`` on stderr, exit status ``exit_code`` (see ``_exits``)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _exits(command: Callable[..., None]) -> Callable[..., None]:
    """Turn an ``_Exit`` raised by ``command`` into its message and exit status."""

    @wraps(command)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except _Exit as exc:
            click.echo(exc.message, err=True)
            sys.exit(exc.exit_code)

    return wrapper


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the control plane is and the credential to give it."""

    url: str
    token: str | None
    password: str | None


def _gateway_url(config: Config) -> str:
    host = resolve_host(config.gateway.bind)
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if config.gateway.port == 0:
        raise _Exit("gateway.port is 0 (a random port): pass --url ws://HOST:PORT/ws", EXIT_USAGE)
    return f"ws://{host}:{config.gateway.port}/ws"


def _control_url(url: str) -> str:
    """Accept the gateway's own ``http://host:port`` (as ``epiloop gateway`` prints it)."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            url = ws + url[len(http) :]
            if url.count("/") == 2:  # no path: the control plane's
                url += "/ws"
    return url


def _target(
    url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> _Target:
    if url is not None:
        url = _control_url(url)
    if url is not None and (token is not None or password is not None):
        return _Target(url, token, password)
    try:
        config = load_config(config_file).config
    except ConfigError as exc:
        raise _Exit(f"invalid configuration: {exc}", EXIT_USAGE) from exc
    if token is None and password is None:
        auth = config.gateway.auth
        if auth.mode == "token":
            token = auth.token
        elif auth.mode == "password":
            password = auth.password
    return _Target(url if url is not None else _gateway_url(config), token, password)


def _client_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every command that talks to a running gateway takes (and ``_exits``)."""
    options = (
        click.option(
            "--url",
            envvar="EPILOOP_GATEWAY_URL",
            help="The control plane (default: $EPILOOP_GATEWAY_URL, else "
            "ws://127.0.0.1:<gateway.port>/ws).",
        ),
        click.option(
            "--token",
            help="The gateway token (default: gateway.auth.token or $EPILOOP_GATEWAY_TOKEN).",
        ),
        click.option(
            "--password",
            help="The gateway password, in auth mode password (default: gateway.auth.password "
            "or $EPILOOP_GATEWAY_PASSWORD).",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Config file to read the port and credentials from.",
        ),
    )
    command = _exits(command)
    for option in reversed(options):
        command = option(command)
    return command


def _control_failure(error: ControlPlaneError, url: str) -> _Exit:
    """The message and exit status for a control-plane error."""
    if error.code == GATEWAY_UNREACHABLE:
        return _Exit(
            f"the gateway is not running at {url} (start it with 'epiloop gateway')",
            EXIT_UNREACHABLE,
        )
    if error.code == "reload_only":
        return _Exit(
            "authentication failed: the config file's credential is not loaded yet; run "
            "'epiloop config reload' first (or pass the running gateway's --token)",
            EXIT_AUTH,
        )
    if is_auth_failure(error):
        return _Exit("authentication failed: check gateway.auth / EPILOOP_GATEWAY_TOKEN", EXIT_AUTH)
    if error.code in (
        "invalid_params",
        "invalid_url",
        "invalid_request_error",
        "session_agent_mismatch",
    ):
        return _Exit(error.message, EXIT_USAGE)
    return _Exit(f"{error.message} ({error.code})", EXIT_FAILED)


def _run_client(target: _Target, work: Callable[[ControlClient], Awaitable[int]]) -> None:
    """Connect, do ``work`` and exit with its status; control-plane errors become messages."""

    async def connected() -> int:
        async with open_control_client(
            target.url, token=target.token, password=target.password
        ) as client:
            return await work(client)

    try:
        status = trio.run(connected)
    except ControlPlaneError as exc:
        raise _control_failure(exc, target.url) from exc
    except KeyboardInterrupt:
        raise _Exit("interrupted", EXIT_INTERRUPTED) from None
    if status:
        sys.exit(status)


def _print_json(payload: object) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(payload), indent=2))


class _Printer:
    """Renders a run as it happens: the answer on stdout, tools and reasoning on stderr."""

    def __init__(self, *, quiet: bool, reasoning: bool) -> None:
        self.quiet = quiet
        self.show_reasoning = reasoning
        self.mid_line = False
        #: A ``[tool]`` line starts on a line of its own on a terminal; the answer written to a
        #: file or pipe stays exactly the answer.
        self.shared_terminal = sys.stdout.isatty() and sys.stderr.isatty()
        self._tool_args: dict[str, str] = {}

    def text(self, delta: str) -> None:
        if self.quiet or not delta:
            return
        sys.stdout.write(delta)
        sys.stdout.flush()
        self.mid_line = not delta.endswith("\n")

    def reasoning(self, delta: str) -> None:
        if self.quiet or not self.show_reasoning:
            return
        click.echo(click.style(delta, dim=True), err=True, nl=False)

    def tool_started(self, call_id: str, arguments: str) -> None:
        self._tool_args[call_id] = arguments

    def tool_finished(self, call_id: str, name: str, ok: bool) -> None:
        if self.quiet:
            return
        arguments = self._tool_args.pop(call_id, "")
        if len(arguments) > _TOOL_ARGS_SHOWN:
            arguments = arguments[: _TOOL_ARGS_SHOWN - 1] + "…"
        if self.shared_terminal:
            self._break_line()
        click.echo(f"[tool] {name}({arguments}) → {'ok' if ok else 'error'}", err=True)

    def end(self) -> None:
        """Finish the answer's last line."""
        self._break_line()

    def _break_line(self) -> None:
        if self.mid_line:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.mid_line = False


class _EventView(msgspec.Struct, frozen=True):
    """The part of an ``agent`` event payload the CLI renders."""

    stream: str
    data: dict[str, object] = msgspec.field(default_factory=dict)


class _ErrorView(msgspec.Struct, frozen=True):
    code: str | None = None
    message: str = ""


class _ResultView(msgspec.Struct, frozen=True):
    """The part of a run's final result the CLI reads."""

    status: str
    error: _ErrorView | None = None


def _show_event(printer: _Printer, payload: dict[str, object]) -> None:
    try:
        event = msgspec.convert(payload, _EventView)
    except msgspec.ValidationError:
        return  # not one we know how to show
    data = event.data
    delta = data.get("delta")
    if event.stream == "assistant" and isinstance(delta, str):
        printer.text(delta)
    elif event.stream == "reasoning" and isinstance(delta, str):
        printer.reasoning(delta)
    elif event.stream == "tool":
        call_id, name = str(data.get("callId", "")), str(data.get("name", "?"))
        if data.get("phase") == "start":
            printer.tool_started(call_id, str(data.get("arguments", "")))
        elif data.get("phase") == "result":
            printer.tool_finished(call_id, name, data.get("ok") is True)


def _finish_run(printer: _Printer, result: dict[str, object], *, as_json: bool) -> int:
    """Print the end of a run; its exit status."""
    printer.end()
    if as_json:
        _print_json(result)
    try:
        view = msgspec.convert(result, _ResultView)
    except msgspec.ValidationError:
        click.echo(f"unexpected result from the gateway: {result!r}", err=True)
        return EXIT_FAILED
    if view.status == "completed":
        return 0
    if view.status == "aborted":
        click.echo("the run was aborted", err=True)
        return EXIT_FAILED
    error = view.error or _ErrorView()
    code = f" ({error.code})" if error.code else ""
    click.echo(f"the run failed: {error.message or 'no reason given'}{code}", err=True)
    return EXIT_FAILED


def _unknown_agent_message(agent_id: str, available: list[str]) -> str:
    return f"unknown agent '{agent_id}' (available: {', '.join(available) or 'none'})"


async def _unknown_agent(client: ControlClient, agent_id: str) -> _Exit:
    try:
        listed = await client.request("agents.list")
    except ControlPlaneError:
        listed = {}
    agents = listed.get("agents")
    ids = [
        str(entry.get("id"))
        for entry in (agents if isinstance(agents, list) else [])
        if isinstance(entry, dict)
    ]
    return _Exit(_unknown_agent_message(agent_id, ids), EXIT_USAGE)


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
    target: _Target,
    message: str,
    *,
    agent_id: str | None,
    session_key: str | None,
    printer: _Printer,
) -> dict[str, object] | None:
    """Run over the control plane; ``None`` if Ctrl-C aborted the run."""
    interrupt = _Interrupt()
    result: dict[str, object] | None = None
    failure: ControlPlaneError | _Exit | None = None
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
                                on_event=partial(_show_event, printer),
                            )
                        except ControlPlaneError as exc:
                            if exc.code != "model_not_found" or agent_id is None:
                                raise
                            failure = await _unknown_agent(client, agent_id)
            except (ControlPlaneError, _Exit) as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel(reason="the run is over")
    if isinstance(failure, ControlPlaneError):
        raise _control_failure(failure, target.url) from failure
    if failure is not None:
        raise failure
    if result is None and not interrupt.happened:
        raise _Exit("the run ended without a result", EXIT_FAILED)
    return result


async def _agent_local(
    config: Config,
    state: Path,
    message: str,
    *,
    agent_id: str | None,
    session_key: str | None,
    printer: _Printer,
) -> dict[str, object] | None:
    """The same run in this process, without a gateway; ``None`` if Ctrl-C aborted it."""
    try:
        agent = select_agent(config, header_agent_id=agent_id, model="epiloop")
    except ModelNotFoundError as exc:
        available = [entry.id for entry in config.agents.entries]
        raise _Exit(_unknown_agent_message(agent_id or "", available), EXIT_USAGE) from exc
    except RequestError as exc:
        raise _Exit(exc.message, EXIT_USAGE) from exc
    chat = msgspec.convert({"messages": [{"role": "user", "content": message}]}, ChatRequest)

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
    failure: _Exit | None = None
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with open_runtime(config, state_dir=state) as runtime, trio.open_nursery() as nursery:
            nursery.start_soon(interrupt.watch, signals)
            try:
                with interrupt.scope:
                    prepared = await runtime.prepare(
                        chat,
                        header_agent_id=agent.id,
                        header_session_key=session_key or f"agent:{agent.id.lower()}:main",
                    )
                    ticket = await runtime.admit(prepared)
                    with ticket:
                        run = await runtime.run(prepared, emit)
                    result = {
                        "runId": prepared.run_id,
                        "status": run.status,
                        "text": run.text,
                        "stopReason": run.finish_reason,
                        "usage": {
                            "promptTokens": run.usage.prompt_tokens,
                            "completionTokens": run.usage.completion_tokens,
                        },
                    }
                    if run.error is not None:
                        result["error"] = {"code": run.error.code, "message": run.error.message}
            except (InvalidRequestError, ModelNotFoundError) as exc:
                failure = _Exit(exc.message, EXIT_USAGE)
            except GatewayError as exc:
                failure = _Exit(f"{exc.message} ({exc.code})", EXIT_FAILED)
            finally:
                nursery.cancel_scope.cancel(reason="the run is over")
    if failure is not None:
        raise failure
    return result


@main.command("agent")
@click.option("-m", "--message", required=True, help="The message to send.")
@click.option("--agent", "agent_id", help="The agent (default: the default agent).")
@click.option(
    "--session-key",
    help="The session (default: the agent's main session, agent:<id>:main).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the final result, as JSON.")
@click.option("--local", is_flag=True, help="Run in this process, without a gateway.")
@click.option("--reasoning", is_flag=True, help="Show the model's reasoning (dim, on stderr).")
@_client_options
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
    printer = _Printer(quiet=as_json, reasoning=reasoning)
    if local:
        try:
            config = load_config(config_file).config
        except ConfigError as exc:
            raise _Exit(f"invalid configuration: {exc}", EXIT_USAGE) from exc
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
        target = _target(url, token, password, config_file)
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
    status = _finish_run(printer, result, as_json=as_json)
    if status:
        sys.exit(status)


@main.group()
def sessions() -> None:
    """List, show, reset and delete the gateway's sessions."""


def _when(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


class _SessionView(msgspec.Struct, frozen=True, rename="camel"):
    key: str
    agent_id: str = "?"
    updated_at: float | None = None
    last_status: str | None = None
    message_count: int = 0


class _ToolCallView(msgspec.Struct, frozen=True):
    name: str = "?"
    arguments: str = ""


class _EntryView(msgspec.Struct, frozen=True, rename="camel"):
    role: str
    content: str = ""
    status: str = "completed"
    tool_calls: list[_ToolCallView] = msgspec.field(default_factory=list)
    internal: bool = False


def _transcript_line(entry: _EntryView) -> str:
    parts = [entry.content.replace("\\", "\\\\").replace("\n", "\\n")] if entry.content else []
    parts.extend(f"→ {call.name}({call.arguments})" for call in entry.tool_calls)
    line = f"{entry.role}: {' '.join(parts)}".rstrip()
    if entry.status != "completed":
        line += f" [{entry.status}]"
    return line


def _not_found_is_usage(
    work: Callable[[ControlClient], Awaitable[int]], key: str
) -> Callable[[ControlClient], Awaitable[int]]:
    """``not_found`` from a session method: a clear message and exit 1."""

    async def wrapped(client: ControlClient) -> int:
        try:
            return await work(client)
        except ControlPlaneError as exc:
            if exc.code != "not_found":
                raise
            click.echo(f"no session '{key}'", err=True)
            return EXIT_FAILED

    return wrapped


@sessions.command("list")
@click.option("--agent", "agent_id", help="Only this agent's sessions.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
@_client_options
def sessions_list(
    agent_id: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    """List sessions, most recently used first."""

    async def work(client: ControlClient) -> int:
        params = {"agentId": agent_id} if agent_id is not None else None
        payload = await client.request("sessions.list", params)
        if as_json:
            _print_json(payload)
            return 0
        listed = msgspec.convert(payload.get("sessions", []), list[_SessionView])
        if not listed:
            click.echo("no sessions")
            return 0
        rows = [("KEY", "AGENT", "MESSAGES", "LAST", "UPDATED")]
        rows += [
            (s.key, s.agent_id, str(s.message_count), s.last_status or "-", _when(s.updated_at))
            for s in listed
        ]
        _table(rows)
        return 0

    _run_client(_target(url, token, password, config_file), work)


@sessions.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
@_client_options
def sessions_show(
    key: str,
    as_json: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    """Print a session's transcript, one message per line."""

    async def work(client: ControlClient) -> int:
        payload = await client.request("sessions.get", {"key": key})
        if as_json:
            _print_json(payload)
            return 0
        for entry in msgspec.convert(payload.get("transcript", []), list[_EntryView]):
            click.echo(_transcript_line(entry))
        return 0

    _run_client(_target(url, token, password, config_file), _not_found_is_usage(work, key))


@sessions.command("reset")
@click.argument("key")
@_client_options
def sessions_reset(
    key: str, url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Empty a session's transcript (the key stays)."""

    async def work(client: ControlClient) -> int:
        await client.request("sessions.reset", {"key": key})
        click.echo(f"reset {key}")
        return 0

    _run_client(_target(url, token, password, config_file), _not_found_is_usage(work, key))


@sessions.command("delete")
@click.argument("key")
@_client_options
def sessions_delete(
    key: str, url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Delete a session and its transcript."""

    async def work(client: ControlClient) -> int:
        await client.request("sessions.delete", {"key": key})
        click.echo(f"deleted {key}")
        return 0

    _run_client(_target(url, token, password, config_file), _not_found_is_usage(work, key))


@config.command("reload")
@_client_options
def config_reload(
    url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Make the running gateway load its config file again (like SIGHUP). An invalid file is
    refused and the running config stays; exit 1 with the reason."""

    async def work(client: ControlClient) -> int:
        payload = await client.request("config.reload")
        click.echo(f"reloaded {payload.get('source')}")
        warnings = payload.get("warnings")
        for warning in warnings if isinstance(warnings, list) else []:
            click.echo(f"  note: {warning}", err=True)
        restart = payload.get("restartRequired")
        if isinstance(restart, list) and restart:
            click.echo(f"  restart required for: {', '.join(map(str, restart))}", err=True)
        return 0

    _run_client(_target(url, token, password, config_file), work)


@main.command("health")
@_client_options
def health(
    url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Check that the gateway is up: prints "ok" and exits 0 when it is."""

    async def work(client: ControlClient) -> int:
        payload = await client.request("health")
        if payload.get("ok") is not True:
            click.echo(f"not ok: {payload!r}", err=True)
            return EXIT_FAILED
        click.echo("ok")
        return 0

    _run_client(_target(url, token, password, config_file), work)


class _RunView(msgspec.Struct, frozen=True, rename="camel"):
    run_id: str
    agent_id: str = "?"
    session_key: str = "?"
    age_seconds: float = 0.0
    text_chars: int = 0
    deltas: int = 0
    source: str = "?"


class _AdmissionView(msgspec.Struct, frozen=True, rename="camel"):
    running: int = 0
    queued: int = 0
    busy_sessions: int = 0
    waiting_for_session: int = 0


class _StatusView(msgspec.Struct, frozen=True, rename="camel"):
    uptime_seconds: float = 0.0
    runs: list[_RunView] = msgspec.field(default_factory=list)
    admission: _AdmissionView = msgspec.field(default_factory=_AdmissionView)


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
@_client_options
def status(
    as_json: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    """Show the runs in progress and the admission counters."""

    async def work(client: ControlClient) -> int:
        payload = await client.request("status")
        if as_json:
            _print_json(payload)
            return 0
        view = msgspec.convert(payload, _StatusView)
        counts = view.admission
        click.echo(
            f"up {view.uptime_seconds:.0f}s; running {counts.running}, queued {counts.queued}, "
            f"busy sessions {counts.busy_sessions}, waiting for a session "
            f"{counts.waiting_for_session}"
        )
        if not view.runs:
            click.echo("no runs in progress")
            return 0
        rows = [("RUN", "AGENT", "SESSION", "AGE", "TEXT", "SOURCE")]
        rows += [
            (
                run.run_id,
                run.agent_id,
                run.session_key,
                f"{run.age_seconds:.1f}s",
                f"{run.deltas} tokens, {run.text_chars} chars",
                run.source,
            )
            for run in view.runs
        ]
        _table(rows)
        return 0

    _run_client(_target(url, token, password, config_file), work)


# -- epiloop config set / unset: change one key of the config file ---------------------------


def _edit_config_file(
    config_file: Path | None,
    key: str,
    change: Callable[[str, list[Segment]], Edit | None],
) -> Path | None:
    """Apply ``change`` to the config file's text, validate the result with the loader and
    replace the file atomically (its mode kept). ``None`` when there was nothing to change."""
    path = config_file if config_file is not None else config_path()
    try:
        segments = parse_key_path(key)
        with open(path, encoding="utf-8", newline="") as file:  # keep its line endings
            text = file.read()
    except ConfigError as exc:
        raise _Exit(f"Error: {exc}", EXIT_USAGE) from exc
    except FileNotFoundError as exc:
        raise _Exit(
            f"Error: no config file at {path}: create one with 'epiloop config init' "
            "(or name it with --config / EPILOOP_CONFIG_PATH)",
            EXIT_USAGE,
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _Exit(f"Error: cannot read {path}: {exc}", EXIT_USAGE) from exc
    try:
        edit = change(text, segments)
        if edit is None:
            return None
        parse_config(edit.text, source=str(path))
    except ConfigError as exc:
        where = exc.path or key
        raise _Exit(
            f"Error: {where}: {exc.message} (file unchanged; 'epiloop config show' lists the "
            "keys in effect)",
            EXIT_USAGE,
        ) from exc
    _replace_file(path, edit.text)
    if edit.rewritten:
        click.echo(
            f"Note: {path} was rewritten as plain JSON: its comments and layout are gone.",
            err=True,
        )
    return path


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to a new file beside ``path`` (same mode) and rename it over ``path``, so
    a reader sees the old file or the new one, never half of it."""
    target = path.resolve()  # a symlinked config: replace the file it points to
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise _Exit(f"Error: cannot write {path}: {exc}", EXIT_FAILED) from exc
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise _Exit(f"Error: cannot write {path}: {exc}", EXIT_FAILED) from exc
        raise


def _reload_after_edit(
    reload_gateway: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    if reload_gateway:
        click.get_current_context().invoke(
            config_reload, url=url, token=token, password=password, config_file=config_file
        )


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.option(
    "--reload", "reload_gateway", is_flag=True, help="Then make the running gateway reload it."
)
@_client_options
def config_set(
    key: str,
    value: str,
    reload_gateway: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    """Set KEY (a dotted path such as gateway.port) to VALUE in the config file.

    VALUE is read as JSON5 (true, 18789, "text", [1, 2], {a: 1}); anything else is a plain
    string. The result is validated before the file is replaced; comments elsewhere are kept.
    """
    parsed = parse_value(value)
    path = _edit_config_file(config_file, key, lambda text, at: set_key(text, at, parsed))
    click.echo(f"Set {key} in {path}")
    _reload_after_edit(reload_gateway, url, token, password, config_file)


@config.command("unset")
@click.argument("key")
@click.option(
    "--reload", "reload_gateway", is_flag=True, help="Then make the running gateway reload it."
)
@_client_options
def config_unset(
    key: str,
    reload_gateway: bool,
    url: str | None,
    token: str | None,
    password: str | None,
    config_file: Path | None,
) -> None:
    """Remove KEY from the config file, so its default applies again."""
    path = _edit_config_file(config_file, key, unset_key)
    if path is None:
        click.echo(f"{key} is not set in the config file; nothing changed")
        return
    click.echo(f"Unset {key} in {path}")
    _reload_after_edit(reload_gateway, url, token, password, config_file)
