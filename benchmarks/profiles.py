"""How much a benchmark run does: the :class:`Profile` and the two named ones (short, long).

Benchmark tooling; plain msgspec structs (a profile is part of the result JSON), no I/O.
"""

from __future__ import annotations

import msgspec

__all__ = ["LONG", "PROFILES", "SHORT", "Profile"]


class Profile(msgspec.Struct, frozen=True):
    """How much of each scenario a run does."""

    name: str
    #: Concurrency level → measured requests per round (scenario 1).
    levels: dict[int, int]
    rounds: int
    tokens: int = 64
    pace_s: float = 0.010
    first_token_delay_s: float = 0.020
    #: Bound of one measured phase (requests not started by then are not sent).
    phase_max_s: float = 60.0
    nonstream_concurrency: int = 50
    nonstream_s: float = 4.0
    #: Open idle streams after each step (scenario 4).
    idle_steps: list[int] = msgspec.field(default_factory=lambda: [250, 500, 1000])
    disconnect_concurrency: int = 20
    disconnect_requests: int = 200
    disconnect_after_tokens: int = 8
    workers: int = 2
    workers_levels: list[int] = msgspec.field(default_factory=lambda: [200])
    #: Seconds of py-spy sampling at concurrency ``profile_concurrency`` (0: no profile).
    profile_s: float = 0.0
    profile_concurrency: int = 50
    #: Concurrency levels (of ``levels``) measured through the floor relay: the targets'.
    floor_levels: list[int] = msgspec.field(default_factory=lambda: [1, 50, 200])
    #: Open idle streams after each step through the floor relay (fewer than ``idle_steps``:
    #: its memory grows in a straight line, and the scenario has to stay short).
    floor_idle_steps: list[int] = msgspec.field(default_factory=lambda: [250, 500])
    #: Before each measured phase, wait up to this long for other programs to leave the cores
    #: nearly idle (a shared machine), within ``quiet_budget_s`` for the whole run.
    quiet_wait_s: float = 2.0
    quiet_budget_s: float = 8.0


SHORT = Profile(
    name="short",
    levels={1: 8, 10: 30, 50: 150, 200: 400},
    rounds=1,
    nonstream_s=4.0,
)
LONG = Profile(
    name="long",
    levels={1: 40, 10: 300, 50: 1000, 200: 2400},
    rounds=2,
    phase_max_s=120.0,
    nonstream_s=15.0,
    idle_steps=[500, 1000, 2000, 3000],
    floor_idle_steps=[500, 1000, 2000],
    disconnect_requests=1000,
    workers_levels=[50, 200],
    profile_s=20.0,
    quiet_wait_s=20.0,
    quiet_budget_s=240.0,
)
PROFILES = {profile.name: profile for profile in (SHORT, LONG)}
