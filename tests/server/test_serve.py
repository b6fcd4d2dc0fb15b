"""Serving helpers that are not about requests."""

from __future__ import annotations

import gc
import importlib.metadata
from functools import partial

import pytest
import trio
from gateway_harness import make_config, open_test_runtime
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer

from trio_gateway.errors import ConfigError
from trio_gateway.server import serve
from trio_gateway.server.serve import (
    check_hypercorn,
    freeze_startup_heap,
    serve_gateway,
    startup_failure,
)


def test_freeze_startup_heap_moves_live_objects_out_of_the_collected_generations() -> None:
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    kept = [[index] for index in range(1000)]  # tracked containers, alive past the freeze
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert all(gc.is_tracked(item) for item in kept)
        assert sum(gc.get_count()) < len(kept)  # nothing is waiting for a collection
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_startup_failure_names_our_error_inside_nursery_groups() -> None:
    error = ConfigError("cannot listen on 127.0.0.1:1: Address already in use", path="gateway.port")
    group = BaseExceptionGroup("nursery", [RuntimeError("later"), ExceptionGroup("inner", [error])])
    assert startup_failure(group) == (
        "gateway.port: cannot listen on 127.0.0.1:1: Address already in use"
    )


def test_startup_failure_falls_back_to_oserror_then_the_exception_type() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/nowhere/x")
    assert startup_failure(ExceptionGroup("g", [missing])) == (
        "No such file or directory: /nowhere/x"
    )
    assert startup_failure(RuntimeError("boom")) == "RuntimeError: boom"


class _TCPServerOfAnotherVersion(TCPServer):
    """hypercorn's TCPServer as a later version might have it: one more required parameter."""

    def __init__(
        self,
        app: object,
        config: object,
        context: object,
        state: object,
        stream: object,
        limits: object,
    ) -> None:
        raise AssertionError("the serving loop must not get this far")


def test_check_hypercorn_accepts_the_installed_hypercorn() -> None:
    check_hypercorn()


def test_check_hypercorn_names_the_version_and_what_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serve, "TCPServer", _TCPServerOfAnotherVersion)
    monkeypatch.delattr(Lifespan, "wait_for_startup")
    with pytest.raises(ConfigError) as caught:
        check_hypercorn()
    message = str(caught.value)
    assert f"hypercorn {importlib.metadata.version('hypercorn')} is installed" in message
    assert "TCPServer(app, config, context, state, stream, limits)" in message
    assert "Lifespan has no 'wait_for_startup'" in message


async def test_serve_gateway_refuses_a_hypercorn_whose_internals_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before the fix the gateway served, and the first connection died in a TypeError."""
    monkeypatch.setattr(serve, "TCPServer", _TCPServerOfAnotherVersion)
    with trio.fail_after(10):
        async with open_test_runtime(make_config()) as runtime, trio.open_nursery() as nursery:
            with pytest.raises(ConfigError, match=r"hypercorn .* is installed"):
                await nursery.start(partial(serve_gateway, runtime, host="127.0.0.1", port=0))
            nursery.cancel_scope.cancel(reason="the test is over")
