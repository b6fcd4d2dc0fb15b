"""The control page in a real browser: Playwright for Python driving Debian's Chromium.

Each test serves a real gateway in its trio nursery and drives the page from a worker thread
(Playwright's sync API; one thread per test, which owns the browser from launch to close). The
page's steps that need the gateway's side (an HTTP run, a restart, what the upstream saw) call
back into trio with ``trio.from_thread.run``. Every browser wait is bounded (``STEP_MS``).

Without Chromium or Playwright the whole module is skipped, with one reason; ``.ci/run``
installs both. With ``EPILOOP_UI_SCREENSHOTS=1`` the tests also save the screenshots of each
page that the README shows (docs/images/ui-*.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway

from benchmarks.mock_upstream import MockUpstream, Scenario
from benchmarks.scripted_provider import Hang, Say, ScriptedProvider

CHROMIUM = shutil.which("chromium")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    PLAYWRIGHT = False
else:
    PLAYWRIGHT = True

if CHROMIUM is None or not PLAYWRIGHT:
    pytest.skip(
        "browser tests need Chromium (apt-get install chromium) and Playwright "
        "(pip install -e '.[test]'); .ci/run installs both",
        allow_module_level=True,
    )

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: Bound on each browser step (navigation, a click, an expectation), in milliseconds.
STEP_MS = 10_000
#: Bound on the gateway side's waits, in seconds.
BOUND = 15
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
HOSTILE = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> done'

pytestmark = pytest.mark.filterwarnings(
    # Playwright's driver pipes, closed when the browser is, are collected later.
    "ignore::ResourceWarning",
)

T = TypeVar("T")


def browse(url: str, profile: Path, scenario: Callable[[Page], None], width: int = 1000) -> None:
    """Open ``url`` in a fresh headless Chromium (its own profile directory) and run
    ``scenario`` on the page; called in a worker thread."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": width, "height": 760},
        )
        try:
            context.set_default_timeout(STEP_MS)
            expect.set_options(timeout=STEP_MS)
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            scenario(page)
            assert errors == [], errors
        finally:
            context.close()


async def in_browser(
    url: str, profile: Path, scenario: Callable[[Page], None], width: int = 1000
) -> None:
    await trio.to_thread.run_sync(browse, url, profile, scenario, width)


def on_trio(function: Callable[[], Awaitable[T]]) -> T:
    """Run ``function`` in the test's trio loop, from the browser thread."""
    return trio.from_thread.run(function)


def sign_in(page: Page, secret: str = TOKEN) -> None:
    page.get_by_label("Gateway token or password").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_contain_text("Connected")


