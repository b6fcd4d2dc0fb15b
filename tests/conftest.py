"""Fixtures for every test module."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def reclaim_client_sockets() -> Iterator[None]:
    """Collect garbage at the end of the test.

    trio-websocket, as a client, leaves the TCP socket of a connection the gateway closed to
    the garbage collector. Collected at an arbitrary later moment, its ResourceWarning would
    fail whichever test happens to run then. Modules whose clients leave such sockets use this
    fixture beside their warning filter, so the sockets are reclaimed (and the warning filtered)
    inside the test that left them.
    """
    yield
    gc.collect()


# --- PostgreSQL -------------------------------------------------------------------------------
#
# Tests that need PostgreSQL take the ``pg_dsn`` fixture: a fresh schema of their own in a
# database made for this test run (dropped at its end). The server is the one at
# $EPILOOP_TEST_POSTGRES (a libpq connection string; default: 127.0.0.1:5432, user postgres).
# Without a reachable server they are skipped with one reason -- unless
# $EPILOOP_REQUIRE_POSTGRES is set (CI sets it), which makes them fail instead.

POSTGRES_ENV = "EPILOOP_TEST_POSTGRES"
REQUIRE_POSTGRES_ENV = "EPILOOP_REQUIRE_POSTGRES"
DEFAULT_TEST_POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The connection string of a database made for this test run, dropped at its end."""
    import os
    import uuid

    psycopg = pytest.importorskip("psycopg")
    from psycopg.conninfo import make_conninfo

    server = os.environ.get(POSTGRES_ENV, DEFAULT_TEST_POSTGRES)
    try:
        admin = psycopg.connect(server, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL is not reachable ({POSTGRES_ENV} or 127.0.0.1:5432): {exc}".strip()
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(f"{reason} -- and {REQUIRE_POSTGRES_ENV} is set", pytrace=False)
        pytest.skip(reason.splitlines()[0])
    name = f"epiloop_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_conninfo(server, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_database: str) -> Iterator[str]:
    """A connection string whose ``search_path`` is a fresh schema of this test's own."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_database, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield make_conninfo(pg_database, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(pg_database, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
