"""
L{SQLiteStore}: a L{tvlink.store.writer.WriterStore} on one SQLite file,
in WAL mode with C{synchronous=FULL}.
"""

import sqlite3

from tvlink.store.writer import WriterStore


class SQLiteStore(WriterStore):
    """
    One SQLite file, one writer (see L{WriterStore}).

    @param schema: statements run as the file is opened (C{CREATE ... IF
        NOT EXISTS}).
    @param migrate: C{migrate(connection)}, run in one transaction as the
        file is opened, before any work; it brings an older file up to
        date. When it fails the store is not made (the error is raised).
    """

    #: Takes the file's write lock at once.
    BEGIN = "BEGIN IMMEDIATE"
    Error = sqlite3.Error

    #: The dialect name schema helpers look at.
    dialect = "sqlite"
    #: A failed statement undoes only its own changes (SQLite's ABORT).
    statementsAtomic = True

    def __init__(
        self, path, schema=(), reactor=None, group_commit=True, threaded=True, busy_timeout=10.0, migrate=None
    ):
        WriterStore.__init__(self, path, reactor=reactor, group_commit=group_commit, threaded=threaded)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        for statement in schema:
            self.conn.execute(statement)
        #: What C{migrate(connection)} returned, if one was given.
        self.migrated = None
        if migrate is not None:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.migrated = migrate(self.conn)
            except BaseException:
                self.conn.execute("ROLLBACK")
                self.conn.close()
                raise
            self.conn.execute("COMMIT")
        self.start()

    def inTransaction(self, conn):
        return conn.in_transaction

    @staticmethod
    def columnsOf(conn, table):
        """
        The names of the columns of C{table}, on C{conn}.
        """
        return {row[1] for row in conn.execute("PRAGMA table_info(%s)" % (table,))}
