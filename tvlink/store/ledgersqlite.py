"""
L{SQLiteLedgerStore}: the payment ledger in one SQLite file (the statements
are L{tvlink.store.ledgersql.LedgerStore}'s).
"""

import os
import pathlib
import sqlite3

from tvlink.payment.errors import LedgerError, LedgerNotFound, NotALedger
from tvlink.store.ledgersql import SCHEMA_VERSION, LedgerStore

#: The SQLite schema, as it was first written (C{sqlite_master} keeps this text).
_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        pan TEXT PRIMARY KEY,
        balance INTEGER NOT NULL,
        opening INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
        opened_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS journal (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        stan TEXT NOT NULL,
        time TEXT NOT NULL,
        mti TEXT NOT NULL,
        proc TEXT,
        pan TEXT,
        amount INTEGER,
        order_id TEXT,
        orig_mti TEXT,
        orig_sender TEXT,
        orig_stan TEXT,
        orig_time TEXT,
        resp TEXT NOT NULL,
        state TEXT NOT NULL,
        refunded INTEGER NOT NULL DEFAULT 0,
        answer TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        UNIQUE (sender, stan, time))""",
    "CREATE INDEX IF NOT EXISTS journal_orig ON journal (orig_sender, orig_stan, orig_time)",
)


class SQLiteLedgerStore(LedgerStore):
    """
    The ledger in one SQLite file: WAL, C{synchronous=FULL}, a busy
    timeout, the schema version in C{PRAGMA user_version}.
    """

    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError

    #: Takes the file's write lock at once, so the whole transaction is
    #: serialised against every other writer (the admin command too).
    BEGIN = "BEGIN IMMEDIATE"

    SCHEMA_VERSION = SCHEMA_VERSION

    SCHEMA = _SQLITE_SCHEMA

    @classmethod
    def open(cls, path, create=True, busy_timeout=5.0):
        """
        Open the ledger at C{path}, its schema checked (and created when
        C{create}).

        @return: a store on a connection in autocommit mode (transactions
            are begun explicitly), usable from one thread at a time.
        @raise LedgerNotFound: if C{create} is false and there is no file.
        @raise NotALedger: if the file is not a tvlink ledger.
        @raise LedgerError: if it cannot be opened.
        """
        try:
            if create:
                conn = sqlite3.connect(
                    path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
            else:
                if not os.path.isfile(path):
                    raise LedgerNotFound("no ledger at %s" % (path,))
                uri = pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=rw"
                conn = sqlite3.connect(
                    uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as e:
            raise LedgerError("cannot open ledger %s: %s" % (path, e)) from None
        store = cls(conn, path)
        try:
            conn.execute("PRAGMA busy_timeout = %d" % (int(busy_timeout * 1000),))
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
            store._ensureSchema(create)
        except sqlite3.DatabaseError as e:
            conn.close()
            if "not a database" in str(e) or "malformed" in str(e):
                raise NotALedger("%s is not a SQLite database: %s" % (path, e)) from None
            raise LedgerError("cannot open ledger %s: %s" % (path, e)) from None
        except LedgerError:
            conn.close()
            raise
        return store

    def _version(self):
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _ensureSchema(self, create):
        version = self._version()
        if version == self.SCHEMA_VERSION:
            return
        if version > self.SCHEMA_VERSION:
            raise LedgerError(
                "ledger %s has schema version %d; this tvlink knows %d"
                % (self.path, version, self.SCHEMA_VERSION)
            )
        if not create:
            raise NotALedger("%s is not a tvlink ledger (no ledger tables)" % (self.path,))
        with self.transaction():
            if self._version() == 0:
                for statement in self.SCHEMA:
                    self.conn.execute(statement)
                self.conn.execute("PRAGMA user_version = %d" % (self.SCHEMA_VERSION,))
