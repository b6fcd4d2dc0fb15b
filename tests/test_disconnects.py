"""Disconnect hooks: what the server runs the moment a client is known to be gone."""

from __future__ import annotations

import pytest
import trio

from trio_gateway import disconnects


def test_outside_a_request_registering_does_nothing() -> None:
    called: list[str] = []
    unregister = disconnects.register(lambda: called.append("outside"))
    hooks, token = disconnects.open_request_hooks()
    try:
        assert hooks == []  # the hook went to no list, not to the next request's
        disconnects.run_hooks(hooks)
    finally:
        disconnects.reset_request_hooks(token)
    unregister()  # harmless
    assert called == []


def test_hooks_run_once_in_order_and_a_failing_one_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks, token = disconnects.open_request_hooks()
    try:
        called: list[str] = []

        def broken() -> None:
            raise RuntimeError("a bug")

        disconnects.register(lambda: called.append("first"))
        disconnects.register(broken)
        unregister_third = disconnects.register(lambda: called.append("third"))
        gone = disconnects.register(lambda: called.append("unregistered"))
        gone()
        gone()  # idempotent
        assert len(hooks) == 3
        disconnects.run_hooks(hooks)
        assert hooks == []
        disconnects.run_hooks(hooks)  # nothing left to run
        unregister_third()  # after running: harmless
    finally:
        disconnects.reset_request_hooks(token)
    assert called == ["first", "third"]
    assert "disconnect.hook.failed" in caplog.text
    disconnects.register(lambda: called.append("after"))  # outside again: a no-op
    assert hooks == []
    assert called == ["first", "third"]


async def test_hooks_registered_by_a_task_the_request_started_join_its_list() -> None:
    hooks, token = disconnects.open_request_hooks()
    try:
        called: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _register(lambda: called.append("child")))
        disconnects.run_hooks(hooks)
    finally:
        disconnects.reset_request_hooks(token)
    assert called == ["child"]


async def _register(hook: disconnects.Hook) -> None:
    disconnects.register(hook)
