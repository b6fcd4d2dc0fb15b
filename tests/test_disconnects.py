"""Disconnect hooks: what the server runs the moment a client is known to be gone."""

from __future__ import annotations

import pytest

from trio_gateway import disconnects


def test_outside_a_request_registering_does_nothing() -> None:
    called: list[str] = []
    unregister = disconnects.register(lambda: called.append("x"))
    unregister()
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
        disconnects.run_hooks(hooks)
        disconnects.run_hooks(hooks)  # nothing left to run
        unregister_third()  # after running: harmless
    finally:
        disconnects.reset_request_hooks(token)
    assert called == ["first", "third"]
    assert "disconnect.hook.failed" in caplog.text
    assert disconnects.register(lambda: None) is not None  # outside again: a no-op
