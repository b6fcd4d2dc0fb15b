"""Session storage: the store protocol and its implementations.

A session is the durable record of a conversation with one agent, found by its session key.
Only stable sessions (a ``x-epiloop-session-key`` header or an OpenAI ``user``) are recorded;
stateless requests leave nothing behind.
"""

from .memory import MemorySessionStore as MemorySessionStore
from .open import open_session_store as open_session_store
from .reconcile import Reconciled as Reconciled
from .reconcile import reconcile as reconcile
from .sqlite import SqliteSessionStore as SqliteSessionStore
from .sqlite import open_sqlite_store as open_sqlite_store
from .store import Session as Session
from .store import SessionStore as SessionStore
from .store import TranscriptEntry as TranscriptEntry
from .store import Turn as Turn
