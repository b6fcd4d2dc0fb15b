"""The gateway's own credentials in a config: where they may come from, and setting one.

A :class:`~.schema.Config` is frozen, so "the same config with another token" is a copy of three
nested structs. Every place that swaps a secret in (the environment overrides at load time, the
secret generated for a loopback gateway, a reload that keeps the running secret) goes through
:func:`with_auth_secrets`. The PostgreSQL connection string (``session.postgres.dsn``) follows
the same rule as the auth secrets: the file's wins, else the environment's (:data:`DSN_ENV`).
Imports only the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from .schema import Config

__all__ = [
    "DSN_ENV",
    "DSN_KEY",
    "SECRET_ENV",
    "SecretField",
    "with_auth_secrets",
    "with_mode_secret",
    "with_postgres_dsn",
]

#: A field of ``gateway.auth`` that holds a secret.
SecretField = Literal["token", "password"]

#: The environment variable that supplies each secret when the config file sets none.
SECRET_ENV: Mapping[SecretField, str] = {
    "token": "EPILOOP_GATEWAY_TOKEN",
    "password": "EPILOOP_GATEWAY_PASSWORD",
}


#: The environment variable that supplies ``session.postgres.dsn`` when the config file sets
#: none (a connection string often carries a password, so it is a secret like the others).
DSN_ENV = "EPILOOP_POSTGRES_DSN"

#: The dotted key of that secret, as :attr:`~.loader.LoadedConfig.secret_sources` names it.
DSN_KEY = "session.postgres.dsn"


def with_postgres_dsn(config: Config, dsn: str) -> Config:
    """``config`` with ``session.postgres.dsn`` set to ``dsn``."""
    postgres = msgspec.structs.replace(config.session.postgres, dsn=dsn)
    session = msgspec.structs.replace(config.session, postgres=postgres)
    return msgspec.structs.replace(config, session=session)


def with_auth_secrets(config: Config, secrets: Mapping[SecretField, str]) -> Config:
    """``config`` with the given ``gateway.auth`` secrets replaced (the others kept)."""
    if not secrets:
        return config
    fields: dict[str, str] = {str(field): value for field, value in secrets.items()}
    auth = msgspec.structs.replace(config.gateway.auth, **fields)
    gateway = msgspec.structs.replace(config.gateway, auth=auth)
    return msgspec.structs.replace(config, gateway=gateway)


def with_mode_secret(config: Config, secret: str) -> Config:
    """``config`` with ``secret`` as the credential its auth mode checks (token or password).

    Raises ``ValueError`` in auth mode ``none``, which checks no credential.
    """
    mode = config.gateway.auth.mode
    if mode == "none":
        raise ValueError("auth mode 'none' has no secret to set")
    return with_auth_secrets(config, {mode: secret})
