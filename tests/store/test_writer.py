"""
L{tvlink.store.writer.WriterStore} on SQLite, its batches run on the
caller's thread: pieces in savepoints, and pieces of one statement
without.
"""

import sqlite3

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tvlink.store.sqlite import SQLiteStore

SCHEMA = ("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY)",)


def insert(conn, k):
    conn.execute("INSERT INTO t (k) VALUES (?)", (k,))
    return k


def insertThenFail(conn, k):
    conn.execute("INSERT INTO t (k) VALUES (?)", (k,))
    raise ValueError("changed my mind")


def rollBackEverything(conn, k):
    # What SQLite does by itself on a full disk or an I/O error.
    conn.execute("ROLLBACK")
    raise sqlite3.OperationalError("disk I/O error")


class SavepointlessStore(SQLiteStore):
    """
    A store whose statements are not atomic: every piece gets a savepoint.
    """

    statementsAtomic = False


class WriterTests(SynchronousTestCase):
    def store(self, kind=SQLiteStore):
        store = kind(self.mktemp(), SCHEMA, threaded=False)
        self.addCleanup(store.close)
        self.statements = []
        store.conn.set_trace_callback(self.statements.append)
        return store

    def applyBatch(self, store, pieces):
        """
        Apply C{pieces} (C{(work, k, oneStatement)}) as one batch; the
        result of each, and the keys in the table after.
        """
        from twisted.internet.defer import Deferred

        batch = [(work, (k,), Deferred(), one and store.statementsAtomic) for work, k, one in pieces]
        results = [r for d, r in store._apply(batch)]
        keys = [row[0] for row in store.conn.execute("SELECT k FROM t ORDER BY k")]
        return results, keys

    def verbs(self):
        return [s.split()[0] for s in self.statements if not s.startswith("SELECT k FROM t")]

    def test_oneStatementPiecesRunWithoutSavepoints(self):
        """
        Pieces of one statement run bare on SQLite; one whose statement
        fails fails alone and the others commit.
        """
        store = self.store()
        self.successResultOf(store.submit(insert, 2, oneStatement=True))
        self.statements.clear()
        results, keys = self.applyBatch(store, [(insert, 1, True), (insert, 2, True), (insert, 3, True)])
        self.assertEqual(results[0], 1)
        self.assertIsInstance(results[1], Failure)
        self.assertTrue(results[1].check(sqlite3.IntegrityError))
        self.assertEqual(results[2], 3)
        self.assertEqual(keys, [1, 2, 3])
        self.assertEqual(self.verbs(), ["BEGIN", "INSERT", "INSERT", "INSERT", "COMMIT"])

    def test_otherPiecesInSavepoints(self):
        """
        A piece not said to be one statement runs in its savepoint: one
        that fails after changing something leaves nothing behind.
        """
        store = self.store()
        results, keys = self.applyBatch(store, [(insert, 1, True), (insertThenFail, 2, False), (insert, 3, False)])
        self.assertEqual((results[0], results[2]), (1, 3))
        self.assertTrue(results[1].check(ValueError))
        self.assertEqual(keys, [1, 3])
        self.assertEqual(
            self.verbs(),
            ["BEGIN", "INSERT", "SAVEPOINT", "INSERT", "ROLLBACK", "RELEASE", "SAVEPOINT", "INSERT", "RELEASE", "COMMIT"],
        )

    def test_transactionRolledBackUnderABarePieceFailsTheBatch(self):
        """
        If the database rolled the whole transaction back under a bare
        piece, the batch fails: every piece, the ones before it included,
        and nothing is kept (nothing of what follows is committed outside
        the transaction either).
        """
        store = self.store()
        results, keys = self.applyBatch(store, [(insert, 1, True), (rollBackEverything, 2, True), (insert, 3, True)])
        self.assertEqual([r.check(sqlite3.OperationalError) for r in results], [sqlite3.OperationalError] * 3)
        self.assertEqual(keys, [])
        self.assertNotIn(3, [row[0] for row in store.conn.execute("SELECT k FROM t")])

    def test_savepointsWhereStatementsAreNotAtomic(self):
        """
        Where a failed statement spoils the transaction (PostgreSQL), a
        piece of one statement gets its savepoint all the same.
        """
        store = self.store(SavepointlessStore)
        self.successResultOf(store.submit(insert, 1, oneStatement=True))
        self.assertEqual(self.verbs(), ["BEGIN", "SAVEPOINT", "INSERT", "RELEASE", "COMMIT"])
