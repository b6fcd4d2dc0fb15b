"""``epiloop health`` and ``epiloop status``: is the running gateway up, and what is it
doing (the runs in progress and the admission counters)."""

from __future__ import annotations

from pathlib import Path

import click

from ..control_client import ControlClient
from ..wire.control import HealthResult, StatusResult, read_payload
from .exits import EXIT_FAILED
from .remote import client_options, gateway_target, run_client
from .render import print_json, show_status


@click.command("health")
@client_options
def health(
    url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Check that the gateway is up: prints "ok" and exits 0 when it is."""

    async def work(client: ControlClient) -> int:
        payload = await client.request("health")
        if not read_payload(payload, HealthResult).ok:
            click.echo(f"not ok: {payload!r}", err=True)
            return EXIT_FAILED
        click.echo("ok")
        return 0

    run_client(gateway_target(url, token, password, config_file), work)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
@client_options
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
            print_json(payload)
            return 0
        show_status(read_payload(payload, StatusResult))
        return 0

    run_client(gateway_target(url, token, password, config_file), work)
