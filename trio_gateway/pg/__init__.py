"""PostgreSQL, the scale-out mode's shared state: the connection pool driven from trio, the
schema's migrations, and the dedicated connection that LISTENs.

An I/O edge: imports psycopg and ``errors`` only; the session store (``sessions.postgres``) and
the cluster coordination (``cluster``) build on it.
"""

from .database import Database, DatabaseStatistics, open_database, redact_dsn
from .migrations import Migration, SchemaStatus, migrate, schema_status

__all__ = [
    "Database",
    "DatabaseStatistics",
    "Migration",
    "SchemaStatus",
    "migrate",
    "open_database",
    "redact_dsn",
    "schema_status",
]
