"""Reaching a running gateway: the options every such command takes (``--url``, ``--token``,
``--password``, ``--config``), where its control plane is and which credential to give it,
one connection per command, and what a control-plane error means to the user."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import click
import trio

from ..config import Config, load_config
from ..control_client import (
    GATEWAY_UNREACHABLE,
    ControlClient,
    is_auth_failure,
    open_control_client,
)
from ..errors import ConfigError, ControlPlaneError
from ..server import resolve_host
from .exits import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Exit,
    exits,
)

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "*", "")


@dataclass(frozen=True, slots=True)
class Target:
    """Where the control plane is and the credential to give it."""

    url: str
    token: str | None
    password: str | None


def gateway_url(config: Config) -> str:
    host = resolve_host(config.gateway.bind)
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if config.gateway.port == 0:
        raise Exit("gateway.port is 0 (a random port): pass --url ws://HOST:PORT/ws", EXIT_USAGE)
    return f"ws://{host}:{config.gateway.port}/ws"


def control_url(url: str) -> str:
    """Accept the gateway's own ``http://host:port`` (as ``epiloop gateway`` prints it)."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(http):
            url = ws + url[len(http) :]
            if url.count("/") == 2:  # no path: the control plane's
                url += "/ws"
    return url


def gateway_target(
    url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> Target:
    if url is not None:
        url = control_url(url)
    if url is not None and (token is not None or password is not None):
        return Target(url, token, password)
    try:
        config = load_config(config_file).config
    except ConfigError as exc:
        raise Exit(f"invalid configuration: {exc}", EXIT_USAGE) from exc
    if token is None and password is None:
        auth = config.gateway.auth
        if auth.mode == "token":
            token = auth.token
        elif auth.mode == "password":
            password = auth.password
    return Target(url if url is not None else gateway_url(config), token, password)


def client_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every command that talks to a running gateway takes (and ``exits``)."""
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
    command = exits(command)
    for option in reversed(options):
        command = option(command)
    return command


def control_failure(error: ControlPlaneError, url: str) -> Exit:
    """The message and exit status for a control-plane error."""
    if error.code == GATEWAY_UNREACHABLE:
        return Exit(
            f"the gateway is not running at {url} (start it with 'epiloop gateway')",
            EXIT_UNREACHABLE,
        )
    if error.code == "reload_only":
        return Exit(
            "authentication failed: the config file's credential is not loaded yet; run "
            "'epiloop config reload' first (or pass the running gateway's --token)",
            EXIT_AUTH,
        )
    if is_auth_failure(error):
        return Exit("authentication failed: check gateway.auth / EPILOOP_GATEWAY_TOKEN", EXIT_AUTH)
    if error.code in (
        "invalid_params",
        "invalid_url",
        "invalid_request_error",
        "session_agent_mismatch",
    ):
        return Exit(error.message, EXIT_USAGE)
    return Exit(f"{error.message} ({error.code})", EXIT_FAILED)


def run_client(target: Target, work: Callable[[ControlClient], Awaitable[int]]) -> None:
    """Connect, do ``work`` and exit with its status; control-plane errors become messages."""

    async def connected() -> int:
        async with open_control_client(
            target.url, token=target.token, password=target.password
        ) as client:
            return await work(client)

    try:
        status = trio.run(connected)
    except ControlPlaneError as exc:
        raise control_failure(exc, target.url) from exc
    except KeyboardInterrupt:
        raise Exit("interrupted", EXIT_INTERRUPTED) from None
    if status:
        sys.exit(status)
