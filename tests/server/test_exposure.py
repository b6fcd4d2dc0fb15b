"""Mode ``none`` serves loopback only, also where the gateway cannot see the bind address."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from gateway_harness import make_config
from hypercorn.typing import ASGIReceiveEvent, ASGISendEvent, ConnectionState, HTTPScope

from trio_gateway.agent import open_runtime
from trio_gateway.server import create_app


def _scope(server: tuple[str, int | None]) -> HTTPScope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway")],
        "client": ("203.0.113.9", 40000),
        "server": server,
        "extensions": {},
        "state": ConnectionState({}),
    }


async def _get(server: tuple[str, int | None], mode: str, tmp_path: Path) -> tuple[int, bytes]:
    config = make_config({"gateway": {"auth": {"mode": mode}}, "session": {"store": "memory"}})
    sent: list[ASGISendEvent] = []

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> ASGIReceiveEvent:
        if requests:
            return requests.pop()  # type: ignore[return-value]
        await trio.sleep_forever()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: ASGISendEvent) -> None:
        sent.append(message)

    async with open_runtime(config, state_dir=tmp_path) as runtime:
        await create_app(runtime)(_scope(server), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


@pytest.mark.parametrize(
    "server", [("10.1.2.3", 18789), ("0.0.0.0", 18789), ("2001:db8::1", 18789)]
)
async def test_app_mode_none_refuses_requests_that_reached_a_public_address(
    server: tuple[str, int], tmp_path: Path
) -> None:
    status, body = await _get(server, "none", tmp_path)
    assert status == 503
    error = json.loads(body)["error"]
    assert error["code"] == "auth_required"
    assert "gateway.auth.mode" in error["message"]


@pytest.mark.parametrize(
    ("server", "mode"),
    [
        (("127.0.0.1", 18789), "none"),
        (("::1", 18789), "none"),
        (("/run/epiloop.sock", None), "none"),  # a UNIX socket
        (("10.1.2.3", 18789), "token"),  # /healthz needs no credential
    ],
)
async def test_app_mode_none_serves_loopback_and_any_address_with_a_credential(
    server: tuple[str, int | None], mode: str, tmp_path: Path
) -> None:
    status, _ = await _get(server, mode, tmp_path)
    assert status == 200
