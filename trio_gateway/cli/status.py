"""``epiloop health`` and ``epiloop status``: is the running gateway up, and what is it
doing (the runs in progress and the admission counters)."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec

from ..control_client import ControlClient
from .exits import EXIT_FAILED
from .remote import client_options, gateway_target, run_client
from .render import print_json, table
from .views import StatusView


@click.command("health")
@client_options
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
        view = msgspec.convert(payload, StatusView)
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
        table(rows)
        return 0

    run_client(gateway_target(url, token, password, config_file), work)


# -- epiloop config set / unset: change one key of the config file ---------------------------
