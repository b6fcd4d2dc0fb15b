"""The agent run, driven directly (the same function every transport calls)."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from gateway_harness import THIRD_PROVIDER_FAILS, make_config, open_test_runtime

from benchmarks.mock_upstream import MockUpstream, Scenario
from benchmarks.scripted_provider import Fail, Hang, Say, ScriptedProvider
from trio_gateway.agent import (
    AgentRuntime,
    PreparedRun,
    RunEvent,
    RunFailed,
    RunFinished,
    RunRequest,
    RunResult,
    RunStarted,
    open_runtime,
)
from trio_gateway.agent.events import ToolStarted
from trio_gateway.config import AuthConfig
from trio_gateway.errors import (
    ConfigError,
    DrainingError,
    InvalidRequestError,
    ProviderError,
    RunTimeoutError,
)
from trio_gateway.messages import ToolCall
from trio_gateway.providers import Completion, Emit, ModelRequest, TextDelta, ToolCallDelta
from trio_gateway.server.chat_routes import run_request
from trio_gateway.wire.chat import ChatRequest

BOUND = 10


def chat(
    *messages: dict[str, Any],
    agent_id: str | None = None,
    session_key: str | None = None,
    **fields: Any,
) -> RunRequest:
    """The run request the chat route makes of an OpenAI body and the gateway's headers."""
    body = msgspec.convert({"messages": list(messages), **fields}, ChatRequest)
    return run_request(body, header_agent_id=agent_id, header_session_key=session_key)


async def admit_and_run(runtime: AgentRuntime, prepared: PreparedRun, emit: Recorder) -> RunResult:
    """Admit the prepared run and run it, as every transport does."""
    with await runtime.admit(prepared) as admitted:
        return await admitted.run(emit)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


class Recorder:
    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    async def __call__(self, event: RunEvent) -> None:
        self.events.append(event)


