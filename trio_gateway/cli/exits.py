"""How a CLI command ends: the exit statuses and ``Exit``, which carries a message and one of
them out of a command (see ``exits``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps

import click

# The exit statuses of the commands that talk to a running gateway (agent, sessions, health,
# status, config reload) and of config set|unset: 0 done, 1 the run or request failed, 2 usage
# or configuration error, 3 the gateway is not running, 4 authentication failed, 130
# interrupted (Ctrl-C).

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 130


class Exit(Exception):
    """Ends a command: ``message`` on stderr, exit status ``exit_code`` (see ``exits``)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def exits(command: Callable[..., None]) -> Callable[..., None]:
    """Turn an ``Exit`` raised by ``command`` into its message and exit status."""

    @wraps(command)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except Exit as exc:
            click.echo(exc.message, err=True)
            sys.exit(exc.exit_code)

    return wrapper
