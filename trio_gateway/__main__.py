"""``python -m trio_gateway`` is the ``epiloop`` command."""

from .cli import main

main()
