"""The ``epiloop`` command: ``gateway`` serves, ``config init|validate|show`` manage the config.

This is the only module that configures logging handlers and talks to the terminal.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from functools import partial
from pathlib import Path

import click
import msgspec
import trio

from ._version import __version__
from .agent import open_runtime
from .auth import is_loopback_host, needs_secret
from .config import (
    Config,
    LoadedConfig,
    config_path,
    load_config,
    redacted,
    starter_config,
    state_dir,
)
from .errors import ConfigError
from .server import check_exposure, resolve_host, serve_gateway

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
    default="info",
    show_default=True,
)
def gateway(port: int | None, bind: str | None, config_file: Path | None, log_level: str) -> None:
    """Run the gateway until Ctrl-C or SIGTERM."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    loaded = _load(config_file)
    config = loaded.config
    host = resolve_host(bind or config.gateway.bind)
    port = config.gateway.port if port is None else port
    generated = None
    if needs_secret(config.gateway.auth) and is_loopback_host(host):
        generated = secrets.token_urlsafe(32)
        config = _with_secret(config, generated)
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
        trio.run(partial(_serve_until_signal, config, state_dir(), host, port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc


def _with_secret(config: Config, secret: str) -> Config:
    auth = config.gateway.auth
    auth = msgspec.structs.replace(auth, **{auth.mode: secret})
    gateway = msgspec.structs.replace(config.gateway, auth=auth)
    return msgspec.structs.replace(config, gateway=gateway)


async def _serve_until_signal(config: Config, state: Path, host: str, port: int) -> None:
    # The signal receiver is open first, so Ctrl-C during start-up also shuts down cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def wait_for_signal() -> None:
            async for signum in signals:
                click.echo(f"{signal.Signals(signum).name}: shutting down", err=True)
                return

        async with open_runtime(config, state_dir=state) as runtime, trio.open_nursery() as nursery:
            urls = await nursery.start(
                partial(
                    serve_gateway,
                    runtime,
                    host=host,
                    port=port,
                    shutdown_trigger=wait_for_signal,
                )
            )
            for url in urls:
                click.echo(f"Listening on {url} (Ctrl-C to stop)")


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
