"""
The payment ledger: one writer thread with group commit, applying the
ledger's rules to its store.

L{PaymentLedger} is the default
L{IAccountBackend<tvlink.payment.backend.IAccountBackend>}. Requests are applied
by one writer thread, off the reactor: every request that arrived while a
commit was running goes into the next transaction, so throughput is not
capped at the disk's fsync rate. An answer is delivered (on the reactor
thread) only once the transaction holding it is durable (SQLite: WAL,
C{synchronous=FULL}).

What a request does is decided by L{tvlink.payment.rules.applyMessage}
(and the account operations of L{tvlink.payment.accounts}); the SQL and
the database are those of a L{tvlink.store.ledgersql.LedgerStore}. This
module holds neither: it owns the thread, the queue, the batches and what
happens to a request whose caller stops waiting (the writer thread's side,
the batches and their transactions, is L{tvlink.payment.writer}).

A caller that stops waiting (the back-end timeout of
L{tvlink.payment.backend.LedgerHandler}) calls L{PaymentLedger.abandon}:
work the writer has not started is journalled as not applied (C{91}) and
answered C{91} once that is durable; work the writer has started is
committed as it is and answered with its real result. Nothing is ever
applied and then undone behind its caller's back, so no answer can say
"not applied" of money that moved.
"""

import queue
import threading
import time

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tvlink.link.settings import globalReactor
from tvlink.payment import accounts
from tvlink.payment.backend import IAbandonableBackend
from tvlink.payment.errors import LedgerClosed, LedgerError, StillApplying
from tvlink.payment.rules import ACTIVE, FROZEN, Outcome, applyMessage, stateOf
from tvlink.payment.writer import STOP, LedgerWriter, Work
from tvlink.store.ledgersql import openLedgerStore
from tvlink.store.postgresql import isURL, maskURL

__all__ = ["PaymentLedger"]


