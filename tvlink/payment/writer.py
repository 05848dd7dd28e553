"""
The writer thread's side of L{tvlink.payment.ledger.PaymentLedger}: the
batches it takes from the queue (group commit), the transaction each runs
in (a savepoint per piece), a batch run again after a deadlock with
another node or once a lost database is back, and each piece's result
handed back to the reactor thread.
"""

import queue
import threading
import time

from twisted.python.failure import Failure

from tvlink.payment.errors import LedgerError
from tvlink.payment.rules import wallclockText


class Work:
    """
    One piece of work for the writer: C{run(store, now, work)}, and the
    L{Deferred} of its result.

    The flags are set under the ledger's lock. C{started}: the writer has
    begun applying it (from then on it is committed as it is).
    C{abandoned}: its caller stopped waiting (L{PaymentLedger.abandon} or
    a cancellation). C{cancelled}: abandoned before it was started, so a
    purchase or refund is journalled C{91} and not applied; never set once
    C{started}. C{done}: its transaction has ended and C{result} is final.
    """

    __slots__ = ("run", "pans", "deferred", "cancelled", "abandoned", "started", "done", "result")

    def __init__(self, run, pans=()):
        self.run = run
        #: The accounts it may change, locked before the batch runs.
        self.pans = pans
        self.deferred = None
        self.cancelled = False
        self.abandoned = False
        self.started = False
        self.done = False
        self.result = None


#: What L{LedgerWriter._run} stops at, once the queue before it is done.
STOP = object()


class LedgerWriter:
    """
    The writer thread's half of a ledger: L{_run} takes its queue until
    L{STOP}. The ledger (L{tvlink.payment.ledger.PaymentLedger}) keeps the
    counters and the state these methods read and write, and delivers
    the results on the reactor thread (C{_deliver}, C{_closed}).
    """

    #: The most pieces of work one transaction takes.
    maxBatch = 1000

    #: How many times a batch rolled back by a deadlock with another
    #: node is run again before its work fails.
    maxRetries = 5
    #: Seconds between attempts to reach a database that went away (the
    #: pool backs off on its own under this).
    reconnectDelay = 0.5

    def _run(self, store, q):
        try:
            stop = False
            while not stop:
                batch = [q.get()]
                limit = self.maxBatch if self.group_commit else 1
                if self.group_commit:
                    while len(batch) < limit:
                        try:
                            batch.append(q.get_nowait())
                        except queue.Empty:
                            break
                if batch[-1] is STOP:
                    batch.pop()
                    stop = True
                if batch:
                    self._commit(store, batch)
        finally:
            store.close()
            self.reactor.callFromThread(self._closed, threading.current_thread(), q)

    def _commit(self, store, batch):
        now = wallclockText(self._wallclock())
        started = time.perf_counter()
        retries = 0
        while True:
            try:
                results = self._transaction(store, batch, now)
            except Exception as e:
                if store.lost(e):
                    # Nothing of this batch is known to be durable: once
                    # connected again, run it again. Every request is
                    # idempotent by its key, so what did commit is found
                    # in the journal and answered as it was.
                    if self._reconnected(store, e):
                        continue
                elif store.retryable(e) and retries < self.maxRetries:
                    # A deadlock with another node: rolled back whole.
                    retries += 1
                    self.retriedBatches += 1
                    self._rollback(store)
                    continue
                else:
                    self._rollback(store)
                self.failedCommits += 1
                failure = Failure(LedgerError("ledger %s: transaction failed: %s" % (self.path, e)))
                results = [failure] * len(batch)
            else:
                self.commits += 1
                self.requests += len(batch)
                self.largestBatch = max(self.largestBatch, len(batch))
                if self._afterCommit is not None:
                    self._afterCommit(batch)
            break
        self.commitSeconds += time.perf_counter() - started
        with self._lock:
            for work, result in zip(batch, results):
                work.result = result
                work.done = True
                if work.abandoned and not isinstance(result, Failure):
                    if work.cancelled:
                        self.voids += 1
                    else:
                        self.abandonedLate += 1
        self.reactor.callFromThread(self._deliver, batch)

    def _transaction(self, store, batch, now):
        """
        Apply C{batch} in one transaction, a savepoint per piece; the
        results. Raises what fails the transaction as a whole.
        """
        results = []
        store.begin()
        store.lockAccounts([pan for work in batch for pan in work.pans])
        for work in batch:
            # From here on an abandon() cannot stop this work: it is
            # applied (or not, if abandoned already) and committed as it
            # is, and its caller gets the real answer.
            with self._lock:
                work.started = True
            for attempt in (1, 2):
                store.savepoint()
                try:
                    result = work.run(store, now, work)
                except BaseException as e:
                    if isinstance(e, Exception) and (store.lost(e) or store.retryable(e)):
                        raise
                    result = Failure()
                    store.rollbackToSavepoint()
                    store.releaseSavepoint()
                    if attempt == 1 and isinstance(e, store.IntegrityError):
                        # Another node committed the same key meanwhile:
                        # run it again, and it finds that answer.
                        continue
                else:
                    store.releaseSavepoint()
                break
            results.append(result)
        if self._beforeCommit is not None:
            self._beforeCommit(batch)
        store.commit()
        return results

    def _rollback(self, store):
        try:
            store.rollback()
        except store.Error:
            pass

    def _reconnected(self, store, error):
        """
        Wait (on the writer thread) until the database is reachable again,
        or the ledger closes.

        @return: whether it is connected again.
        """
        if self.databaseUp:
            self.databaseUp = False
            self.reactor.callFromThread(
                self.log.error,
                "ledger {path}: connection to the database lost ({why}); answers wait until it is back",
                ledger_event="database-lost",
                path=self.path,
                why=str(error).strip() or type(error).__name__,
            )
        while not self._wake.is_set():
            try:
                store.reconnect()
            except LedgerError:
                self._wake.wait(self.reconnectDelay)
                continue
            self.databaseUp = True
            self.reconnects += 1
            self.reactor.callFromThread(
                self.log.info,
                "ledger {path}: connected to the database again",
                ledger_event="reconnected",
                path=self.path,
            )
            return True
        return False
