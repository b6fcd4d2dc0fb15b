"""The providers a runtime owns across reloads: which set new runs lease, and closing each set
a reload replaced once the last run that uses it is over.

The bookkeeping of one set (its leases, retired or not) is
:class:`~trio_gateway.providers.registry.ProviderSet`'s; this module holds the sets of one
runtime and the task that closes them (:meth:`ProviderSets.serve_retirement`, in the runtime's
nursery). Must not import the server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from ..providers.base import Provider
from ..providers.registry import ProviderLease, ProviderSet, close_providers

__all__ = ["ProviderSets"]

logger = logging.getLogger(__name__)


class ProviderSets:
    """The set new runs use, and the sets the runtime built and has not closed yet.

    ``owned``: whether the first set is the runtime's (it built it) or the caller's (given to
    :func:`~trio_gateway.agent.runtime.open_runtime`, closed by the caller). Sets a reload
    builds are always the runtime's."""

    def __init__(self, providers: Mapping[str, Provider], *, owned: bool) -> None:
        self._current = ProviderSet(providers, owned=owned)
        #: Sets retired and unused now, waiting for :meth:`serve_retirement`.
        self._idle: list[ProviderSet] = []
        self._idle_changed = trio.Event()
        #: Sets the runtime built and has not closed yet (the current one included).
        self._owned: list[ProviderSet] = [self._current] if owned else []

    @property
    def providers(self) -> Mapping[str, Provider]:
        return self._current.providers

    def lease(self) -> ProviderLease:
        """A run's use of the current set, until the lease is released."""
        return self._current.lease(self._set_idle)

    def replace(self, providers: Mapping[str, Provider]) -> None:
        """A reload built ``providers``: new runs use them; the replaced set is closed once
        its last run is over."""
        replaced = self._current
        self._current = ProviderSet(providers, owned=True)
        self._owned.append(self._current)
        if replaced.retire():
            self._set_idle(replaced)

    def discard(self, providers: Mapping[str, Provider]) -> None:
        """Providers a failed reload built and will never use: closed by
        :meth:`serve_retirement` (shielded and bounded)."""
        if not providers:
            return
        provider_set = ProviderSet(providers, owned=True)
        self._owned.append(provider_set)
        if provider_set.retire():
            self._set_idle(provider_set)

    def _set_idle(self, provider_set: ProviderSet) -> None:
        self._idle.append(provider_set)
        self._idle_changed.set()

    async def serve_retirement(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Close each replaced set once its last run is over; runs until cancelled."""
        task_status.started()
        while True:
            await self._idle_changed.wait()
            self._idle_changed = trio.Event()
            while self._idle:
                provider_set = self._idle.pop(0)
                if provider_set not in self._owned:
                    continue  # closed on exit already
                self._owned.remove(provider_set)
                await close_providers(provider_set.providers)  # shielded and bounded
                logger.debug("providers.retired providers=%s", ",".join(provider_set.providers))

    async def aclose(self) -> None:
        """Close every set the runtime built that is still open (on exit)."""
        self._idle.clear()
        while self._owned:
            provider_set = self._owned.pop()
            provider_set.closed = True
            await close_providers(provider_set.providers)