async def test_runtime_builds_structured_model_input_in_order() -> None:
    provider = ScriptedProvider([Say("ok")])
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        request = chat(
            user("earlier question"),
            {"role": "system", "content": "Answer in French."},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "developer", "content": [{"type": "text", "text": "Be terse."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        )
        prepared = await runtime.prepare(request)
        await admit_and_run(runtime, prepared, Recorder())
        sent = provider.calls[0].request
        assert [(m.role, m.content) for m in sent.messages] == [
            ("system", "You are a helpful assistant."),
            ("system", "Answer in French."),
            ("developer", "Be terse."),
            ("user", "earlier question"),
            ("assistant", "earlier answer"),
            ("user", "a\nb"),
        ]
        assert sent.model == "echo"


async def test_runtime_passes_sampling_options_to_the_provider() -> None:
    provider = ScriptedProvider([])
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        request = chat(
            user("x"), max_tokens=9, max_completion_tokens=7, temperature=0.5, stop="END"
        )
        await admit_and_run(runtime, await runtime.prepare(request), Recorder())
        sent = provider.calls[0].request
        assert (sent.max_tokens, sent.temperature, sent.stop) == (7, 0.5, ("END",))


async def test_runtime_emits_started_deltas_and_finished() -> None:
    provider = ScriptedProvider([Say("a"), Say("b")])
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        recorder = Recorder()
        prepared = await runtime.prepare(chat(user("one two"), agent_id="helper"))
        result = await admit_and_run(runtime, prepared, recorder)
        started, *deltas, finished = recorder.events
        assert isinstance(started, RunStarted)
        assert (started.run_id, started.agent_id, started.model) == (
            prepared.run_id,
            "helper",
            "local/echo",
        )
        assert deltas == [TextDelta("a"), TextDelta("b")]
        assert isinstance(finished, RunFinished)
        assert finished.finish_reason == "stop"
        assert (result.status, result.text, result.finish_reason) == ("completed", "ab", "stop")
        assert result.usage.completion_tokens == 2


async def test_runtime_failure_emits_run_failed_and_returns_the_error() -> None:
    error = ProviderError("nope")
    provider = ScriptedProvider([Say("x"), Fail(error)])
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        recorder = Recorder()
        result = await admit_and_run(runtime, await runtime.prepare(chat(user("q"))), recorder)
        assert recorder.events[-1] == RunFailed(error)
        assert (result.status, result.text, result.error) == ("failed", "x", error)


async def test_runtime_deadline_becomes_run_timeout_error(autojump_clock: trio.abc.Clock) -> None:
    provider = ScriptedProvider([Hang()])
    config = make_config({"agents": {"defaults": {"timeoutSeconds": 42}}})
    async with open_test_runtime(config, providers={"local": provider}) as runtime:
        start = trio.current_time()
        result = await admit_and_run(runtime, await runtime.prepare(chat(user("q"))), Recorder())
        assert isinstance(result.error, RunTimeoutError)
        assert trio.current_time() - start == pytest.approx(42)
        assert provider.calls[0].outcome == "cancelled"


async def test_runtime_stateless_request_leaves_no_session() -> None:
    async with open_test_runtime(make_config()) as runtime:
        prepared = await runtime.prepare(chat(user("q")))
        assert prepared.target.stateless
        await admit_and_run(runtime, prepared, Recorder())
        assert await runtime.sessions.get(prepared.target.session_key) is None


async def test_runtime_user_session_records_each_turn_without_duplicates() -> None:
    async with open_test_runtime(make_config()) as runtime:
        first = await runtime.prepare(chat(user("hello there"), user="alice@example.com"))
        await admit_and_run(runtime, first, Recorder())
        second = await runtime.prepare(
            chat(
                {"role": "system", "content": "sys"},
                user("hello there"),
                {"role": "assistant", "content": "hello there"},
                user("again"),
                user="alice@example.com",
            )
        )
        assert second.target.session_key == first.target.session_key
        await admit_and_run(runtime, second, Recorder())
        session = await runtime.sessions.get(first.target.session_key)
        assert session is not None
        assert [(e.role, e.content) for e in session.transcript] == [
            ("user", "hello there"),
            ("assistant", "hello there"),
            ("user", "again"),
            ("assistant", "again"),
        ]
        assert session.agent_id == "main"
        assert session.completion_tokens == 3


async def test_runtime_failed_turn_is_recorded_as_failed() -> None:
    provider = ScriptedProvider([Say("par"), Fail(ProviderError("x"))])
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        prepared = await runtime.prepare(chat(user("q"), session_key="s-1"))
        await admit_and_run(runtime, prepared, Recorder())
        session = await runtime.sessions.get("s-1")
        assert session is not None
        assert session.last_status == "failed"
        assert session.transcript[-1].content == "par"
        assert session.transcript[-1].status == "failed"


async def test_runtime_cancelled_turn_is_recorded_as_aborted() -> None:
    provider = ScriptedProvider([Say("so far"), Hang()])
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        prepared = await runtime.prepare(chat(user("q"), session_key="s-2"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(admit_and_run, runtime, prepared, Recorder())
            await provider.call_started.wait()
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        session = await runtime.sessions.get("s-2")
        assert session is not None
        assert session.last_status == "aborted"
        assert (session.transcript[-1].content, session.transcript[-1].status) == (
            "so far",
            "aborted",
        )
        assert provider.calls[0].outcome == "cancelled"


async def test_runtime_session_key_of_another_agent_is_refused() -> None:
    async with open_test_runtime(make_config()) as runtime:
        await admit_and_run(
            runtime, await runtime.prepare(chat(user("q"), session_key="k")), Recorder()
        )
        with pytest.raises(InvalidRequestError) as caught:
            await runtime.prepare(chat(user("q"), session_key="k", agent_id="helper"))
        assert caught.value.code == "session_agent_mismatch"


async def test_runtime_agent_model_and_system_prompt_fall_back_to_defaults() -> None:
    provider = ScriptedProvider([])
    config = make_config(
        {
            "models": {"providers": {"other": {"api": "echo"}}},
            "agents": {
                "defaults": {"model": "other/big", "systemPrompt": "Default prompt."},
                "list": [{"id": "bare"}, {"id": "own", "model": "local/small"}],
            },
        }
    )
    async with open_test_runtime(
        config, providers={"local": provider, "other": provider}
    ) as runtime:
        bare = await runtime.prepare(chat(user("x")))
        assert bare.model_ref == "other/big"
        assert [link.model for link in bare.chain] == ["big"]
        assert bare.instructions[0].content == "Default prompt."
        own = await runtime.prepare(chat(user("x"), agent_id="own"))
        assert own.model_ref == "local/small"


def test_close_tool_calls_answers_calls_left_open() -> None:
    from trio_gateway.agent.prompt import close_tool_calls
    from trio_gateway.messages import Message, ToolCall

    call_a, call_b = ToolCall("a", "f", "{}"), ToolCall("b", "g", "{}")
    messages = [
        Message("user", "q"),
        Message("assistant", "", tool_calls=(call_a, call_b)),
        Message("tool", "ok", tool_call_id="a"),
        Message("user", "never mind"),
    ]
    closed = close_tool_calls(messages)
    assert [(m.role, m.tool_call_id) for m in closed] == [
        ("user", None),
        ("assistant", None),
        ("tool", "a"),
        ("tool", "b"),
        ("user", None),
    ]
    assert closed[3].content.startswith("Error:")
    assert close_tool_calls(closed) == closed


class ToolCallingProvider:
    """Calls ``name`` on its first call, streaming the call's id before its name (as some
    OpenAI-compatible servers do); answers with text once it sees a tool result."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        self.calls += 1
        if request.messages[-1].role == "tool":
            await emit(TextDelta("done"))
            return Completion("stop")
        await emit(ToolCallDelta(0, id="call_1"))
        await emit(ToolCallDelta(0, name=self.name, arguments='{"a"'))
        await emit(ToolCallDelta(0, arguments=": 1}"))
        return Completion("tool_calls", tool_calls=(ToolCall("call_1", self.name, '{"a": 1}'),))


async def test_runtime_client_tool_call_deltas_keep_an_id_sent_before_the_name() -> None:
    provider = ToolCallingProvider("lookup")
    async with open_test_runtime(make_config(), providers={"local": provider}) as runtime:
        tools = [{"type": "function", "function": {"name": "lookup"}}]
        recorder = Recorder()
        result = await admit_and_run(
            runtime, await runtime.prepare(chat(user("q"), tools=tools)), recorder
        )
        deltas = [e for e in recorder.events if isinstance(e, ToolCallDelta)]
        assert deltas[0] == ToolCallDelta(0, "call_1", "lookup", '{"a"')
        assert "".join(d.arguments for d in deltas) == '{"a": 1}'
        assert result.finish_reason == "tool_calls"


async def test_runtime_last_tool_round_does_not_run_tools(tmp_path: Path) -> None:
    provider = ToolCallingProvider("current_time")
    config = make_config({"agents": {"defaults": {"maxToolIterations": 1}}})
    async with open_test_runtime(
        config, providers={"local": provider}, state_dir=tmp_path
    ) as runtime:
        recorder = Recorder()
        result = await admit_and_run(runtime, await runtime.prepare(chat(user("q"))), recorder)
        assert result.error is not None
        assert result.error.code == "max_tool_iterations"
        assert not any(isinstance(e, ToolStarted) for e in recorder.events)
        assert provider.calls == 1


def test_history_messages_do_not_repeat_text_said_before_tool_calls() -> None:
    from trio_gateway.agent.loop import history_messages
    from trio_gateway.sessions import TranscriptEntry

    call = ToolCall("c1", "current_time", "{}")
    transcript = [
        TranscriptEntry("user", "what time is it?"),
        TranscriptEntry("assistant", "Let me check. ", tool_calls=(call,), internal=True),
        TranscriptEntry("tool", "noon", tool_call_id="c1", internal=True),
        TranscriptEntry("assistant", "Let me check. It is noon."),
        TranscriptEntry("user", "thanks"),
        TranscriptEntry("assistant", "Let me check. You are welcome."),  # not after tools
    ]
    assert [m.content for m in history_messages(transcript)] == [
        "what time is it?",
        "Let me check. ",
        "noon",
        "It is noon.",
        "thanks",
        "Let me check. You are welcome.",
    ]


async def test_runtime_reload_closes_replaced_providers_once_their_runs_end(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = MockUpstream({"default": Scenario(tokens=["a", "b", "c"], pace=0.02)})
    await nursery.start(upstream.serve)
    provider = {"api": "openai-chat", "baseUrl": upstream.openai_base_url, "apiKey": "k"}
    config = make_config(
        {
            "models": {"providers": {"up": provider}},
            "agents": {"defaults": {"model": "up/m"}},
            "session": {"store": "memory"},
        }
    )

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def run_one(runtime: AgentRuntime, prepared: PreparedRun, results: list[str]) -> None:
        with await runtime.admit(prepared) as admitted:
            results.append((await admitted.run(Recorder())).text)

    async with open_runtime(config, state_dir=tmp_path) as runtime:
        warm: list[str] = []
        await run_one(runtime, await runtime.prepare(chat(user("q"))), warm)
        fds_before = open_fds()
        results: list[str] = []
        replaced = []
        for _ in range(30):
            prepared = await runtime.prepare(chat(user("q")))
            assert prepared.lease is not None
            requests = len(upstream.requests)
            async with trio.open_nursery() as runs:
                runs.start_soon(run_one, runtime, prepared, results)
                with trio.fail_after(BOUND):
                    while len(upstream.requests) == requests:
                        await trio.sleep(0.005)
                runtime.reload(config)  # replaces the providers this run is using
                provider_set = prepared.lease.provider_set
                replaced.append(provider_set)
                assert provider_set.retired
                assert not provider_set.closed  # its run is still streaming
        assert results == ["abc"] * 30  # no run lost its providers under it
        with trio.fail_after(BOUND):
            while upstream.open_connections > 1:  # the current providers' pooled connection
                await trio.sleep(0.01)
        assert all(provider_set.closed for provider_set in replaced)
        assert open_fds() <= fds_before


async def test_runtime_refused_admission_releases_the_providers_at_once() -> None:
    async with open_test_runtime(
        make_config()
    ) as runtime:  # it built its providers: it closes them
        prepared = await runtime.prepare(chat(user("q")))
        assert prepared.lease is not None
        runtime.reload(make_config())
        provider_set = prepared.lease.provider_set
        assert provider_set.retired
        assert provider_set.users == 1  # the prepared run may still start
        runtime.begin_draining()
        with pytest.raises(DrainingError):
            await runtime.admit(prepared)
        assert provider_set.users == 0
        assert provider_set.closed


async def test_runtime_runs_only_what_it_admitted() -> None:
    async with open_test_runtime(make_config()) as runtime:
        assert not hasattr(runtime, "run")  # the admitted run is the only way to start one
        prepared = await runtime.prepare(chat(user("q"), session_key="once"))
        with await runtime.admit(prepared) as admitted:
            assert runtime.admission.statistics().running == 1
            result = await admitted.run(Recorder())
            with pytest.raises(RuntimeError):
                await admitted.run(Recorder())
        assert result.status == "completed"
        assert runtime.admission.statistics().running == 0


async def test_runtime_background_tasks_end_with_the_runtime() -> None:
    ended = trio.Event()

    async def detached() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    async with open_test_runtime(make_config()) as runtime:
        runtime.start_background(detached)
        await trio.testing.wait_all_tasks_blocked()
        assert not ended.is_set()
    assert ended.is_set()


async def test_runtime_file_auth_reads_the_file_off_the_event_loop(tmp_path: Path) -> None:
    """The config file is read in a worker thread: while its read blocks (a named pipe whose
    writer is late), the event loop goes on running."""
    path = tmp_path / "epiloop.json5"
    os.mkfifo(path)
    late = 0.5
    text = b'{ gateway: { auth: { token: "from-the-file-0123" } } }'

    def write_late() -> None:
        time.sleep(late)
        deadline = time.monotonic() + 5
        while True:  # the pipe opens for writing once a reader has it open
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(text)

    writer = threading.Thread(target=write_late)
    writer.start()
    try:
        with trio.fail_after(10):
            async with open_test_runtime(make_config(), config_path=path) as runtime:
                ticks: list[float] = []
                read: list[object] = []

                async def tick() -> None:
                    while True:
                        ticks.append(trio.current_time())
                        await trio.sleep(0.01)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(tick)
                    await trio.sleep(0.02)
                    read.append(await runtime.file_auth())
                    await trio.sleep(0.05)  # a tick after the read shows any stall
                    nursery.cancel_scope.cancel(reason="the file was read")
    finally:
        writer.join(10)
    auth = read[0]
    assert isinstance(auth, AuthConfig)
    assert auth.token == "from-the-file-0123"
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert max(gaps) < late / 2, "the event loop stalled while the config file was read"
    assert ticks[-1] - ticks[0] >= late * 0.8  # the read took about as long as the writer


def closed_providers(caplog: pytest.LogCaptureFixture) -> set[str]:
    prefix = "provider.close.complete provider="
    return {
        record.getMessage().removeprefix(prefix)
        for record in caplog.records
        if record.getMessage().startswith(prefix)
    }


async def test_open_runtime_closes_the_providers_built_before_one_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_gateway.providers.registry")
    with trio.fail_after(10), pytest.raises(ConfigError, match="provider 'c'"):
        async with open_test_runtime(make_config(THIRD_PROVIDER_FAILS)):
            raise AssertionError("the runtime opened")
    assert closed_providers(caplog) == {"a", "b"}


async def test_runtime_reload_closes_the_providers_it_built_when_one_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_gateway.providers.registry")
    async with open_test_runtime(make_config()) as runtime:
        running = runtime.config
        with pytest.raises(ConfigError, match="provider 'c'"):
            runtime.reload(make_config(THIRD_PROVIDER_FAILS))
        assert runtime.config is running
        with trio.fail_after(10):
            while closed_providers(caplog) != {"a", "b"}:
                await trio.sleep(0.01)
