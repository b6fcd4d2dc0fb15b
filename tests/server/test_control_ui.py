"""The control page's HTTP side: its files, their headers, where and when they are served, and
the ``Origin`` check of the WebSocket upgrade the page makes (the page itself runs in a browser
in tests/ui)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, make_config, start_gateway
from hypercorn.typing import ASGIReceiveEvent, ASGISendEvent, ConnectionState, HTTPScope
from trio_websocket import ConnectionRejected, open_websocket_url

from trio_gateway.agent import open_runtime
from trio_gateway.server import create_app
from trio_gateway.server.control_ui import ASSETS

BOUND = 10
UI_PATHS = ("/", "/ui/app.js", "/ui/app.css")
UI_DIR = Path(__file__).resolve().parents[2] / "trio_gateway" / "server" / "ui"

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.usefixtures("reclaim_client_sockets"),
]


async def test_control_ui_serves_its_files_with_strict_security_headers(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    types = {"/": "text/html", "/ui/app.js": "text/javascript", "/ui/app.css": "text/css"}
    async with httpx.AsyncClient() as http:
        for path in UI_PATHS:
            response = await http.get(gateway.url + path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(types[path])
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp
            assert "script-src 'self';" in csp
            assert "connect-src 'self';" in csp
            assert "frame-ancestors 'none'" in csp
            assert "unsafe" not in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "set-cookie" not in response.headers
            head = await http.head(gateway.url + path)
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_control_ui_other_methods_get_a_json_405(nursery: trio.Nursery, method: str) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as http:
        for path in UI_PATHS:
            response = await http.request(method, gateway.url + path, content=b"{}")
            assert response.status_code == 405, path
            assert response.headers["content-type"].startswith("application/json")
            assert response.headers["allow"] == "GET"
            assert response.json()["error"]["code"] == "method_not_allowed"


async def test_control_ui_leaves_the_other_routes_as_they_were(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{gateway.url}/healthz")).json() == {"status": "ok"}
        assert (await http.get(f"{gateway.url}/readyz")).status_code == 200
        assert (await http.get(f"{gateway.url}/v1/models")).status_code == 401
        assert (await http.get(f"{gateway.url}/metrics")).status_code == 401
        ws_over_http = await http.get(f"{gateway.url}/ws")
        assert ws_over_http.status_code == 400
        assert ws_over_http.headers["content-type"].startswith("application/json")
        assert "content-security-policy" not in (await http.get(f"{gateway.url}/healthz")).headers
    # The WebSocket control plane still answers on "/" beside the page.
    async with open_websocket_url(gateway.url.replace("http://", "ws://") + "/") as ws:
        with trio.fail_after(BOUND):
            assert json.loads(await ws.get_message())["event"] == "connect.challenge"


async def test_control_ui_disabled_answers_404(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"controlUi": {"enabled": False}}})
    async with httpx.AsyncClient() as http:
        for path in UI_PATHS:
            response = await http.get(gateway.url + path)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "endpoint_disabled"


async def test_control_ui_base_path_moves_the_page(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"controlUi": {"basePath": "/control/"}}})
    async with httpx.AsyncClient() as http:
        for path in UI_PATHS:
            assert (await http.get(f"{gateway.url}/control{path}")).status_code == 200
        assert (await http.get(f"{gateway.url}/ui/app.js")).status_code == 404
        assert (await http.get(f"{gateway.url}/")).status_code == 400  # the WebSocket route


def _scope(path: str, server: tuple[str, int]) -> HTTPScope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"gateway")],
        "client": ("203.0.113.9", 40000),
        "server": server,
        "extensions": {},
        "state": ConnectionState({}),
    }


async def _status_at(server: tuple[str, int], override: dict[str, Any], tmp_path: Path) -> int:
    """The status of ``GET /`` that reached the address ``server`` (ASGI, no socket)."""
    config = make_config({"session": {"store": "memory"}, **override})
    sent: list[ASGISendEvent] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> ASGIReceiveEvent:
        if requests:
            return requests.pop()  # type: ignore[return-value]
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: ASGISendEvent) -> None:
        sent.append(message)

    async with open_runtime(config, state_dir=tmp_path) as runtime:
        await create_app(runtime)(_scope("/", server), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"]


@pytest.mark.parametrize(
    ("server", "enabled", "status"),
    [
        (("127.0.0.1", 18789), None, 200),
        (("::1", 18789), None, 200),
        (("10.1.2.3", 18789), None, 404),  # unset: loopback only
        (("10.1.2.3", 18789), True, 200),
        (("127.0.0.1", 18789), False, 404),
    ],
)
async def test_control_ui_is_served_on_loopback_unless_enabled(
    tmp_path: Path, server: tuple[str, int], enabled: bool | None, status: int
) -> None:
    override: dict[str, Any] = {}
    if enabled is not None:
        override = {"gateway": {"controlUi": {"enabled": enabled}}}
    assert await _status_at(server, override, tmp_path) == status


async def test_control_ui_page_loads_under_200_kb(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    html = (UI_DIR / "index.html").read_text()
    referenced = re.findall(r'(?:src|href)="(ui/[^"]+)"', html)
    assert sorted(referenced) == sorted(path for path in ASSETS if path)
    total = 0
    async with httpx.AsyncClient() as http:
        for path in ("", *referenced):
            response = await http.get(f"{gateway.url}/{path}")
            assert response.status_code == 200
            head = sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
            total += head + len(response.content)
    assert total < 200_000, total


def test_control_ui_script_never_parses_text_as_html() -> None:
    script = (UI_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "localStorage" not in script
    assert "document.cookie" not in script


# -- the Origin check of the WebSocket upgrade ----------------------------------------------


async def _upgrade(gateway: RunningGateway, origin: str | None, host: str | None = None) -> int:
    """The HTTP status of the upgrade with ``Origin: origin`` (101 when accepted)."""
    headers = [] if origin is None else [(b"Origin", origin.encode())]
    if host is not None:
        headers.append((b"Host", host.encode()))
    url = gateway.url.replace("http://", "ws://") + "/ws"
    try:
        with trio.fail_after(BOUND):
            async with open_websocket_url(url, extra_headers=headers) as ws:
                await ws.get_message()  # the challenge
                return 101
    except ConnectionRejected as exc:
        rejected = exc
    if rejected.status_code == 403:
        assert json.loads(rejected.body or b"{}")["error"]["code"] == "origin_not_allowed"
    return rejected.status_code


async def test_control_origin_of_another_site_is_refused(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(
        nursery, {"gateway": {"controlUi": {"allowedOrigins": ["https://ops.example.com"]}}}
    )
    own = gateway.url  # http://127.0.0.1:<port>
    assert await _upgrade(gateway, None) == 101  # not a browser: the CLI, an SDK
    assert await _upgrade(gateway, own) == 101
    assert await _upgrade(gateway, "https://ops.example.com") == 101
    assert await _upgrade(gateway, "https://evil.example") == 403
    assert await _upgrade(gateway, "null") == 403
    assert await _upgrade(gateway, own.replace("127.0.0.1", "localhost")) == 403


async def test_control_origin_refusal_holds_whatever_the_credential(
    nursery: trio.Nursery,
) -> None:
    # Mode none on loopback: without the check any web page could drive the gateway.
    gateway = await start_gateway(nursery, {"gateway": {"auth": {"mode": "none"}}})
    assert await _upgrade(gateway, "http://evil.example") == 403
    assert await _upgrade(gateway, gateway.url) == 101


async def test_control_health_reports_readiness(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    url = gateway.url.replace("http://", "ws://") + "/ws"
    with trio.fail_after(BOUND):
        async with open_websocket_url(url) as ws:
            await ws.get_message()
            auth = {"auth": {"token": TOKEN}}
            await ws.send_message(
                json.dumps({"type": "req", "id": "c", "method": "connect", "params": auth})
            )
            assert json.loads(await ws.get_message())["ok"]
            await ws.send_message(json.dumps({"type": "req", "id": "h", "method": "health"}))
            reply = json.loads(await ws.get_message())
            while reply.get("id") != "h":
                reply = json.loads(await ws.get_message())
    payload = reply["payload"]
    assert payload["ready"] is True
    assert payload["checks"] == {"sessionStore": True, "notDraining": True}
