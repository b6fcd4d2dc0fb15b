"""What a config reload changes, decided without I/O: the secret a running gateway keeps, the
notes for settings that apply to new connections only, the settings only a restart applies.
Pure functions over configs; the runtime applies the result. Must not import trio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..auth import needs_secret
from ..config import Config
from ..config.credentials import with_mode_secret
from ..errors import ConfigError

__all__ = [
    "RESTART_ONLY",
    "ReloadResult",
    "keep_running_secret",
    "reload_warnings",
    "restart_required",
]

#: Settings read once, when the process starts: a reload that changes them says so.
RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("gateway.port", lambda c: c.gateway.port),
    ("gateway.bind", lambda c: c.gateway.bind),
    ("gateway.controlUi.basePath", lambda c: c.gateway.control_ui.base_path),
    ("gateway.logging.level", lambda c: c.gateway.logging.level),
    ("gateway.logging.format", lambda c: c.gateway.logging.format),
    ("session.store", lambda c: c.session.store),
    ("session.path", lambda c: c.session.path),
    ("session.maxBytes", lambda c: c.session.max_bytes),
    ("session.walCheckpointSeconds", lambda c: c.session.wal_checkpoint_seconds),
    ("session.postgres.dsn", lambda c: c.session.postgres.dsn),
    ("session.postgres.poolSize", lambda c: c.session.postgres.pool_size),
    ("session.postgres.leaseSeconds", lambda c: c.session.postgres.lease_seconds),
    ("gateway.instanceId", lambda c: c.gateway.instance_id),
)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did not apply at once."""

    #: Human-readable notes (settings that apply to new connections only, and the like).
    warnings: list[str]
    #: Dotted keys whose new value differs from the one the gateway started with and that
    #: only a restart applies.
    restart_required: list[str]


def keep_running_secret(current: Config, config: Config) -> Config:
    """``config``, with the running gateway's secret when it sets none of its own (the running
    gateway may be using a generated secret: keep it rather than lock every client out).
    ``ConfigError`` when there is no secret to keep."""
    auth = config.gateway.auth
    if not needs_secret(auth):
        return config
    if current.gateway.auth.mode != auth.mode or current.gateway.auth.secret is None:
        raise ConfigError(
            f"no {auth.mode} is set; the running gateway would refuse every request",
            path=f"gateway.auth.{auth.mode}",
        )
    return with_mode_secret(config, current.gateway.auth.secret)


def reload_warnings(current: Config, config: Config) -> list[str]:
    """Notes on what the reload from ``current`` to ``config`` applies only in part."""
    warnings = []
    if current.gateway.ws != config.gateway.ws:
        warnings.append("gateway.ws settings apply to new connections")
    return warnings


def restart_required(startup: Config, config: Config) -> list[str]:
    """The dotted keys whose value in ``config`` differs from the one the process started with
    and that only a restart applies."""
    return [key for key, value in RESTART_ONLY if value(config) != value(startup)]
