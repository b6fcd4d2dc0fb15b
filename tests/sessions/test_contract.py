"""The session store contract, written once and run against every store.

The ``store`` fixture opens each kind through ``open_session_store`` (``memory``, ``sqlite`` and
``postgres``, the last in a fresh schema of its own), so the memory store is the reference and
the durable stores must match it exactly. What only one store has (SQLite's file, PostgreSQL's
fencing and connections) is tested beside it, in ``test_sqlite.py`` and ``test_postgres.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from image_samples import image, png

from trio_gateway.config.schema import PostgresConfig, SessionConfig
from trio_gateway.messages import Image, ToolCall
from trio_gateway.sessions import MemorySessionStore, SqliteSessionStore, open_session_store
from trio_gateway.sessions.postgres import PostgresSessionStore
from trio_gateway.sessions.store import (
    LoggedEvent,
    RunStatus,
    SessionInfo,
    SessionStore,
    StoredResponse,
    StoredResponseStatus,
    TranscriptEntry,
    Turn,
)

STORES = ["memory", "sqlite", "postgres"]

_run_ids = itertools.count(1)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    config = SessionConfig(store=request.param)
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        config = SessionConfig(store="postgres", postgres=PostgresConfig(dsn=dsn, pool_size=4))
    async with open_session_store(config, tmp_path) as opened:
        yield opened


def user(text: str) -> TranscriptEntry:
    return TranscriptEntry("user", text)


def reply(text: str, status: RunStatus = "completed") -> TranscriptEntry:
    return TranscriptEntry("assistant", text, status)


def turn(
    *entries: TranscriptEntry,
    run_id: str | None = None,
    agent_id: str = "main",
    model: str = "local/echo",
    status: RunStatus = "completed",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    at: float = 1000.0,
    keep: int | None = None,
) -> Turn:
    return Turn(
        run_id=f"auto-{next(_run_ids)}" if run_id is None else run_id,
        agent_id=agent_id,
        model=model,
        entries=entries,
        status=status,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        at=at,
        keep=keep,
    )


async def contents(store: SessionStore, key: str) -> list[str]:
    session = await store.get(key)
    assert session is not None
    return [entry.content for entry in session.transcript]


async def test_open_session_store_opens_the_configured_kind(tmp_path: Path) -> None:
    async with open_session_store(SessionConfig(store="memory"), tmp_path) as memory:
        assert isinstance(memory, MemorySessionStore)
    async with open_session_store(SessionConfig(), tmp_path) as default:
        assert isinstance(default, SqliteSessionStore)
        assert default.path == tmp_path / "sessions.sqlite"
    assert (tmp_path / "sessions.sqlite").is_file()


async def test_open_session_store_uses_the_configured_path(tmp_path: Path) -> None:
    config = SessionConfig(store="sqlite", path=str(tmp_path / "elsewhere" / "s.db"))
    async with open_session_store(config, tmp_path / "state") as opened:
        assert isinstance(opened, SqliteSessionStore)
        assert opened.path == tmp_path / "elsewhere" / "s.db"
    assert not (tmp_path / "state" / "sessions.sqlite").exists()


async def test_store_get_of_an_unknown_key_is_none(store: SessionStore) -> None:
    assert await store.get("nobody") is None


async def test_store_record_turn_creates_the_session(store: SessionStore) -> None:
    info = await store.record_turn("k", turn(user("hi"), reply("hello"), run_id="run-1", at=1234.5))
    assert info.key == "k"
    assert info.agent_id == "main"
    assert info.created_at == info.updated_at == 1234.5
    assert (info.model, info.last_status, info.last_run_id) == ("local/echo", "completed", "run-1")
    assert (info.prompt_tokens, info.completion_tokens, info.message_count) == (10, 5, 2)
    session = await store.get("k")
    assert session is not None
    assert session.transcript == [user("hi"), reply("hello")]
    assert session.message_count == 2
    assert session.prompt_tokens == 10


async def test_store_record_turn_appends_and_adds_up_totals(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("one"), reply("1"), at=1.0))
    info = await store.record_turn(
        "k",
        turn(
            user("two"),
            reply("2, cut", "aborted"),
            run_id="run-2",
            agent_id="OTHER",
            model="local/other",
            status="aborted",
            prompt_tokens=7,
            completion_tokens=3,
            at=2.0,
        ),
    )
    # The creating agent and creation time stay; the rest follows the latest turn.
    assert (info.agent_id, info.created_at, info.updated_at) == ("main", 1.0, 2.0)
    assert (info.model, info.last_status, info.last_run_id) == ("local/other", "aborted", "run-2")
    assert (info.prompt_tokens, info.completion_tokens, info.message_count) == (17, 8, 4)
    session = await store.get("k")
    assert session is not None
    assert session.transcript == [user("one"), reply("1"), user("two"), reply("2, cut", "aborted")]


async def test_store_record_turn_with_keep_truncates_first(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a"), reply("A"), user("b"), reply("B")))
    info = await store.record_turn("k", turn(user("b2"), reply("B2"), keep=2))
    assert info.message_count == 4
    assert await contents(store, "k") == ["a", "A", "b2", "B2"]
    await store.record_turn("k", turn(user("fresh"), keep=0))
    assert await contents(store, "k") == ["fresh"]


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (None, ["a", "b", "c", "new"]),
        (3, ["a", "b", "c", "new"]),
        (99, ["a", "b", "c", "new"]),
        (1, ["a", "new"]),
        (-1, ["a", "b", "new"]),
        (-99, ["new"]),
    ],
)
async def test_store_keep_has_slice_bounds(
    store: SessionStore, keep: int | None, expected: list[str]
) -> None:
    await store.record_turn("k", turn(user("a"), user("b"), user("c")))
    info = await store.record_turn("k", turn(user("new"), keep=keep))
    assert await contents(store, "k") == expected
    assert info.message_count == len(expected)


async def test_store_keep_on_a_new_session_is_harmless(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a"), keep=0))
    assert await contents(store, "k") == ["a"]


async def test_store_turn_without_entries_updates_the_session(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a"), at=1.0))
    info = await store.record_turn("k", turn(run_id="run-2", status="failed", at=2.0))
    assert (info.message_count, info.last_status, info.updated_at) == (1, "failed", 2.0)


async def test_store_round_trips_every_entry_field(store: SessionStore) -> None:
    calls = (
        ToolCall("call_1", "http_fetch", '{"url": "https://example.com"}'),
        ToolCall("call_2", "exec", '{"cmd": "ls -l"}'),
    )
    entries = (
        TranscriptEntry("user", "look it up", name="alice"),
        TranscriptEntry("assistant", "", tool_calls=calls, internal=True),
        TranscriptEntry("tool", "<html>", tool_call_id="call_1", name="http_fetch", internal=True),
        TranscriptEntry("tool", "total 0", tool_call_id="call_2", internal=True),
        TranscriptEntry("assistant", "Found it", "failed"),
        TranscriptEntry("assistant", "", tool_calls=(ToolCall("c", "client_tool", "{}"),)),
        TranscriptEntry("tool", "client result", tool_call_id="c"),
    )
    await store.record_turn("k", turn(*entries))
    session = await store.get("k")
    assert session is not None
    assert session.transcript == list(entries)
    assert [entry.to_message() for entry in session.transcript] == [
        entry.to_message() for entry in entries
    ]


@pytest.mark.parametrize(
    "text",
    ["", "plain", "emoji 🎉 and accents éà", "NUL \x00 inside", "lone surrogate \udcff", "\ud800"],
)
async def test_store_keeps_any_text_exactly(store: SessionStore, text: str) -> None:
    calls = (ToolCall(f"id{text}", f"name{text}", f'{{"q": "{text}"}}'),)
    entries = (
        TranscriptEntry("user", text, name=text),
        TranscriptEntry("assistant", text, tool_calls=calls),
        TranscriptEntry("tool", text, tool_call_id=text),
    )
    await store.record_turn("k", turn(*entries, model=f"m{text}", run_id=f"r{text}"))
    session = await store.get("k")
    assert session is not None
    assert session.transcript == list(entries)
    assert (session.model, session.last_run_id) == (f"m{text}", f"r{text}")


async def test_store_get_returns_a_copy(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a")))
    session = await store.get("k")
    assert session is not None
    session.transcript.append(user("mutated"))
    session.prompt_tokens = 999
    again = await store.get("k")
    assert again is not None
    assert (again.transcript, again.prompt_tokens) == ([user("a")], 10)


async def test_store_list_sessions_most_recent_first(store: SessionStore) -> None:
    assert await store.list_sessions() == []
    await store.record_turn("old", turn(user("a"), at=1.0))
    await store.record_turn("new", turn(user("b"), at=3.0))
    await store.record_turn("middle", turn(user("c"), at=2.0))
    listed = await store.list_sessions()
    assert [info.key for info in listed] == ["new", "middle", "old"]
    assert type(listed[0]) is SessionInfo  # not a Session, with its transcript
    await store.record_turn("old", turn(user("d"), at=4.0))
    assert [info.key for info in await store.list_sessions()] == ["old", "new", "middle"]
    assert [info.key for info in await store.list_sessions(limit=2)] == ["old", "new"]
    assert await store.list_sessions(limit=0) == []


async def test_store_list_sessions_ties_in_creation_order(store: SessionStore) -> None:
    for key in ("b", "a", "c"):
        await store.record_turn(key, turn(user(key), at=5.0))
    assert [info.key for info in await store.list_sessions()] == ["b", "a", "c"]
    # Updating keeps a session's place among equals; deleting and re-creating moves it last.
    await store.record_turn("b", turn(user("b2"), at=5.0))
    await store.delete("a")
    await store.record_turn("a", turn(user("a2"), at=5.0))
    assert [info.key for info in await store.list_sessions()] == ["b", "c", "a"]


async def test_store_list_sessions_filters_by_agent_ignoring_case(store: SessionStore) -> None:
    await store.record_turn("m1", turn(user("a"), agent_id="Main", at=1.0))
    await store.record_turn("h1", turn(user("b"), agent_id="helper", at=2.0))
    await store.record_turn("m2", turn(user("c"), agent_id="main", at=3.0))
    assert [info.key for info in await store.list_sessions(agent_id="MAIN")] == ["m2", "m1"]
    assert [info.key for info in await store.list_sessions(agent_id="helper")] == ["h1"]
    assert await store.list_sessions(agent_id="nobody") == []
    assert [info.key for info in await store.list_sessions(agent_id="main", limit=1)] == ["m2"]


async def test_store_list_sessions_reports_what_record_turn_returned(store: SessionStore) -> None:
    first = await store.record_turn("k", turn(user("a"), reply("b"), at=1.0))
    second = await store.record_turn("j", turn(user("c"), at=2.0, prompt_tokens=1))
    assert await store.list_sessions() == [second, first]


async def test_store_reset_clears_transcript_and_totals(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a"), reply("b"), run_id="run-1", at=1.0))
    await store.record_turn("other", turn(user("x"), at=2.0))
    assert await store.reset("k") is True
    session = await store.get("k")
    assert session is not None
    assert (session.transcript, session.message_count) == ([], 0)
    assert (session.prompt_tokens, session.completion_tokens) == (0, 0)
    # The session itself stays, as it was.
    assert (session.agent_id, session.created_at, session.updated_at) == ("main", 1.0, 1.0)
    assert (session.last_status, session.last_run_id) == ("completed", "run-1")
    assert [info.key for info in await store.list_sessions()] == ["other", "k"]
    assert await contents(store, "other") == ["x"]
    info = await store.record_turn("k", turn(user("again"), at=3.0))
    assert (info.message_count, info.prompt_tokens) == (1, 10)
    assert await contents(store, "k") == ["again"]


async def test_store_reset_of_an_unknown_key_is_false(store: SessionStore) -> None:
    assert await store.reset("nobody") is False
    assert await store.get("nobody") is None


async def test_store_delete_removes_the_session(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a"), reply("b")))
    await store.record_turn("other", turn(user("x")))
    assert await store.delete("k") is True
    assert await store.get("k") is None
    assert [info.key for info in await store.list_sessions()] == ["other"]
    assert await store.delete("k") is False
    # A new session under the same key starts from nothing.
    info = await store.record_turn("k", turn(user("new"), at=9.0))
    assert (info.message_count, info.prompt_tokens, info.created_at) == (1, 10, 9.0)
    assert await contents(store, "k") == ["new"]


async def test_store_keys_are_independent(store: SessionStore) -> None:
    await store.record_turn("a", turn(user("for a")))
    await store.record_turn("b", turn(user("for b"), keep=0))
    await store.record_turn("A", turn(user("for A")))
    assert await contents(store, "a") == ["for a"]
    assert await contents(store, "b") == ["for b"]
    assert await contents(store, "A") == ["for A"]


async def test_store_aclose_is_idempotent(store: SessionStore) -> None:
    await store.aclose()
    await store.aclose()


async def test_store_records_a_run_once(store: SessionStore) -> None:
    first = await store.record_turn("k", turn(user("a"), reply("A"), run_id="run-a", at=1.0))
    # The same run's turn again (a retried write): nothing changes, the session comes back.
    again = await store.record_turn("k", turn(user("a"), reply("A"), run_id="run-a", at=1.5))
    assert again == first
    await store.record_turn("k", turn(user("b"), run_id="run-b", at=2.0))
    late = await store.record_turn("k", turn(user("a"), run_id="run-a", at=3.0, keep=0))
    assert (late.last_run_id, late.updated_at, late.message_count) == ("run-b", 2.0, 3)
    assert await contents(store, "k") == ["a", "A", "b"]
    # Another session may hold a turn of the same run id.
    assert (await store.record_turn("j", turn(user("j"), run_id="run-a"))).message_count == 1
    # A reset keeps the memory of the runs stored; a delete forgets it with the session.
    await store.reset("k")
    assert (await store.record_turn("k", turn(user("x"), run_id="run-b"))).message_count == 0
    await store.delete("k")
    assert (await store.record_turn("k", turn(user("y"), run_id="run-b"))).message_count == 1
    assert await contents(store, "k") == ["y"]


async def test_store_concurrent_turns_each_land_whole(store: SessionStore) -> None:
    tasks = 20

    async def one_turn(index: int) -> None:
        entries = (user(f"q{index}"), reply(f"a{index}"))
        await store.record_turn("shared", turn(*entries, run_id=f"run-{index}"))
        await store.record_turn(f"own-{index}", turn(*entries, keep=0))
        assert await store.get(f"own-{index}") is not None

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(one_turn, index)
    shared = await store.get("shared")
    assert shared is not None
    assert (shared.message_count, shared.prompt_tokens) == (2 * tasks, 10 * tasks)
    texts = [entry.content for entry in shared.transcript]
    pairs = list(zip(texts[::2], texts[1::2], strict=True))
    assert all(question[1:] == answer[1:] for question, answer in pairs)
    assert sorted(int(question[1:]) for question, _ in pairs) == list(range(tasks))
    assert len(await store.list_sessions(limit=1000)) == tasks + 1


async def test_store_probe_reads_and_writes_and_leaves_nothing(store: SessionStore) -> None:
    await store.record_turn("k", turn(user("a"), user("b"), at=1.0))
    before = await store.list_sessions()
    await store.probe()
    assert store.health() is None
    assert await store.list_sessions() == before
    await store.record_turn("j", turn(user("c"), at=0.5))
    assert [info.key for info in await store.list_sessions()] == ["k", "j"]


# --- stored responses -------------------------------------------------------------------------


def stored(
    response_id: str = "resp_1",
    *,
    status: StoredResponseStatus = "in_progress",
    body: bytes = b'{"status":"in_progress"}',
    expires_at: float | None = None,
    instance_id: str = "host-1",
    session_position: int | None = None,
    truncated: bool = False,
) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        kind="response",
        agent_id="main",
        run_id="chatcmpl-1",
        status=status,
        instance_id=instance_id,
        created_at=1000.5,
        body=body,
        input=b'[{"role":"user","content":"hi"}]',
        session_key="agent:main:run:abc",
        session_position=session_position,
        ended_at=None if expires_at is None else expires_at - 600,
        expires_at=expires_at,
        event_count=3,
        events_truncated=truncated,
    )


def events(*numbers: int) -> list[LoggedEvent]:
    return [LoggedEvent(n, b'event: x\ndata: {"n":%d}\n\n' % n) for n in numbers]


async def test_store_saves_and_gets_a_response(store: SessionStore) -> None:
    assert await store.get_response("resp_1") is None
    record = stored(session_position=4, truncated=True, expires_at=2000.25)
    await store.save_response(record)
    assert await store.get_response("resp_1") == record


async def test_store_appends_response_events_in_batches_and_reads_after_n(
    store: SessionStore,
) -> None:
    await store.save_response(stored(), events(0, 1, 2))
    await store.save_response(stored(status="completed", body=b"{}"), events(3, 4))
    assert await store.response_events("resp_1", after=-1, limit=100) == events(0, 1, 2, 3, 4)
    assert await store.response_events("resp_1", after=1, limit=2) == events(2, 3)
    assert await store.response_events("resp_1", after=4, limit=100) == []
    assert await store.response_events("resp_other", after=-1, limit=100) == []
    again = await store.get_response("resp_1")
    assert again is not None
    assert (again.status, again.body) == ("completed", b"{}")


async def test_store_ignores_a_retried_batch_of_response_events(store: SessionStore) -> None:
    await store.save_response(stored(), events(0, 1))
    await store.save_response(stored(), [LoggedEvent(1, b"other"), *events(2)])
    assert await store.response_events("resp_1", after=-1, limit=100) == events(0, 1, 2)


async def test_store_deletes_a_response_with_its_events(store: SessionStore) -> None:
    await store.save_response(stored(), events(0, 1))
    await store.save_response(stored("resp_2"), events(0))
    assert await store.delete_response("resp_1") is True
    assert await store.delete_response("resp_1") is False
    assert await store.get_response("resp_1") is None
    assert await store.response_events("resp_1", after=-1, limit=100) == []
    assert await store.response_events("resp_2", after=-1, limit=100) == events(0)


async def test_store_sweeps_expired_responses_only(store: SessionStore) -> None:
    await store.save_response(stored("resp_old", status="completed", expires_at=1500.0), events(0))
    await store.save_response(stored("resp_new", status="completed", expires_at=2500.0))
    await store.save_response(stored("resp_live"))
    assert await store.sweep_responses(2000.0) == 1
    assert await store.get_response("resp_old") is None
    assert await store.response_events("resp_old", after=-1, limit=100) == []
    assert await store.get_response("resp_new") is not None
    assert await store.get_response("resp_live") is not None
    assert await store.sweep_responses(2000.0) == 0


async def test_store_lists_unfinished_responses(store: SessionStore) -> None:
    await store.save_response(stored("resp_a", status="queued"))
    await store.save_response(stored("resp_b"))
    await store.save_response(stored("resp_c", status="completed", expires_at=9e9))
    await store.save_response(stored("resp_d", status="cancelled", expires_at=9e9))
    unfinished = await store.unfinished_responses()
    assert sorted(response.id for response in unfinished) == ["resp_a", "resp_b"]


# -- images --------------------------------------------------------------------------------


async def stored_images(store: SessionStore) -> dict[str, int]:
    """What the store keeps of images, read from its storage: SHA-256 → size, one per image."""
    if isinstance(store, MemorySessionStore):
        return {sha: image.size for sha, image in store.images.items()}
    if isinstance(store, SqliteSessionStore):
        connection = sqlite3.connect(store.path)
        try:
            rows = connection.execute("SELECT sha256, length(data) FROM images").fetchall()
        finally:
            connection.close()
        return {str(sha): int(size) for sha, size in rows}
    assert isinstance(store, PostgresSessionStore)
    rows = await store.database.run(
        lambda c: c.execute("SELECT sha256, length(data) FROM epiloop_images").fetchall()
    )
    return {str(sha): int(size) for sha, size in rows}


def with_images(text: str, *images: Image) -> TranscriptEntry:
    return TranscriptEntry("user", text, images=images)


async def test_store_round_trips_images_with_their_bytes(store: SessionStore) -> None:
    first, second = image(png(1)), image(png(2, pad=5000))
    remote = Image(url="https://images.example/cat.png", detail="low")
    entries = (
        with_images("two and a url", first, remote, dataclasses.replace(second, detail="high")),
        reply("seen"),
    )
    await store.record_turn("k", turn(*entries))
    session = await store.get("k")
    assert session is not None
    assert session.transcript == list(entries)
    got = session.transcript[0].images
    assert [i.data for i in got] == [first.data, None, second.data]
    assert [i.media_type for i in got] == ["image/png", "", "image/png"]
    assert [i.detail for i in got] == [None, "low", "high"]


async def test_store_keeps_an_image_once_however_often_it_is_sent(store: SessionStore) -> None:
    picture = image(png(7, pad=3000))
    await store.record_turn("k", turn(with_images("look", picture), reply("a cat")))
    await store.record_turn("k", turn(with_images("again", picture, picture), reply("same")))
    await store.record_turn("other", turn(with_images("mine too", picture)))
    assert await stored_images(store) == {picture.sha256: len(png(7, pad=3000))}
    session = await store.get("k")
    assert session is not None
    assert [len(e.images) for e in session.transcript] == [1, 0, 2, 0]
    assert all(i.data == picture.data for e in session.transcript for i in e.images)


async def test_store_delete_removes_the_images_no_other_session_holds(
    store: SessionStore,
) -> None:
    shared, own, kept = image(png(1)), image(png(2)), image(png(3))
    await store.record_turn("k", turn(with_images("a", shared, own), reply("b")))
    await store.record_turn("j", turn(with_images("c", shared, kept)))
    assert set(await stored_images(store)) == {shared.sha256, own.sha256, kept.sha256}
    assert await store.delete("k") is True
    assert set(await stored_images(store)) == {shared.sha256, kept.sha256}
    session = await store.get("j")
    assert session is not None
    assert [i.data for i in session.transcript[0].images] == [shared.data, kept.data]
    assert await store.delete("j") is True
    assert await stored_images(store) == {}


async def test_store_reset_and_truncation_let_go_of_images(store: SessionStore) -> None:
    first, second = image(png(1)), image(png(2))
    await store.record_turn("k", turn(with_images("a", first), reply("A")))
    await store.record_turn("k", turn(with_images("b", second), reply("B")))
    # The client edited its second message: the turn keeps the first two entries only.
    await store.record_turn("k", turn(user("b, edited"), keep=2))
    assert set(await stored_images(store)) == {first.sha256}
    assert await contents(store, "k") == ["a", "A", "b, edited"]
    await store.reset("k")
    assert await stored_images(store) == {}


async def test_store_failed_turn_stores_no_image(store: SessionStore) -> None:
    picture = image(png(9))
    await store.record_turn("k", turn(user("a"), run_id="r1"))
    # The same run again carries an image: the turn is not stored again, nor is its image.
    await store.record_turn("k", turn(with_images("b", picture), run_id="r1"))
    assert await stored_images(store) == {}