@implementer(IAbandonableBackend)
class PaymentLedger(LedgerWriter):
    """
    Accounts and the journal of applied requests in one SQLite file, or in
    a PostgreSQL database several ledgers (payment nodes) share, with one
    writer thread doing group commit.

    On PostgreSQL a batch rolled back by a deadlock with another node is
    run again (up to L{maxRetries} times); a batch whose connection is lost
    is kept and run again once connected (every request is idempotent by
    key, so what did commit is answered as it was), the writer waiting for
    the database until then or until the ledger closes.

    Nothing is opened until L{open} (or the first request). Every method
    that reads or writes returns a L{Deferred} that fires on the reactor
    thread once the transaction it ran in is durable.

    @param path: the SQLite file (created if missing), or a
        C{postgresql://} URL; read when the ledger is opened.
    @param reactor: delivers answers with C{callFromThread} (the global
        reactor when C{None}).
    @param group_commit: apply every request that arrived during a commit
        in the next transaction; if false, one commit per request.

    @ivar commits: transactions committed.
    @ivar requests: pieces of work committed.
    @ivar largestBatch: the most pieces one commit held.
    @ivar failedCommits: transactions that failed (their work failed).
    @ivar voids: abandoned requests the writer had not started, journalled
        as not applied.
    @ivar abandonedLate: abandoned requests the writer had already
        started, committed and answered with their real result.
    """

    log = Logger(namespace="tvlink.ledger")

    def __init__(self, path, reactor=None, group_commit=True, busy_timeout=5.0, wallclock=time.time):
        if not isinstance(path, str) or not path:
            raise ValueError("ledger path must be a non-empty string, not %r" % (path,))
        self.path = path
        self._reactor = reactor
        self.group_commit = bool(group_commit)
        self.busy_timeout = busy_timeout
        self._wallclock = wallclock
        self.state = "new"
        self.commits = 0
        self.requests = 0
        self.largestBatch = 0
        self.failedCommits = 0
        self.commitSeconds = 0.0
        self.voids = 0
        self.abandonedLate = 0
        self.retriedBatches = 0
        self.databaseUp = True
        self.reconnects = 0
        self._wake = threading.Event()
        self._queue = None
        self._thread = None
        self._lock = threading.Lock()
        self._closing = None
        # The work of each Deferred handed out and not yet delivered, for
        # abandon() (reactor thread only).
        self._works = {}
        # Test hooks, called on the writer thread with the batch: once
        # every piece of it has been applied, before COMMIT; and after
        # COMMIT, before any answer is delivered.
        self._beforeCommit = None
        self._afterCommit = None

    @property
    def path(self):
        """
        Where the ledger is, as messages name it: a SQLite path, or a
        PostgreSQL URL with its password masked (the URL itself is
        L{where}).
        """
        return maskURL(self.where) if isURL(self.where) else self.where

    @path.setter
    def path(self, where):
        self.where = where

    @property
    def reactor(self):
        if self._reactor is None:
            self._reactor = globalReactor()
        return self._reactor

    # -- life cycle --------------------------------------------------------

    def open(self):
        """
        Open the file (creating the schema) and start the writer, here and
        now; does nothing if already open.

        @raise LedgerError: if the file cannot be opened as a ledger.
        @raise LedgerClosed: while a L{close} is in progress.
        """
        if self.state == "open":
            return
        if self.state == "closing":
            raise LedgerClosed("ledger %s is closing" % (self.path,))
        if self._reactor is None:
            self._reactor = globalReactor()
        self._wake.clear()
        store = openLedgerStore(self.where, create=True, busy_timeout=self.busy_timeout)
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(store, self._queue), name="tvlink-ledger-writer", daemon=True
        )
        self.state = "open"
        self._thread.start()
        self.log.info(
            "ledger {path} open (group commit {mode})",
            ledger_event="open",
            path=self.path,
            mode="on" if self.group_commit else "off",
        )

    def close(self):
        """
        Let the writer finish everything already submitted, then close the
        file.

        @return: a L{Deferred} firing once the database is closed. Work
            submitted after this fails with L{LedgerClosed}.
        """
        if self.state in ("new", "closed"):
            return succeed(None)
        d = Deferred()
        if self.state == "closing":
            self._closing.append(d)
            return d
        self.state = "closing"
        self._closing = [d]
        self._queue.put(STOP)
        # A writer waiting for a database that went away gives up.
        self._wake.set()
        return d

    def _closed(self, thread, q):
        thread.join()
        self.state = "closed"
        self._thread = None
        self._queue = None
        # After a clean close nothing is left; if the writer died, fail
        # what it never took rather than leave it waiting for ever.
        while True:
            try:
                work = q.get_nowait()
            except queue.Empty:
                break
            if work is not STOP and not work.deferred.called:
                work.deferred.errback(LedgerClosed("ledger %s closed before applying this" % (self.path,)))
        self._works.clear()
        waiters, self._closing = self._closing or [], None
        self.log.info("ledger {path} closed", ledger_event="closed", path=self.path)
        for d in waiters:
            d.callback(None)

    def stats(self):
        """
        Counters for metrics: C{commits}, C{requests}, C{largestBatch},
        C{meanBatch}, C{failedCommits}, C{commitSeconds}, C{voids}
        (abandoned before they were applied, journalled C{91}),
        C{abandonedLate} (abandoned while being applied, answered with
        their real result) and C{queued} (waiting for the writer now).
        """
        return {
            "commits": self.commits,
            "requests": self.requests,
            "largestBatch": self.largestBatch,
            "meanBatch": self.requests / self.commits if self.commits else 0.0,
            "failedCommits": self.failedCommits,
            "commitSeconds": self.commitSeconds,
            "voids": self.voids,
            "abandonedLate": self.abandonedLate,
            "retriedBatches": self.retriedBatches,
            "databaseUp": 1 if self.databaseUp else 0,
            "reconnects": self.reconnects,
            "queued": self._queue.qsize() if self._queue is not None else 0,
        }

    # -- submitting --------------------------------------------------------

    def _submit(self, run, pans=()):
        if self.state == "new":
            try:
                self.open()
            except LedgerError as e:
                return fail(e)
        if self.state != "open":
            return fail(LedgerClosed("ledger %s is %s" % (self.path, self.state)))
        work = Work(run, pans)
        work.deferred = Deferred(lambda d: self._cancel(work))
        self._works[work.deferred] = work
        self._queue.put(work)
        return work.deferred

    def _abandon(self, work):
        """
        Mark C{work} abandoned (on the reactor thread).

        @return: C{"not-applied"} if the writer had not started it (it
            never will apply it), C{"applying"} if it had (it commits as
            it is), C{"done"} if its transaction already ended.
        """
        with self._lock:
            if work.done:
                return "done"
            work.abandoned = True
            if work.started:
                return "applying"
            work.cancelled = True
            return "not-applied"

    def abandon(self, d):
        """
        The caller of L{apply} stops waiting for C{d}; see
        L{IAbandonableBackend.abandon}.

        If the writer has not started that request, it is journalled as
        not applied (a purchase or refund is answered C{91}, and so is any
        repeat of its key) and C{d} fires with C{{"resp": "91"}} once that
        is durable. If the writer has started it, it is committed as it is
        and C{d} fires with its real answer once durable. C{d} never fires
        from here (except when its answer is already durable), nor with an
        answer that is not durable.

        @return: C{"not-applied"}, C{"applying"}, C{"done"}, or C{None}
            if C{d} is not pending work of this ledger.
        """
        work = self._works.get(d)
        if work is None or d.called:
            return None
        return self._abandon(work)

    def _cancel(self, work):
        # On the reactor thread, from work.deferred.cancel(): the caller
        # stops waiting and wants an answer now. Not started: it will not
        # be applied (it is journalled 91 in the next transaction), and the
        # Deferred fails with CancelledError. Started: it will be
        # committed as it is, and nothing can be said yet: StillApplying
        # (a caller must not answer 91 from that). Done: the real result.
        state = self._abandon(work)
        if state == "not-applied":
            return
        if state == "applying":
            work.deferred.errback(
                StillApplying(
                    "ledger %s: the request was already being applied when cancelled; its outcome"
                    " will be in the journal" % (self.path,)
                )
            )
            return
        result = work.result
        if isinstance(result, Failure):
            work.deferred.errback(result)
        else:
            work.deferred.callback(result.answer if isinstance(result, Outcome) else result)

    def apply(self, message):
        """
        Apply request C{message}; see L{IAccountBackend.apply}.

        Cancelling the L{Deferred} only stops waiting: it fails with
        L{CancelledError} if the request had not been started (it is then
        journalled as not applied), with L{StillApplying} if it had (it is
        then committed as it is). A caller that answers from the outcome
        uses L{abandon} instead, which waits for the durable truth.
        """
        message = dict(message)
        pan = message.get("pan")
        return self._submit(
            lambda store, now, work: applyMessage(store, message, now, work.cancelled),
            (pan,) if isinstance(pan, str) else (),
        )

    def openAccount(self, pan, balance):
        """
        Open an active account for card C{pan} with C{balance} fen.

        @return: a L{Deferred} of the account C{dict}, or failing with
            L{DuplicateAccount}, L{BadCardNumber} or L{BadAmount}.
        """
        return self._submit(lambda store, now, work: accounts.openAccount(store, pan, balance, now))

    def account(self, pan):
        """
        A L{Deferred} of the account C{dict} of C{pan} (C{pan},
        C{balance}, C{opening}, C{status}, C{opened_at}), or failing with
        L{UnknownAccount}.
        """
        return self._submit(lambda store, now, work: accounts.getAccount(store, pan))

    def accounts(self):
        """
        A L{Deferred} of every account C{dict}.
        """
        return self._submit(lambda store, now, work: accounts.listAccounts(store))

    def freeze(self, pan):
        """
        Freeze the account of C{pan}: purchases on it are declined C{14}.
        A L{Deferred} of its status before.
        """
        return self._submit(lambda store, now, work: accounts.setStatus(store, pan, FROZEN))

    def unfreeze(self, pan):
        """
        Make the account of C{pan} active again. A L{Deferred} of its
        status before.
        """
        return self._submit(lambda store, now, work: accounts.setStatus(store, pan, ACTIVE))

    def entry(self, key):
        """
        A L{Deferred} of the journal entry C{dict} under C{key}, or
        C{None}.
        """
        return self._submit(lambda store, now, work: accounts.journalEntry(store, key))

    def stateOf(self, key):
        """
        A L{Deferred} of what became of the request C{key} (as a status
        inquiry would answer).
        """
        return self._submit(lambda store, now, work: stateOf(store, key))

    def recent(self, limit=20):
        """
        A L{Deferred} of the last C{limit} journal entries, newest first.
        """
        return self._submit(lambda store, now, work: accounts.recentJournal(store, limit))

    def reconcile(self):
        """
        A L{Deferred} of L{tvlink.payment.accounts.reconcile}'s report.
        """
        return self._submit(lambda store, now, work: accounts.reconcile(store))

    def moneyMovedBetween(self, start, end, sender=None, applied=None):
        """
        A L{Deferred} of
        L{LedgerStore.moneyMovedBetween<tvlink.store.ledgersql.LedgerStore.moneyMovedBetween>}.
        """
        return self._submit(lambda store, now, work: store.moneyMovedBetween(start, end, sender, applied))

    # -- back on the reactor thread --------------------------------------

    def _emit(self, events):
        for level, format, fields in events:
            getattr(self.log, level)(format, **fields)

    def _deliver(self, batch):
        for work in batch:
            result = work.result
            self._works.pop(work.deferred, None)
            if isinstance(result, Outcome):
                self._emit(result.events)
                if work.abandoned and not work.cancelled and result.key is not None:
                    self.log.info(
                        "ledger: {key} was already being applied when its caller gave up waiting;"
                        " committed and answered {resp}",
                        ledger_event="abandoned-late",
                        key="/".join(result.key),
                        resp=result.answer.get("resp"),
                    )
            if work.deferred.called:
                # Its caller cancelled it and stopped waiting.
                if isinstance(result, Failure):
                    self.log.failure("ledger: cancelled work failed too", result, ledger_event="failed")
                continue
            if isinstance(result, Failure):
                work.deferred.errback(result)
            elif isinstance(result, Outcome):
                work.deferred.callback(result.answer)
            else:
                work.deferred.callback(result)
