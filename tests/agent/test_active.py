"""What the gateway keeps of finished runs: what ``agent.wait`` needs, bounded."""

from __future__ import annotations

from trio_gateway.agent.active import ActiveRun, ActiveRuns, Retention
from trio_gateway.agent.events import RunResult
from trio_gateway.errors import ProviderError
from trio_gateway.messages import ToolCall
from trio_gateway.providers.base import TokenUsage

MIB = 1024 * 1024


def finished(runs: ActiveRuns, run_id: str, result: RunResult, *, source: str = "ws") -> ActiveRun:
    run = ActiveRun(run_id, "main", f"session-{run_id}", source)
    runs.register(run)
    runs.finish(run, result)
    return run


def completed(text: str, *, reasoning: str = "") -> RunResult:
    return RunResult("completed", text, "stop", TokenUsage(3, 4), reasoning=reasoning)


def test_active_runs_keep_what_agent_wait_needs() -> None:
    runs = ActiveRuns()
    calls = (ToolCall("call_1", "lookup", '{"q": "x"}'),)
    result = RunResult(
        "completed",
        "the answer",
        "tool_calls",
        TokenUsage(3, 4),
        tool_calls=calls,
        reasoning="long thoughts " * 1000,
    )
    run = finished(runs, "r1", result)
    assert run.result is result  # those waiting on the run itself get it whole
    kept = runs.result("r1")
    assert kept is not None
    assert (kept.status, kept.text, kept.finish_reason) == ("completed", "the answer", "tool_calls")
    assert (kept.usage, kept.tool_calls, kept.text_dropped) == (TokenUsage(3, 4), calls, False)
    assert kept.reasoning == ""  # agent.wait does not answer with it


def test_active_runs_keep_no_text_of_runs_started_over_http() -> None:
    runs = ActiveRuns()
    run = finished(runs, "r1", completed("x" * MIB), source="http")
    assert run.result is not None
    assert run.result.text == "x" * MIB
    kept = runs.result("r1")
    assert kept is not None
    assert (kept.status, kept.text, kept.text_dropped) == ("completed", "", True)
    assert kept.usage == TokenUsage(3, 4)
    assert runs.statistics().held_bytes < 1024


def test_active_runs_bound_the_bytes_kept_oldest_first() -> None:
    runs = ActiveRuns(Retention(max_results=1000, max_bytes=MIB, keep_seconds=600))
    for index in range(10):
        finished(runs, f"r{index}", completed(f"{index}" * 300_000))
    kept = runs.statistics()
    assert kept.held_bytes <= MIB
    assert kept.results == 3
    assert runs.result("r0") is None
    newest = runs.result("r9")
    assert newest is not None
    assert newest.text == "9" * 300_000


def test_active_runs_result_over_the_byte_budget_keeps_its_outcome_only() -> None:
    runs = ActiveRuns(Retention(max_results=1000, max_bytes=MIB, keep_seconds=600))
    finished(runs, "small", completed("kept"))
    finished(runs, "huge", completed("x" * (2 * MIB)))
    kept = runs.result("huge")
    assert kept is not None
    assert (kept.status, kept.text, kept.text_dropped) == ("completed", "", True)
    assert runs.result("small") is not None  # it did not have to make room
    assert runs.statistics().held_bytes <= MIB


def test_active_runs_bound_the_count() -> None:
    runs = ActiveRuns(Retention(max_results=3, max_bytes=MIB, keep_seconds=600))
    for index in range(5):
        finished(runs, f"r{index}", completed("a"))
        runs.remember_idempotency_key(f"key-{index}", f"r{index}")
    assert runs.statistics().results == 3
    assert [runs.result(f"r{index}") is not None for index in range(5)] == [False] * 2 + [True] * 3
    assert runs.run_for_idempotency_key("key-0") is None
    assert runs.run_for_idempotency_key("key-4") == "r4"


def test_active_runs_kept_error_holds_no_traceback_or_cause() -> None:
    def fail() -> RunResult:
        text = "y" * MIB  # a local of the failing frame: a kept traceback would keep it alive
        try:
            try:
                raise OSError("connection reset")
            except OSError as exc:
                raise ProviderError("The model provider failed.") from exc
        except ProviderError as error:
            return RunResult("failed", text[:5], None, TokenUsage(), error)

    runs = ActiveRuns()
    result = fail()
    assert result.error is not None
    assert result.error.__traceback__ is not None
    finished(runs, "r1", result)
    kept = runs.result("r1")
    assert kept is not None
    assert kept.error is not None
    assert (kept.error.code, kept.error.message) == ("provider_error", "The model provider failed.")
    assert isinstance(kept.error, ProviderError)
    assert kept.error.__traceback__ is None
    assert kept.error.__cause__ is None
    assert kept.error.__context__ is None
