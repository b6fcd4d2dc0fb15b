"""Serving helpers that are not about requests."""

from __future__ import annotations

import gc

from trio_gateway.errors import ConfigError
from trio_gateway.server.serve import freeze_startup_heap, startup_failure


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
