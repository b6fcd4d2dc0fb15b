"""Which stored responses lost their run. Pure, no I/O.

A stored response is ``queued`` or ``in_progress`` while its run goes on, on the instance named
in its record. When that instance stops (a restart, a crash, ``kill -9``) before the run ends,
nothing will ever finish the record: :func:`orphaned` finds such records so that the gateway
marks them ``failed`` with a reason instead of leaving them in progress forever.

The rules, first match wins (``unfinished`` holds only queued or in-progress records):

``live here``
    Its run is live on this instance (its id among ``live_here``): not orphaned.

``own instance``
    It names this instance but is not live here: orphaned (this process started again under
    the same instance id, or its run ended without its last write landing).

``instance alive``
    Its instance is among ``live_instances`` (PostgreSQL: the rows of ``epiloop_instances``
    not expired; SQLite: the processes of this host still running, found by the caller): not
    orphaned, another instance runs it.

``instance gone``
    Anything else: orphaned.
"""

from __future__ import annotations

from collections.abc import Iterable

from .store import UNFINISHED, StoredResponse

__all__ = ["orphaned"]


def orphaned(
    unfinished: Iterable[StoredResponse],
    *,
    own_instance: str,
    live_here: frozenset[str],
    live_instances: frozenset[str],
) -> list[StoredResponse]:
    """The records among ``unfinished`` whose run is lost (see the module docs)."""
    lost: list[StoredResponse] = []
    for record in unfinished:
        if record.status not in UNFINISHED or record.id in live_here:
            continue
        if record.instance_id != own_instance and record.instance_id in live_instances:
            continue
        lost.append(record)
    return lost
