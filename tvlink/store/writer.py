"""
L{WriterStore}: durable work off the reactor thread, one writer thread per
store, with group commit. What differs between databases (how a
connection is opened, which statement begins a transaction, how the
schema is brought up to date, which errors mean the connection is gone)
is said by a subclass: L{tvlink.store.sqlite.SQLiteStore},
L{tvlink.store.postgresql.PostgreSQLStore}.
"""

import queue
import threading

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from tvlink.link.settings import globalReactor


class _Retry(Exception):
    """
    The batch was rolled back by a deadlock: run it again.
    """


class _Stale(Exception):
    """
    The connection was gone before the batch began: run it again on a new
    one.
    """


class WriterStore:
    """
    One database, one writer.

    Work is submitted as a function of a connection; it runs on a single
    writer thread inside a transaction. Every piece of work that arrived
    while a commit was running goes into the next transaction (group
    commit), so throughput is not capped at the disk's fsync rate. Each
    piece runs in its own savepoint: one that raises is rolled back alone
    and its Deferred fails, the rest of the batch commits. A Deferred fires
    (on the reactor thread) only once its transaction is durable.

    A piece submitted as C{oneStatement} changes the database in one
    statement at most and raises only before it or from it. On a database
    where a statement that fails leaves the transaction as it was
    (L{statementsAtomic}: SQLite), such a piece needs no savepoint and
    runs without one: two statements fewer, each a trip the writer makes
    for the interpreter lock the reactor thread holds. If the database
    rolled the whole transaction back instead (SQLite does on a full disk
    or an I/O error), the batch fails, as any failed transaction does.

    A transaction that fails fails every piece of its batch, whatever the
    reason, except a deadlock with another process (L{retryable}): the
    batch is then rolled back and run again, up to L{maxRetries} times.
    When the reason is a lost connection (L{lost}) the store reconnects
    (L{reconnect}) before the next batch and counts it.

    With C{threaded=False} the work runs at once on the caller's thread
    and the Deferred has fired on return: for tests driven by a Clock.

    A subclass sets L{BEGIN} and L{Error} and implements L{connect} (and,
    for a database that can go away, L{lost} and L{reconnect}).

    @ivar commits: transactions committed.
    @ivar applied: pieces of work committed.
    @ivar batchSizes: pieces per commit, most recent last (bounded).
    @ivar databaseUp: C{False} from a lost connection until the store is
        connected again.
    @ivar reconnects: connections made again after one was lost.
    @ivar retriedBatches: batches run again after a deadlock.
    """

    log = Logger(namespace="tvlink.store")

    #: Begins the writer's transaction.
    BEGIN = "BEGIN"
    #: The driver's base error class.
    Error = Exception
    #: How many times a batch rolled back by a deadlock is run again.
    maxRetries = 5
    #: Whether a statement that fails leaves the transaction usable, its
    #: own changes undone and the rest kept (see L{inTransaction}).
    statementsAtomic = False

    def __init__(self, path, reactor=None, group_commit=True, threaded=True):
        self.reactor = reactor if reactor is not None else globalReactor()
        self.path = path
        self.group_commit = group_commit
        self.threaded = threaded
        self.commits = 0
        self.applied = 0
        self.batchSizes = []
        self.closed = False
        self.databaseUp = True
        self.reconnects = 0
        self.retriedBatches = 0
        self._queue = queue.Queue()
        self._closed = Deferred()

    def start(self):
        """
        Start the writer thread (a subclass calls this once connected).
        """
        if self.threaded:
            self._thread = threading.Thread(target=self._run, name="tvlink-store", daemon=True)
            self._thread.start()

    # -- what a subclass says ----------------------------------------------

    def lost(self, error):
        """
        Whether C{error} (raised by a transaction) means the connection is
        gone. SQLite's never goes.
        """
        return False

    def reconnect(self):
        """
        Connect again after L{lost}; raise if the database is still away.
        """
        raise NotImplementedError

    def retryable(self, error):
        """
        Whether C{error} (raised by a piece of work) rolled back work that
        running the whole batch again can cure: a deadlock with another
        process's transaction. SQLite's single writer has none.
        """
        return False

    def inTransaction(self, conn):
        """
        Whether C{conn} is still inside the writer's transaction (asked
        after a piece without a savepoint failed).
        """
        return True

    def closeConnection(self):
        self.conn.close()

    # -- the API -----------------------------------------------------------

    def submit(self, work, *args, oneStatement=False):
        """
        Run C{work(connection, *args)} in a transaction; return a
        L{Deferred} firing with its result once committed.

        @param oneStatement: C{work} changes the database in one statement
            at most and raises only before it or from it, so where
            L{statementsAtomic} it runs without a savepoint.
        """
        if self.closed:
            return fail(RuntimeError("store %s is closed" % (self.path,)))
        d = Deferred()
        piece = (work, args, d, oneStatement and self.statementsAtomic)
        if not self.threaded:
            results = self._apply([piece])
            self._deliver(results)
            return d
        self._queue.put(piece)
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
            self.closeConnection()
            self._closed.callback(None)
            return self._closed
        self._queue.put(None)
        return self._closed

    # -- the writer thread -------------------------------------------------

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
        try:
            self.closeConnection()
        except self.Error:
            pass
        self.reactor.callFromThread(self._closed.callback, None)

    def _apply(self, batch):
        if not self.databaseUp and not self._connectAgain():
            return self._unreachable(batch)
        for attempt in range(self.maxRetries):
            try:
                return self._transaction(batch)
            except _Retry:
                self.retriedBatches += 1
            except _Stale:
                # Gone before anything was sent (a server that restarted
                # while the connection sat idle): connect and try again.
                if not self._connectAgain():
                    return self._unreachable(batch)
        return self._transaction(batch, retry=False)

    def _unreachable(self, batch):
        failure = Failure(ConnectionError("the database of %s is unreachable" % (self.path,)))
        return [(d, failure) for work, args, d, bare in batch]

    def _transaction(self, batch, retry=True):
        conn = self.conn
        results = []
        try:
            conn.execute(self.BEGIN)
        except BaseException as e:
            failure = Failure()
            if self.lost(e):
                self._lost(e)
                if retry:
                    raise _Stale() from None
            return [(d, failure) for work, args, d, bare in batch]
        try:
            for work, args, d, bare in batch:
                if not bare:
                    conn.execute("SAVEPOINT piece")
                try:
                    result = work(conn, *args)
                except BaseException as e:
                    if self.lost(e) or (retry and self.retryable(e)):
                        raise
                    if not bare:
                        conn.execute("ROLLBACK TO piece")
                        conn.execute("RELEASE piece")
                    elif not self.inTransaction(conn):
                        raise
                    results.append((d, Failure()))
                else:
                    if not bare:
                        conn.execute("RELEASE piece")
                    results.append((d, result))
            conn.execute("COMMIT")
        except BaseException as e:
            failure = Failure()
            if self.lost(e):
                self._lost(e)
            else:
                try:
                    conn.execute("ROLLBACK")
                except self.Error:
                    pass
                if retry and self.retryable(e):
                    raise _Retry() from None
            return [(d, failure) for work, args, d, bare in batch]
        self.commits += 1
        self.applied += len(batch)
        self.batchSizes.append(len(batch))
        if len(self.batchSizes) > 1024:
            del self.batchSizes[:512]
        return results

    def _emit(self, log, format, **fields):
        """
        Log from the writer: on the reactor thread when there is one.
        """
        if self.threaded:
            self.reactor.callFromThread(log, format, **fields)
        else:
            log(format, **fields)

    def _lost(self, error):
        self.databaseUp = False
        self._emit(
            self.log.error,
            "store {path}: connection to the database lost ({why}); its transaction failed",
            store_event="database-lost",
            path=self.path,
            why=" ".join(str(error).split()),
        )

    def _connectAgain(self):
        try:
            self.reconnect()
        except Exception:
            return False
        self.databaseUp = True
        self.reconnects += 1
        self._emit(self.log.info, "store {path}: connected to the database again", store_event="reconnected", path=self.path)
        return True

    def _deliver(self, results):
        for d, result in results:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
