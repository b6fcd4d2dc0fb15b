"""``epiloop sessions list|show|reset|delete``: the running gateway's sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from ..control_client import ControlClient
from ..errors import ControlPlaneError
from ..wire.control import (
    SessionDetail,
    SessionKeyParams,
    SessionsListParams,
    SessionsListResult,
    read_payload,
)
from .exits import EXIT_FAILED
from .remote import client_options, gateway_target, run_client
from .render import print_json, table, transcript_line, when


@click.group()
def sessions() -> None:
    """List, show, reset and delete the gateway's sessions."""


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
@client_options
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
        params = SessionsListParams(agent_id=agent_id) if agent_id is not None else None
        payload = await client.request("sessions.list", params)
        if as_json:
            print_json(payload)
            return 0
        listed = read_payload(payload, SessionsListResult).sessions
        if not listed:
            click.echo("no sessions")
            return 0
        rows = [("KEY", "AGENT", "MESSAGES", "LAST", "UPDATED")]
        rows += [
            (s.key, s.agent_id, str(s.message_count), s.last_status or "-", when(s.updated_at))
            for s in listed
        ]
        table(rows)
        return 0

    run_client(gateway_target(url, token, password, config_file), work)


@sessions.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
@client_options
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
        payload = await client.request("sessions.get", SessionKeyParams(key=key))
        if as_json:
            print_json(payload)
            return 0
        for entry in read_payload(payload, SessionDetail).transcript:
            click.echo(transcript_line(entry))
        return 0

    run_client(gateway_target(url, token, password, config_file), _not_found_is_usage(work, key))


@sessions.command("reset")
@click.argument("key")
@client_options
def sessions_reset(
    key: str, url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Empty a session's transcript (the key stays)."""

    async def work(client: ControlClient) -> int:
        await client.request("sessions.reset", SessionKeyParams(key=key))
        click.echo(f"reset {key}")
        return 0

    run_client(gateway_target(url, token, password, config_file), _not_found_is_usage(work, key))


@sessions.command("delete")
@click.argument("key")
@client_options
def sessions_delete(
    key: str, url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Delete a session and its transcript."""

    async def work(client: ControlClient) -> int:
        await client.request("sessions.delete", SessionKeyParams(key=key))
        click.echo(f"deleted {key}")
        return 0

    run_client(gateway_target(url, token, password, config_file), _not_found_is_usage(work, key))
