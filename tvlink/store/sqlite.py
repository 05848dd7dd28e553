"""
L{SQLiteStore}: durable SQLite work off the reactor thread, with group
commit.
"""

import queue
import sqlite3
import threading

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.link.settings import globalReactor


class SQLiteStore:
    """
    One SQLite database, one writer.

    Work is submitted as a function of a connection; it runs on a single
    writer thread inside a transaction. Every piece of work that arrived
    while a commit was running goes into the next transaction (group
    commit), so throughput is not capped at the disk's fsync rate. Each
    piece runs in its own savepoint: one that raises is rolled back alone
    and its Deferred fails, the rest of the batch commits. A Deferred fires
    (on the reactor thread) only once its transaction is durable.

    With C{threaded=False} the work runs at once on the caller's thread
    and the Deferred has fired on return: for tests driven by a Clock.

    @ivar commits: transactions committed.
    @ivar applied: pieces of work committed.
    @ivar batchSizes: pieces per commit, most recent last (bounded).
    """

    log = Logger(namespace="tvlink.store")

    def __init__(
        self, path, schema=(), reactor=None, group_commit=True, threaded=True, busy_timeout=10.0, migrate=None
    ):
        self.reactor = reactor if reactor is not None else globalReactor()
        self.path = path
        self.group_commit = group_commit
        self.threaded = threaded
        self.commits = 0
        self.applied = 0
        self.batchSizes = []
        self.closed = False
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        for statement in schema:
            self._conn.execute(statement)
        #: What C{migrate(connection)} returned, if one was given: it brings
        #: an older file up to date, in one transaction, before any work;
        #: when it fails the store is not made (the error is raised).
        self.migrated = None
        if migrate is not None:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self.migrated = migrate(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._conn.close()
                raise
            self._conn.execute("COMMIT")
        self._queue = queue.Queue()
        self._closed = Deferred()
        if threaded:
            self._thread = threading.Thread(target=self._run, name="tvlink-store", daemon=True)
            self._thread.start()

    def submit(self, work, *args):
        """
        Run C{work(connection, *args)} in a transaction; return a
        L{Deferred} firing with its result once committed.
        """
        if self.closed:
            return fail(RuntimeError("store %s is closed" % (self.path,)))
        d = Deferred()
        if not self.threaded:
            results = self._apply([(work, args, d)])
            self._deliver(results)
            return d
        self._queue.put((work, args, d))
        return d

    def query(self, sql, params=()):
        """
        Run a read-only query; a L{Deferred} of the rows.
        """
        return self.submit(lambda conn: conn.execute(sql, params).fetchall())

    def close(self):
        """
        Finish every submitted piece of work, then close. Fires when
        closed.
        """
        if self.closed:
            return self._closed if not self._closed.called else succeed(None)
        self.closed = True
        if not self.threaded:
            self._conn.close()
            self._closed.callback(None)
            return self._closed
        self._queue.put(None)
        return self._closed

    def _run(self):
        q = self._queue
        while True:
            item = q.get()
            stop = item is None
            batch = [] if stop else [item]
            if self.group_commit and not stop:
                while True:
                    try:
                        more = q.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
            while batch:
                if self.group_commit:
                    chunk, batch = batch, []
                else:
                    chunk, batch = batch[:1], batch[1:]
                results = self._apply(chunk)
                self.reactor.callFromThread(self._deliver, results)
            if stop:
                break
        self._conn.close()
        self.reactor.callFromThread(self._closed.callback, None)

    def _apply(self, batch):
        conn = self._conn
        results = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work, args, d in batch:
                conn.execute("SAVEPOINT piece")
                try:
                    result = work(conn, *args)
                except BaseException:
                    conn.execute("ROLLBACK TO piece")
                    conn.execute("RELEASE piece")
                    results.append((d, Failure()))
                else:
                    conn.execute("RELEASE piece")
                    results.append((d, result))
            conn.execute("COMMIT")
        except BaseException:
            failure = Failure()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return [(d, failure) for work, args, d in batch]
        self.commits += 1
        self.applied += len(batch)
        self.batchSizes.append(len(batch))
        if len(self.batchSizes) > 1024:
            del self.batchSizes[:512]
        return results

    def _deliver(self, results):
        for d, result in results:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
