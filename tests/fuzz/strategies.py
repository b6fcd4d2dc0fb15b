"""Hypothesis strategies and settings shared by the fuzz tests.

Example counts are kept small so the fuzz modules run in seconds; ``EPILOOP_FUZZ_SCALE`` (a
factor, e.g. ``20``) multiplies them for a longer local campaign.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

__all__ = [
    "FUZZ",
    "INTERESTING_STRINGS",
    "PINNED",
    "examples",
    "json_values",
    "nested_json",
    "odd_strings",
    "repeated_text",
]

_SCALE = float(os.environ.get("EPILOOP_FUZZ_SCALE", "1"))


def examples(count: int) -> int:
    """``count`` scaled by ``EPILOOP_FUZZ_SCALE`` (at least 1)."""
    return max(1, round(count * _SCALE))


#: The settings every fuzz test starts from. No example database: each run stands on its own and
#: a failure prints a ``@reproduce_failure`` blob to replay it. The deadline is generous (the
#: client's own timeout reports a hang first); the gateway fixture is module-scoped on purpose,
#: so the function-scoped-fixture health check does not apply.
FUZZ = settings(
    database=None,
    deadline=timedelta(seconds=20),
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

#: Strings that reach the branches a uniformly random string would miss.
INTERESTING_STRINGS = (
    "",
    " ",
    "epiloop",
    "epiloop:main",
    "epiloop:helper",
    "epiloop:nope",
    "epiloop/helper",
    "agent:main",
    "agent:",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "text",
    "image_url",
    "auto",
    "none",
    "required",
    "true",
    "null",
    "0",
    "\x00",
    "\u2028",
    "\ufeff",
    "😀",
    "read_file",
    "exec",
    "agent:main:main",
)

odd_strings = st.sampled_from(INTERESTING_STRINGS) | st.text(max_size=40)

_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_strings
)


def json_values(max_leaves: int = 25) -> st.SearchStrategy[object]:
    """Any JSON value: scalars, and lists and objects of them, a few levels deep."""
    return st.recursive(
        _leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(odd_strings, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def nested_json(depth: int, kind: str, leaf: str = "1") -> str:
    """JSON text: ``leaf`` inside ``depth`` arrays (``kind`` ``"list"``) or objects.

    Built as text: ``json.dumps`` of so deep a value would itself hit the recursion limit.
    """
    if kind == "list":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


def repeated_text(size: int, pattern: str) -> str:
    """``size`` characters of ``pattern`` repeated (a huge string, cheap to generate)."""
    pattern = pattern or "x"
    return (pattern * (size // len(pattern) + 1))[:size]


#: For the strict-xfail tests that pin a known bug: stop at the first failing example, no
#: shrinking (the reproducer is in the test's reason already).
PINNED = settings(FUZZ, phases=(Phase.explicit, Phase.generate))
