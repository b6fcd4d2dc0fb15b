"""``epiloop config``: ``init``, ``validate`` and ``show`` work on the file; ``set`` and
``unset`` change one key of it (the text edits live in ``trio_gateway.config.edit``), validate
the result and replace the file atomically; ``reload`` asks the running gateway to load it
again. Also the config loading the local commands start with."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
import msgspec

from ..config import (
    LoadedConfig,
    config_path,
    load_config,
    parse_config,
    redacted,
    starter_config,
)
from ..config.edit import Edit, Segment, parse_key_path, parse_value, set_key, unset_key
from ..control_client import ControlClient
from ..errors import ConfigError
from ..wire.control import ReloadResult, read_payload
from .exits import EXIT_FAILED, EXIT_USAGE, Exit
from .remote import client_options, gateway_target, run_client


def load_or_fail(config_file: Path | None) -> LoadedConfig:
    try:
        return load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from exc


@click.group()
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
    loaded = load_or_fail(config_file)
    agents = ", ".join(agent.id for agent in loaded.config.agents.entries)
    click.echo(f"OK: {loaded.source} (agents: {agents})")


@config.command("show")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def config_show(config_file: Path | None) -> None:
    """Print the effective config as JSON (secrets redacted); where it came from on stderr."""
    loaded = load_or_fail(config_file)
    click.echo(f"source: {loaded.source}", err=True)
    for name, source in sorted(loaded.secret_sources.items()):
        key = name if "." in name else f"gateway.auth.{name}"
        click.echo(f"{key} from {source}", err=True)
    click.echo(msgspec.json.format(msgspec.json.encode(redacted(loaded.config)), indent=2))


@config.command("reload")
@client_options
def config_reload(
    url: str | None, token: str | None, password: str | None, config_file: Path | None
) -> None:
    """Make the running gateway load its config file again (like SIGHUP). An invalid file is
    refused and the running config stays; exit 1 with the reason."""

    async def work(client: ControlClient) -> int:
        reloaded = read_payload(await client.request("config.reload"), ReloadResult)
        click.echo(f"reloaded {reloaded.source}")
        for warning in reloaded.warnings:
            click.echo(f"  note: {warning}", err=True)
        if reloaded.restart_required:
            click.echo(f"  restart required for: {', '.join(reloaded.restart_required)}", err=True)
        return 0

    run_client(gateway_target(url, token, password, config_file), work)


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
        raise Exit(f"Error: {exc}", EXIT_USAGE) from exc
    except FileNotFoundError as exc:
        raise Exit(
            f"Error: no config file at {path}: create one with 'epiloop config init' "
            "(or name it with --config / EPILOOP_CONFIG_PATH)",
            EXIT_USAGE,
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise Exit(f"Error: cannot read {path}: {exc}", EXIT_USAGE) from exc
    try:
        edit = change(text, segments)
        if edit is None:
            return None
        parse_config(edit.text, source=str(path))
    except ConfigError as exc:
        where = exc.path or key
        raise Exit(
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
        raise Exit(f"Error: cannot write {path}: {exc}", EXIT_FAILED) from exc
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
            raise Exit(f"Error: cannot write {path}: {exc}", EXIT_FAILED) from exc
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
@client_options
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
@client_options
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