def screenshot(page: Page, name: str) -> None:
    if os.environ.get("EPILOOP_UI_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"ui-{name}.png"))


def answer(page: Page) -> Any:
    return page.locator("#chat-log .message.assistant .text").last


async def test_sign_in_refuses_a_wrong_secret_and_keeps_the_right_one_for_the_tab(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gateway = await start_gateway(nursery)

    def scenario(page: Page) -> None:
        page.get_by_label("Gateway token or password").fill("wrong-secret")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#sign-in-error")).to_contain_text("Invalid credential")
        expect(page.locator("#nav")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('epiloop.secret')") is None
        screenshot(page, "sign-in")
        sign_in(page)
        expect(page.locator("#nav")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('epiloop.secret')") == TOKEN
        assert TOKEN not in page.url
        assert page.context.cookies() == []
        assert page.evaluate("localStorage.length") == 0
        # A reload in the same tab signs in again from sessionStorage.
        page.reload()
        expect(page.locator("#connection")).to_contain_text("Connected")

    await in_browser(gateway.url, tmp_path / "profile", scenario)


async def test_chat_streams_the_echo_agent_answer_as_it_arrives(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gateway = await start_gateway(
        nursery, {"models": {"providers": {"local": {"api": "echo", "paceMs": 250}}}}
    )
    words = "one two three four five six seven eight"

    def scenario(page: Page) -> None:
        sign_in(page)
        page.get_by_label("Message").fill(words)
        page.get_by_label("Message").press("Enter")
        expect(answer(page)).to_contain_text("one")
        # The first words are on the page while the last one is still to come.
        assert "eight" not in answer(page).inner_text()
        expect(page.get_by_role("button", name="Stop")).to_be_enabled()
        expect(answer(page)).to_have_text(words)
        expect(page.get_by_role("button", name="Send")).to_be_enabled()
        screenshot(page, "chat")

    await in_browser(gateway.url, tmp_path / "profile", scenario)
    sessions = await gateway.runtime.sessions.list_sessions(agent_id="main", limit=10)
    assert [s.message_count for s in sessions] == [2]


async def test_stop_aborts_a_slow_run_and_the_upstream_sees_its_request_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock = MockUpstream({"slow": Scenario(tokens=[f"tok{i} " for i in range(200)], pace=0.1)})
    await nursery.start(mock.serve)
    gateway = await start_gateway(
        nursery,
        {
            "models": {
                "providers": {
                    "up": {"api": "openai-chat", "baseUrl": mock.openai_base_url, "apiKey": "k"}
                }
            },
            "agents": {"defaults": {"model": "up/slow"}},
        },
    )

    async def upstream_closed() -> str | None:
        with trio.fail_after(BOUND):
            await mock.requests[0].closed.wait()
        return mock.requests[0].closed_by

    def scenario(page: Page) -> None:
        sign_in(page)
        page.get_by_label("Message").fill("take your time")
        page.get_by_role("button", name="Send").click()
        expect(answer(page)).to_contain_text("tok1")
        page.get_by_role("button", name="Stop").click()
        expect(page.locator("#chat-log .message.assistant .badge")).to_have_text("aborted")
        assert on_trio(upstream_closed) == "client"
        assert "tok199" not in answer(page).inner_text()

    await in_browser(gateway.url, tmp_path / "profile", scenario)


async def _abandoned_http_run(gateway: RunningGateway, session_key: str) -> None:
    """An HTTP streaming run whose client leaves after the first words: recorded aborted."""
    headers = {**gateway.headers, "x-epiloop-session-key": session_key}
    body = {"stream": True, "messages": [{"role": "user", "content": "question"}]}
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST", f"{gateway.api_url}/chat/completions", json=body, headers=headers
        ) as response,
    ):
        async for line in response.aiter_lines():
            if "half" in line:
                break


async def test_sessions_are_listed_opened_reset_and_deleted(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    provider = ScriptedProvider([Say("half an answer"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    await _abandoned_http_run(gateway, "desk-1")
    with trio.fail_after(BOUND):
        while (await gateway.runtime.sessions.get("desk-1")) is None:
            await trio.sleep(0.02)

    def scenario(page: Page) -> None:
        sign_in(page)
        page.get_by_role("link", name="Sessions").click()
        row = page.locator("#sessions-table tbody tr", has_text="desk-1")
        expect(row).to_contain_text("aborted")
        row.get_by_role("button", name="Open").click()
        transcript = page.locator("#session-transcript")
        expect(transcript.locator(".message.user")).to_have_text("userquestion")
        partial = transcript.locator(".message.assistant")
        expect(partial.locator(".text")).to_have_text("half an answer")
        expect(partial.locator(".badge")).to_have_text("aborted")
        screenshot(page, "sessions")

        row.get_by_role("button", name="Reset").click()
        expect(row.locator("td").nth(5)).to_have_text("0")
        expect(transcript).to_contain_text("The transcript is empty.")

        row.get_by_role("button", name="Delete").click()
        dialog = page.locator("#confirm")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("desk-1")
        dialog.get_by_role("button", name="Cancel").click()
        expect(row).to_be_visible()
        row.get_by_role("button", name="Delete").click()
        dialog.get_by_role("button", name="Delete").click()
        expect(row).to_have_count(0)

    await in_browser(gateway.url, tmp_path / "profile", scenario)
    assert await gateway.runtime.sessions.get("desk-1") is None


async def test_a_run_started_over_http_shows_up_live_and_is_aborted_from_the_page(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    provider = ScriptedProvider([Say("working on it"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    ended = trio.Event()

    async def curl() -> None:
        headers = {**gateway.headers, "x-epiloop-session-key": "from-curl"}
        body = {"stream": True, "messages": [{"role": "user", "content": "long job"}]}
        async with (
            httpx.AsyncClient(timeout=BOUND) as client,
            client.stream(
                "POST", f"{gateway.api_url}/chat/completions", json=body, headers=headers
            ) as response,
        ):
            await response.aread()
        ended.set()

    async def http_stream_ended() -> None:
        with trio.fail_after(BOUND):
            await ended.wait()

    def scenario(page: Page) -> None:
        sign_in(page)
        page.get_by_role("link", name="Live runs").click()
        expect(page.locator("#live-empty")).to_be_visible()
        trio.from_thread.run_sync(nursery.start_soon, curl)
        row = page.locator("#live-table tbody tr", has_text="from-curl")
        expect(row).to_contain_text("http")
        expect(row).to_contain_text("13 chars")
        screenshot(page, "live")
        row.get_by_role("button", name="Abort").click()
        on_trio(http_stream_ended)
        expect(row).to_have_count(0)
        expect(page.locator("#live-empty")).to_be_visible()

    await in_browser(gateway.url, tmp_path / "profile", scenario)
    assert provider.calls[0].outcome == "cancelled"


async def test_model_html_and_script_are_shown_as_text(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    provider = ScriptedProvider([Say(HOSTILE)])
    gateway = await start_gateway(nursery, providers={"local": provider})

    def scenario(page: Page) -> None:
        sign_in(page)
        page.get_by_label("Message").fill('<b id="mine">bold?</b>')
        page.get_by_role("button", name="Send").click()
        expect(answer(page)).to_have_text(HOSTILE)
        log = page.locator("#chat-log")
        expect(log.locator(".message.user .text")).to_have_text('<b id="mine">bold?</b>')
        # In the session's transcript too.
        page.get_by_role("link", name="Sessions").click()
        page.locator("#sessions-table tbody tr").first.get_by_role("button", name="Open").click()
        expect(page.locator("#session-transcript .message.assistant .text")).to_have_text(HOSTILE)
        page.wait_for_timeout(300)  # a broken image's onerror would have fired by now
        for root in ("#chat-log", "#session-transcript"):
            assert page.locator(f"{root} img, {root} script, {root} b").count() == 0
        assert page.evaluate("window.__pwned") is None

    await in_browser(gateway.url, tmp_path / "profile", scenario)


async def _serve(port: int, *, task_status: trio.TaskStatus[RunningGateway]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(await start_gateway(nursery, port=port))
        await trio.sleep_forever()


async def test_the_page_reconnects_when_the_gateway_restarts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    served = trio.CancelScope()
    port: list[int] = []

    async def first(*, task_status: trio.TaskStatus[str]) -> None:
        with served:
            async with trio.open_nursery() as inner:
                gateway = await inner.start(_serve, 0)
                port.append(int(gateway.url.rsplit(":", 1)[1]))
                task_status.started(gateway.url)
                await trio.sleep_forever()

    url = await nursery.start(first)

    async def stop() -> None:
        served.cancel(reason="the test restarts the gateway")
        await trio.sleep(0.5)  # the page notices and starts retrying

    async def start_again() -> None:
        await nursery.start(_serve, port[0])

    def scenario(page: Page) -> None:
        sign_in(page)
        page.get_by_role("link", name="Overview").click()
        expect(page.locator("#overview-facts")).to_contain_text("ready")
        on_trio(stop)
        expect(page.locator("#connection")).to_contain_text("reconnecting")
        on_trio(start_again)
        expect(page.locator("#connection")).to_contain_text("Reconnected", timeout=STEP_MS)
        expect(page.locator("#overview-facts")).to_contain_text("Uptime")
        screenshot(page, "overview")
        # Working again: a chat goes through the new process.
        page.get_by_role("link", name="Chat").click()
        page.get_by_label("Message").fill("back again")
        page.get_by_role("button", name="Send").click()
        expect(answer(page)).to_have_text("back again")

    await in_browser(url, tmp_path / "profile", scenario)


async def test_the_page_works_at_360_px_and_from_the_keyboard(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gateway = await start_gateway(nursery)

    def fits(page: Page) -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"{page.url}: {width} px wide"

    def scenario(page: Page) -> None:
        fits(page)
        # The sign-in form has the focus: type the secret, Enter signs in.
        expect(page.locator("#secret")).to_be_focused()
        page.keyboard.type(TOKEN)
        page.keyboard.press("Enter")
        expect(page.locator("#connection")).to_contain_text("Connected")
        page.locator("#chat-input").focus()
        page.keyboard.type("typed at the keyboard")
        page.keyboard.press("Enter")
        expect(answer(page)).to_have_text("typed at the keyboard")
        fits(page)
        screenshot(page, "chat-narrow")
        for name in ("Sessions", "Live runs", "Overview"):
            link = page.get_by_role("link", name=name)
            link.focus()
            page.keyboard.press("Enter")
            expect(link).to_have_attribute("aria-current", "page")
            fits(page)

    await in_browser(gateway.url, tmp_path / "profile", scenario, width=360)
