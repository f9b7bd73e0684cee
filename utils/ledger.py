"""The served teacher's bill: queries per API key (and per client run), in a
SQLite file.

An answer is released only after the transaction that bills it has committed,
and the answer itself is stored in that same transaction under the client's
request id. So a server killed at any moment has billed exactly the answers it
may have sent, and a request id sent again gets the stored answer, unbilled.
"""
import sqlite3
import threading
import time
from typing import NamedTuple, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL, run_id TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (key_id, run_id));
CREATE TABLE IF NOT EXISTS requests (
    key_id TEXT NOT NULL, request_id TEXT NOT NULL, run_id TEXT NOT NULL, images INTEGER NOT NULL,
    digest TEXT NOT NULL, answer BLOB NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (key_id, request_id));
"""


class Charge(NamedTuple):
    """What the ledger did with a batch. outcome: 'billed' (a new answer, now
    paid for), 'replay' (the request id was answered before: its stored answer,
    not billed again), 'conflict' (the request id was answered before, for
    other images) or 'over' (the batch would pass the key's budget: nothing
    billed). used: the key's queries after this, run_used: those of the
    request's run; images: those billed under this request id, now or before."""
    outcome: str
    used: int
    run_used: int
    answer: Optional[bytes] = None
    images: int = 0


class Ledger:
    def __init__(self, path: str):
        # One connection shared by the server's threads behind a lock; BEGIN
        # IMMEDIATE also serialises against another process on the same file.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut, not only a kill
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def used(self, key_id: str, run_id: Optional[str] = None) -> int:
        """Queries billed to the key, or to one client run of the key."""
        with self._lock:
            return self._used(key_id, run_id)

    def _used(self, key_id: str, run_id: Optional[str] = None) -> int:
        if run_id is None:
            row = self._db.execute("SELECT SUM(used) FROM usage WHERE key_id = ?", (key_id,)).fetchone()
        else:
            row = self._db.execute("SELECT used FROM usage WHERE key_id = ? AND run_id = ?",
                                   (key_id, run_id)).fetchone()
        return (row[0] or 0) if row else 0

    def _earlier(self, key_id: str, run_id: str, request_id: str, digest: str) -> Optional[Charge]:
        """The charge of a request id answered before, or None if it is new."""
        row = self._db.execute("SELECT digest, answer, images FROM requests WHERE key_id = ? AND request_id = ?",
                               (key_id, request_id)).fetchone()
        if row is None:
            return None
        outcome, answer = ("replay", row[1]) if row[0] == digest else ("conflict", None)
        return Charge(outcome, self._used(key_id), self._used(key_id, run_id), answer, row[2])

    def lookup(self, key_id: str, run_id: str, request_id: str, digest: str) -> Optional[Charge]:
        """A replay or conflict for a request id answered before; None if new."""
        with self._lock:
            return self._earlier(key_id, run_id, request_id, digest)

    def charge(self, key_id: str, run_id: str, request_id: str, digest: str, images: int, answer: bytes,
               budget: int) -> Charge:
        """Bill `images` queries to the key and store the answer, in one
        transaction; budget 0 means no cap. A request id answered before is not
        billed again (a concurrent duplicate may have committed first)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                used = self._used(key_id)
                earlier = self._earlier(key_id, run_id, request_id, digest)
                if earlier is not None or (budget and used + images > budget):
                    self._db.execute("ROLLBACK")
                    return earlier or Charge("over", used, self._used(key_id, run_id))
                self._db.execute("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (key_id, request_id, run_id, images, digest, answer, time.time()))
                self._db.execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT(key_id, run_id) "
                                 "DO UPDATE SET used = used + excluded.used", (key_id, run_id, images))
                run_used = self._used(key_id, run_id)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return Charge("billed", used + images, run_used, answer, images)

    def close(self) -> None:
        self._db.close()
