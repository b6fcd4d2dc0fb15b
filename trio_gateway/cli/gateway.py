"""``epiloop gateway``: serve until Ctrl-C or SIGTERM, from this process or from
``--workers N`` worker processes; SIGHUP reloads the config file."""

from __future__ import annotations

import secrets
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import click
import trio

from .._version import __version__
from ..agent import AgentRuntime, open_runtime
from ..auth import is_loopback_host, needs_secret
from ..config import EMBEDDED_SOURCE, Config, state_dir
from ..config.credentials import with_mode_secret
from ..errors import ConfigError, GatewayError, SessionStoreError
from ..logs import configure_logging
from ..server import (
    check_exposure,
    listen_sockets,
    resolve_host,
    serve_gateway,
    startup_failure,
)
from ..server.workers import WorkerReport, run_workers
from .config import load_or_fail


@click.command()
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
    loaded = load_or_fail(config_file)
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
    except GatewayError as exc:  # a bad file, or providers that cannot be built: keep serving
        click.echo(f"SIGHUP: config not reloaded, the running config stays: {exc}", err=True)
        return
    click.echo("SIGHUP: config reloaded (new runs use it)", err=True)
    for warning in result.warnings:
        click.echo(f"  note: {warning}", err=True)
    if result.restart_required:
        click.echo(f"  restart required for: {', '.join(result.restart_required)}", err=True)
