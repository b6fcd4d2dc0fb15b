"""The control page in the browser (docs/control-ui.md): its HTML, JavaScript and CSS, served
from the package at ``gateway.controlUi.basePath``.

The page talks to the gateway only through the WebSocket control plane (``/ws``), with the
gateway's token or password; this module serves its static files and nothing else: GET and
HEAD only (another method gets the JSON 405 every route gives), each response with a strict
Content-Security-Policy and the headers that keep it out of frames and referrers. The files are
read once, when the routes are registered. Unless ``gateway.controlUi.enabled`` says otherwise,
the page is served only to requests that reached a loopback address.

It owns no state and imports nothing of the control plane: the ``Origin`` check of the
WebSocket upgrade is the control plane's (:func:`trio_gateway.auth.origin_allowed`).
"""

from __future__ import annotations

from importlib import resources

from quart import Response, request
from quart_trio import QuartTrio

from ..agent import AgentRuntime
from ..errors import EndpointDisabledError
from .app_state import on_loopback

__all__ = ["ASSETS", "SECURITY_HEADERS", "register_ui_routes"]

#: The files of the page, by the path they are served at under the base path, and their type.
ASSETS: dict[str, tuple[str, str]] = {
    "": ("index.html", "text/html; charset=utf-8"),
    "ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "ui/app.css": ("app.css", "text/css; charset=utf-8"),
}

#: Sent with every file of the page. Scripts and styles come from the gateway only (no inline
#: code, no eval), the page may connect only to its own origin (the WebSocket included), and no
#: other site may frame it.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _load(name: str) -> bytes:
    return (resources.files(__package__ or "trio_gateway.server") / "ui" / name).read_bytes()


def register_ui_routes(app: QuartTrio, runtime: AgentRuntime) -> None:
    """Serve the page under the base path the gateway starts with (a reload does not move it)."""
    base = runtime.config.gateway.control_ui.base_path
    for path, (name, content_type) in ASSETS.items():
        body = _load(name)

        async def serve(body: bytes = body, content_type: str = content_type) -> Response:
            _check_enabled(runtime)
            return Response(body, status=200, content_type=content_type, headers=SECURITY_HEADERS)

        app.add_url_rule(
            base + path,
            f"control_ui_{name}",
            serve,
            methods=["GET"],
            provide_automatic_options=False,
        )


def _check_enabled(runtime: AgentRuntime) -> None:
    enabled = runtime.config.gateway.control_ui.enabled
    if enabled is None:
        if on_loopback(request.scope):
            return
        raise EndpointDisabledError(
            "The control UI is served on loopback only; set gateway.controlUi.enabled to true "
            "to serve it on this address."
        )
    if not enabled:
        raise EndpointDisabledError("The control UI is disabled (gateway.controlUi.enabled).")
