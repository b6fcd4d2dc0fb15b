"""Where the gateway's CPU goes: py-spy samples grouped by layer.

Benchmark tooling. :func:`record` runs ``py-spy record --format raw`` against a process (idle
samples left out, so samples are CPU time) and :func:`breakdown` turns its collapsed stacks into
shares per layer and top frames.

A sample is charged to a *layer*: the innermost frame on its stack that belongs to a named
layer (the gateway's modules, hypercorn, quart, httpx/httpcore, logging). trio, h11, outcome and
the standard library are neutral: their time goes to whoever called them, so h11 work counts
for hypercorn (server side) or httpcore (client side), and a memory-channel ``send`` counts for
the gateway code that sent. Samples with no named frame at all are trio's own loop: the
scheduler, I/O waits' bookkeeping and task switches ("trio scheduler and I/O").
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import msgspec
import trio

__all__ = [
    "PARTIAL",
    "TRIO_LOOP",
    "Breakdown",
    "FrameShare",
    "LayerShare",
    "breakdown",
    "layer_of",
    "py_spy",
    "record",
]

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")

#: ``(path prefix, function names or None for any, layer or None for neutral)``, most specific
#: first. py-spy shows paths from the import root (``trio/_core/_run.py``) when it can, else the
#: full path: a prefix matches at the start or after a ``/``.
_LAYERS: list[tuple[str, frozenset[str] | None, str | None]] = [
    ("trio_gateway/server/streaming.py", None, "gateway: streaming body (server/streaming.py)"),
    ("trio_gateway/server/", None, "gateway: server (routes, app, ASGI wrapper)"),
    ("trio_gateway/wire/sse.py", frozenset({"encode_data"}), "gateway: wire encoding"),
    ("trio_gateway/wire/sse.py", None, "gateway: provider SSE parsing (SSE decode, parser)"),
    (
        "trio_gateway/providers/openai_chat.py",
        None,
        "gateway: provider SSE parsing (SSE decode, parser)",
    ),
    ("trio_gateway/providers/upstream.py", None, "gateway: upstream client (providers)"),
    ("trio_gateway/providers/", None, "gateway: upstream client (providers)"),
    ("trio_gateway/wire/", None, "gateway: wire encoding"),
    ("trio_gateway/agent/", None, "gateway: agent runtime"),
    ("trio_gateway/__main__.py", None, None),  # the root of every stack: neutral
    ("trio_gateway/cli/", None, None),
    ("trio_gateway/", None, "gateway: other"),
    ("hypercorn/", None, "hypercorn (+ h11 server side)"),
    ("quart_trio/", None, "quart / quart-trio / werkzeug"),
    ("quart/", None, "quart / quart-trio / werkzeug"),
    ("werkzeug/", None, "quart / quart-trio / werkzeug"),
    ("blinker/", None, "quart / quart-trio / werkzeug"),
    ("httpx/", None, "httpx / httpcore (+ h11 client side)"),
    ("httpcore/", None, "httpx / httpcore (+ h11 client side)"),
    ("logging/", None, "logging"),
]
TRIO_LOOP = "trio scheduler and I/O"
PARTIAL = "unattributed (partial stack)"
#: Functions a complete stack of the gateway process starts with.
_ROOTS = ("_run_module_as_main", "<module>")


class LayerShare(msgspec.Struct, frozen=True):
    layer: str
    samples: int
    share: float
    #: CPU microseconds per token delivered, when the run's CPU per token is known.
    us_per_token: float | None = None


class FrameShare(msgspec.Struct, frozen=True):
    frame: str
    samples: int
    share: float


class Breakdown(msgspec.Struct, frozen=True):
    samples: int
    layers: list[LayerShare]
    #: Leaf frames (self time).
    top_self: list[FrameShare]
    #: Gateway functions by inclusive time (the sample's stack contains them).
    top_gateway_inclusive: list[FrameShare]


def py_spy() -> str | None:
    """The py-spy executable, if installed."""
    return shutil.which("py-spy")


async def record(pid: int, seconds: float, output: Path, *, rate: int = 200) -> Path:
    """Sample ``pid`` for ``seconds`` into ``output`` (collapsed stacks).

    py-spy pauses the process for each sample (a few tens of microseconds): with
    ``--nonblocking`` a quarter of the stacks of a busy trio process came back cut off at some
    coroutine boundary, which hides who called the socket operation they end in.
    """
    executable = py_spy()
    if executable is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    with trio.fail_after(seconds + 60):
        await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return output


def _split(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match.group("function"), match.group("path")


def layer_of(frame: str) -> str | None:
    """The named layer of one py-spy frame (``function (path:line)``), or ``None``."""
    function, path = _split(frame)
    for prefix, functions, layer in _LAYERS:
        if (path.startswith(prefix) or f"/{prefix}" in path) and (
            functions is None or function in functions
        ):
            return layer
    return None


def _short(frame: str) -> str:
    function, path = _split(frame)
    if not path:
        return frame
    index = path.rfind("site-packages/")
    if index >= 0:
        path = path[index + len("site-packages/") :]
    elif path.startswith("/"):
        path = Path(path).name  # the standard library
    return f"{function} ({path})"


def _stacks(lines: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            samples = int(count)
        except ValueError:
            continue
        # py-spy's frames are separated by ';' (root first); a frame never holds "; ".
        yield [frame.strip() for frame in stack.split(";") if frame.strip()], samples


def breakdown(text: str, *, cpu_per_token_us: float | None = None, top: int = 20) -> Breakdown:
    """Group collapsed stacks by layer; see the module docstring for the rule."""
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, samples in _stacks(text.splitlines()):
        frames = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += samples
        charged = TRIO_LOOP if _split(frames[0])[0] in _ROOTS else PARTIAL
        for frame in reversed(frames):
            layer = layer_of(frame)
            if layer is not None:
                charged = layer
                break
        layers[charged] += samples
        leaves[_short(frames[-1])] += samples
        seen: set[str] = set()
        for frame in frames:
            if (
                layer_of(frame) is not None
                and layer_of(frame) != "logging"
                and (_split(frame)[1].startswith("trio_gateway/") or "/trio_gateway/" in frame)
            ):
                name = _short(frame)
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += samples
    if total == 0:
        return Breakdown(0, [], [], [])

    def share(count: int) -> float:
        return count / total

    return Breakdown(
        samples=total,
        layers=[
            LayerShare(
                layer,
                count,
                share(count),
                None if cpu_per_token_us is None else cpu_per_token_us * share(count),
            )
            for layer, count in layers.most_common()
        ],
        top_self=[
            FrameShare(frame, count, share(count)) for frame, count in leaves.most_common(top)
        ],
        top_gateway_inclusive=[
            FrameShare(frame, count, share(count)) for frame, count in inclusive.most_common(top)
        ],
    )
