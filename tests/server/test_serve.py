"""Serving helpers that are not about requests."""

from __future__ import annotations

import gc

from trio_gateway.server.serve import freeze_startup_heap


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
