"""The ``epiloop`` command, one module per command group: ``gateway`` serves; ``config``
manages the config file (and asks a running gateway to reload it); ``doctor`` checks the
session store; ``db`` shows and migrates the shared PostgreSQL database's schema; ``agent``,
``sessions``, ``health`` and ``status`` talk to a running gateway over its WebSocket control
plane (``agent --local`` runs in-process instead).

``remote`` holds what the commands that reach a gateway share, ``render`` the terminal output,
``exits`` the exit statuses. The payloads they read are the control protocol's structs
(``wire.control``). This package is the only place that configures logging handlers and talks
to the terminal.
"""

from __future__ import annotations

import click

from .._version import __version__
from .agent import agent_command
from .config import config
from .db import db
from .doctor import doctor
from .gateway import gateway
from .sessions import sessions
from .status import health, status

__all__ = ["main"]


@click.group()
@click.version_option(__version__, prog_name="epiloop")
def main() -> None:
    """Epiloop Gateway: agents behind an OpenAI-compatible API."""


main.add_command(gateway)
main.add_command(doctor)
main.add_command(config)
main.add_command(db)
main.add_command(agent_command)
main.add_command(sessions)
main.add_command(health)
main.add_command(status)
