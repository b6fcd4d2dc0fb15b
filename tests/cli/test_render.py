"""Tests for :mod:`trio_gateway.cli.render`: what the terminal shows, from the payloads the
gateway sends."""

from __future__ import annotations

import msgspec
import pytest

from trio_gateway.cli.render import show_status
from trio_gateway.wire.control import StatusResult

#: A ``status`` payload as the control plane sends it, with one run in progress.
STATUS = {
    "uptimeSeconds": 42.4,
    "runs": [
        {
            "runId": "chatcmpl-1",
            "agentId": "main",
            "sessionKey": "agent:main:main",
            "source": "ws",
            "startedAt": 1_700_000_000.0,
            "ageSeconds": 3.25,
            "textChars": 340,
            "deltas": 12,
        }
    ],
    "admission": {"running": 1, "queued": 2, "busySessions": 1, "waitingForSession": 0},
}


def test_show_status_counts_text_deltas_not_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    show_status(msgspec.convert(STATUS, StatusResult))

    out = capsys.readouterr().out
    header, row = out.splitlines()[1:]
    assert header.split() == ["RUN", "AGENT", "SESSION", "AGE", "TEXT", "SOURCE"]
    assert "12 text deltas, 340 chars" in row
    assert "token" not in out  # a delta is a piece of text as the upstream sent it, not a token


def test_show_status_without_runs(capsys: pytest.CaptureFixture[str]) -> None:
    show_status(msgspec.convert({**STATUS, "runs": []}, StatusResult))

    assert capsys.readouterr().out == (
        "up 42s; running 1, queued 2, busy sessions 1, waiting for a session 0\n"
        "no runs in progress\n"
    )
