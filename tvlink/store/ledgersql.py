"""
The payment ledger's storage: every SQL statement the ledger runs, and
every detail of the database under it, in one place.

The ledger's rules (L{tvlink.payment.rules}, L{tvlink.payment.accounts})
and its writer (L{tvlink.payment.ledger}) hold no SQL: they call the
methods of a L{LedgerStore}, one open connection to the ledger's
database. L{LedgerStore} holds the statements, written once; a store
class says where its database differs, and only there:

 - the driver: its C{Error} and C{IntegrityError}, and how a connection
   is opened, checked and given its schema (L{SQLiteLedgerStore.open});
 - placeholders: every statement is written with C{?}, and runs through
   L{LedgerStore._execute} (a driver that wants C{%s} translates there);
 - locking: C{BEGIN} starts a transaction that holds the write lock
   (SQLite: C{BEGIN IMMEDIATE}, which locks the whole file, so no read
   needs a lock of its own; a store with row locks overrides
   C{ACCOUNT_FOR_CHANGE} and C{JOURNAL_ORIGINAL}, the reads of rows about
   to be changed, with C{FOR UPDATE});
 - duplicates: L{LedgerStore.insertAccount} reports an account already
   open from the driver's C{IntegrityError} (a store may use
   C{ON CONFLICT DO NOTHING} instead);
 - the schema: its tables (C{SCHEMA}) and how its version is kept
   (SQLite: C{PRAGMA user_version}).

L{SQLiteLedgerStore} (C{ledgersqlite}) is one SQLite file in WAL mode,
C{synchronous=FULL}. L{PostgreSQLLedgerStore} (C{ledgerpostgresql}) is a
PostgreSQL database several payment nodes
share: its C{BEGIN}, its C{FOR UPDATE} reads, L{LedgerStore.lockAccounts}
(the accounts of a batch locked in card-number order),
L{LedgerStore.lost}, L{LedgerStore.retryable} and
L{LedgerStore.reconnect} are where it differs. L{openLedgerStore} picks
one from a path or a C{postgresql://} URL; nothing above this module
changes.

A store is used from one thread at a time (the ledger's writer, or the
admin command) and does not begin or end transactions by itself, except
when L{SQLiteLedgerStore.open} creates the schema: its caller does, with
L{LedgerStore.begin} and friends or L{LedgerStore.transaction}.
"""

import contextlib
import json

from tvlink.payment.errors import LedgerError
from tvlink.store import postgresql as pgsql

__all__ = ["SCHEMA_VERSION", "LedgerStore", "openLedgerStore"]

#: The schema version the stores write (SQLite: C{PRAGMA user_version};
#: PostgreSQL: the C{tvlink_schema} table).
SCHEMA_VERSION = 1

#: The columns of a journal entry as L{LedgerStore.entry} returns them.
JOURNAL_COLUMNS = (
    "id", "sender", "stan", "time", "mti", "proc", "pan", "amount", "order_id",
    "orig_mti", "orig_sender", "orig_stan", "orig_time", "resp", "state",
    "refunded", "answer", "applied_at",
)

#: The columns of an account as L{LedgerStore.account} returns them.
ACCOUNT_COLUMNS = ("pan", "balance", "opening", "status", "opened_at")

_SELECT_JOURNAL = "SELECT %s FROM journal" % (", ".join(JOURNAL_COLUMNS),)
_BY_KEY = " WHERE sender = ? AND stan = ? AND time = ?"
_MONEY_MOVED = (
    "SELECT sender, stan, time, mti, proc, pan, amount, resp, state, refunded FROM journal"
    " WHERE time >= ? AND time < ? AND applied_at >= ? AND applied_at < ? AND resp = '00'"
    " AND ((mti = '0200' AND proc = '000000') OR (mti = '0220' AND proc = '200000'))"
)


def _journalDict(row):
    entry = dict(zip(JOURNAL_COLUMNS, row))
    entry["answer"] = json.loads(entry["answer"])
    entry["key"] = (entry["sender"], entry["stan"], entry["time"])
    if entry["orig_sender"] is not None:
        entry["orig"] = (entry["orig_sender"], entry["orig_stan"], entry["orig_time"])
    else:
        entry["orig"] = None
    return entry


class LedgerStore:
    """
    One open connection to a ledger database, and every statement the
    ledger runs on it.

    Keys are C{(sender, stan, time)} tuples of strings. Amounts and
    balances are C{int} fen. Values the rules decide (states, statuses,
    processing codes) are passed in; the store only keeps them.

    @ivar conn: the driver's connection.
    @ivar path: what it was opened from, for messages.
    """

    # -- dialect: a store class sets these ---------------------------------

    #: The driver's base error class.
    Error = Exception
    #: What the driver raises for a broken uniqueness constraint.
    IntegrityError = Exception

    #: Begins a transaction holding the write lock from its start.
    BEGIN = "BEGIN"
    #: Begins a read-only transaction that sees one state of the ledger.
    SNAPSHOT = "BEGIN"
    COMMIT = "COMMIT"
    ROLLBACK = "ROLLBACK"
    #: One savepoint a piece of work runs in, inside the writer's batch.
    SAVEPOINT = "SAVEPOINT work"
    ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO work"
    RELEASE_SAVEPOINT = "RELEASE work"

    # -- the statements --------------------------------------------------

    ACCOUNT_INSERT = "INSERT INTO accounts (pan, balance, opening, status, opened_at) VALUES (?, ?, ?, ?, ?)"
    ACCOUNT = "SELECT pan, balance, opening, status, opened_at FROM accounts WHERE pan = ?"
    ACCOUNTS = "SELECT pan, balance, opening, status, opened_at FROM accounts ORDER BY pan"
    ACCOUNT_SET_STATUS = "UPDATE accounts SET status = ? WHERE pan = ?"
    #: The account a purchase is about to debit.
    ACCOUNT_FOR_CHANGE = "SELECT balance, status FROM accounts WHERE pan = ?"
    ACCOUNT_BALANCE = "SELECT balance FROM accounts WHERE pan = ?"
    ACCOUNT_CREDIT = "UPDATE accounts SET balance = balance + ? WHERE pan = ?"

    JOURNAL_ENTRY = _SELECT_JOURNAL + _BY_KEY
    JOURNAL_RECENT = _SELECT_JOURNAL + " ORDER BY id DESC LIMIT ?"
    JOURNAL_ANSWER = "SELECT fingerprint, answer FROM journal" + _BY_KEY
    JOURNAL_STATE = "SELECT state FROM journal" + _BY_KEY
    #: The original a refund or reversal is about to change.
    JOURNAL_ORIGINAL = (
        "SELECT id, mti, proc, pan, amount, state, refunded, orig_sender, orig_stan, orig_time"
        " FROM journal" + _BY_KEY
    )
    JOURNAL_REVERSAL_OF = (
        "SELECT 1 FROM journal WHERE mti = '0420' AND orig_sender = ? AND orig_stan = ?"
        " AND orig_time = ? LIMIT 1"
    )
    JOURNAL_INSERT = (
        "INSERT INTO journal (sender, stan, time, mti, proc, pan, amount, order_id, orig_mti,"
        " orig_sender, orig_stan, orig_time, resp, state, answer, fingerprint, applied_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    JOURNAL_ADD_REFUNDED = "UPDATE journal SET refunded = refunded + ?, state = ? WHERE id = ?"
    JOURNAL_SET_STATE = "UPDATE journal SET state = ? WHERE id = ?"
    JOURNAL_SET_STATE_UNREFUNDED = "UPDATE journal SET state = ?, refunded = 0 WHERE id = ?"
    JOURNAL_SET_REFUNDS_STATE = (
        "UPDATE journal SET state = ? WHERE mti = '0220' AND state = ? AND orig_sender = ?"
        " AND orig_stan = ? AND orig_time = ?"
    )
    JOURNAL_TAKE_BACK_REFUND = (
        "UPDATE journal SET refunded = refunded - ?,"
        " state = CASE WHEN state = ? AND refunded - ? = 0 THEN ? ELSE state END" + _BY_KEY
    )
    PURCHASED_BY_CARD = (
        "SELECT pan, CAST(SUM(amount) AS BIGINT) FROM journal WHERE mti = '0200' AND proc = ? AND state IN (?, ?)"
        " GROUP BY pan"
    )
    REFUNDED_BY_CARD = "SELECT pan, CAST(SUM(amount) AS BIGINT) FROM journal WHERE mti = '0220' AND state = ? GROUP BY pan"
    #: The purchases and refunds once approved, of transmission times in a
    #: range (the reconciliation file's day), of every sender or of one.
    MONEY_MOVED_BETWEEN = _MONEY_MOVED + " ORDER BY sender, time, stan"
    MONEY_MOVED_BETWEEN_OF_SENDER = _MONEY_MOVED + " AND sender = ? ORDER BY time, stan"

    def __init__(self, conn, path):
        self.conn = conn
        self.path = path
        if type(self)._execute is LedgerStore._execute:
            # The same as the method below, one Python call less on the
            # writer's path.
            self._execute = conn.execute

    def _execute(self, sql, params=()):
        """
        Run one statement written with C{?} placeholders; the cursor. A
        store whose driver wants other placeholders overrides this.
        """
        return self.conn.execute(sql, params)

    def close(self):
        self.conn.close()

    # -- what a database that is not one file adds --------------------------

    def lockAccounts(self, pans):
        """
        Lock the accounts of C{pans} for the rest of the transaction, in
        card-number order, before a batch touches them. SQLite's C{BEGIN
        IMMEDIATE} has locked everything already: nothing to do.
        """

    def lost(self, error):
        """
        Whether C{error} means the connection to the database is gone.
        """
        return False

    def retryable(self, error):
        """
        Whether C{error} rolled the transaction back for a reason that
        running it again can cure (a deadlock with another node).
        """
        return False

    def reconnect(self):
        """
        Connect again after L{lost}; raise L{LedgerError} if the database
        is still away.
        """
        raise LedgerError("ledger %s cannot reconnect" % (self.path,))

    # -- transactions ------------------------------------------------------

    def begin(self):
        self._execute(self.BEGIN)

    def commit(self):
        self._execute(self.COMMIT)

    def rollback(self):
        self._execute(self.ROLLBACK)

    def savepoint(self):
        self._execute(self.SAVEPOINT)

    def rollbackToSavepoint(self):
        self._execute(self.ROLLBACK_TO_SAVEPOINT)

    def releaseSavepoint(self):
        self._execute(self.RELEASE_SAVEPOINT)

    @contextlib.contextmanager
    def transaction(self):
        """
        One transaction around the C{with} block: committed if it ends
        normally, rolled back if it raises.
        """
        self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @contextlib.contextmanager
    def snapshot(self):
        """
        One read-only transaction around the C{with} block: every read in
        it sees the ledger as it was at its first (a consistent
        reconciliation while payment nodes write).
        """
        self._execute(self.SNAPSHOT)
        try:
            yield self
        finally:
            self.rollback()

    # -- accounts ----------------------------------------------------------

    def insertAccount(self, pan, balance, status, now):
        """
        Add an account with C{balance} as its balance and opening balance.

        @return: C{False} (and nothing changed) if C{pan} already has one.
        """
        try:
            self._execute(self.ACCOUNT_INSERT, (pan, balance, balance, status, now))
        except self.IntegrityError:
            return False
        return True

    def account(self, pan):
        """
        The account of C{pan} as a C{dict} of L{ACCOUNT_COLUMNS}, or C{None}.
        """
        row = self._execute(self.ACCOUNT, (pan,)).fetchone()
        return None if row is None else dict(zip(ACCOUNT_COLUMNS, row))

    def accounts(self):
        """
        Every account, as C{dict}s ordered by card number.
        """
        return [dict(zip(ACCOUNT_COLUMNS, row)) for row in self._execute(self.ACCOUNTS).fetchall()]

    def setStatus(self, pan, status):
        self._execute(self.ACCOUNT_SET_STATUS, (status, pan))

    def balanceAndStatus(self, pan):
        """
        C{(balance, status)} of the account of C{pan}, about to be
        debited, or C{None}.
        """
        return self._execute(self.ACCOUNT_FOR_CHANGE, (pan,)).fetchone()

    def balance(self, pan):
        """
        The balance of C{pan}, or C{None} if it has no account.
        """
        row = self._execute(self.ACCOUNT_BALANCE, (pan,)).fetchone()
        return None if row is None else row[0]

    def credit(self, pan, fen):
        """
        Add C{fen} (below zero: take it) to the balance of C{pan}.
        """
        self._execute(self.ACCOUNT_CREDIT, (fen, pan))

    # -- the journal -------------------------------------------------------

    def recorded(self, key):
        """
        C{(fingerprint, answer)} of the entry under C{key}, or C{None}.
        """
        row = self._execute(self.JOURNAL_ANSWER, key).fetchone()
        return None if row is None else (row[0], json.loads(row[1]))

    def entry(self, key):
        """
        The entry under C{key} as a C{dict} of L{JOURNAL_COLUMNS} (its
        C{answer} decoded) with its C{key} and C{orig} key, or C{None}.
        """
        row = self._execute(self.JOURNAL_ENTRY, key).fetchone()
        return None if row is None else _journalDict(row)

    def recent(self, limit):
        """
        The last C{limit} entries, newest first, as L{entry} gives them.
        """
        return [_journalDict(row) for row in self._execute(self.JOURNAL_RECENT, (int(limit),)).fetchall()]

    def state(self, key):
        """
        The state of the entry under C{key}, or C{None}.
        """
        row = self._execute(self.JOURNAL_STATE, key).fetchone()
        return None if row is None else row[0]

    def original(self, key):
        """
        The entry under C{key} that a refund or reversal is about to
        change, as C{(id, mti, proc, pan, amount, state, refunded,
        orig_sender, orig_stan, orig_time)}, or C{None}.
        """
        return self._execute(self.JOURNAL_ORIGINAL, key).fetchone()

    def reversalRecorded(self, key):
        """
        Whether a C{0420} reversal of C{key} is in the journal.
        """
        return self._execute(self.JOURNAL_REVERSAL_OF, key).fetchone() is not None

    def record(self, key, mti, proc, pan, amount, order, origMti, origKey, state, answer, fingerprint, now):
        """
        Journal a request under C{key} with its C{answer} (a C{dict} with
        its C{resp}). C{origKey} is a key or C{(None, None, None)}.
        """
        self._execute(
            self.JOURNAL_INSERT,
            tuple(key)
            + (mti, proc, pan, amount, order, origMti)
            + tuple(origKey)
            + (answer["resp"], state, json.dumps(answer, separators=(",", ":")), fingerprint, now),
        )

    def addRefunded(self, entryId, fen, state):
        """
        Count C{fen} more refunded of the purchase entry C{entryId}, now in
        C{state}.
        """
        self._execute(self.JOURNAL_ADD_REFUNDED, (fen, state, entryId))

    def setState(self, entryId, state, clearRefunded=False):
        """
        Put entry C{entryId} in C{state} (and count nothing refunded of it
        if C{clearRefunded}).
        """
        if clearRefunded:
            self._execute(self.JOURNAL_SET_STATE_UNREFUNDED, (state, entryId))
        else:
            self._execute(self.JOURNAL_SET_STATE, (state, entryId))

    def setRefundsState(self, purchaseKey, fromState, toState):
        """
        Put every refund of C{purchaseKey} in C{fromState} in C{toState}.
        """
        self._execute(self.JOURNAL_SET_REFUNDS_STATE, (toState, fromState) + tuple(purchaseKey))

    def takeBackRefund(self, purchaseKey, fen, refunded, standing):
        """
        Count C{fen} less refunded of the purchase under C{purchaseKey};
        if it was C{refunded} and nothing stays refunded, it is
        C{standing} again.
        """
        self._execute(self.JOURNAL_TAKE_BACK_REFUND, (fen, refunded, fen, standing) + tuple(purchaseKey))

    def purchasedByCard(self, proc, states):
        """
        C{{pan: fen}}: the sum of the C{0200} requests with processing
        code C{proc} in one of the two C{states}, by card.
        """
        return dict(self._execute(self.PURCHASED_BY_CARD, (proc,) + tuple(states)).fetchall())

    def refundedByCard(self, state):
        """
        C{{pan: fen}}: the sum of the C{0220} requests in C{state}, by card.
        """
        return dict(self._execute(self.REFUNDED_BY_CARD, (state,)).fetchall())

    def moneyMovedBetween(self, start, end, sender=None, applied=None):
        """
        The approved purchases and refunds (C{resp} C{00}, whatever became
        of them since) with transmission times from C{start} to before
        C{end} (C{MMDDhhmmss}), of C{sender} or of every sender: C{dict}s
        with C{sender}, C{stan}, C{time}, C{mti}, C{proc}, C{pan},
        C{amount}, C{resp}, C{state}, C{refunded}, by sender and time.

        @param applied: C{(from, to)}, ISO 8601 UTC texts: only entries
            applied from C{from} to before C{to} (a transmission time has
            no year: this keeps another year's same date out).
        """
        columns = ("sender", "stan", "time", "mti", "proc", "pan", "amount", "resp", "state", "refunded")
        applied = tuple(applied) if applied is not None else ("", "~")
        if sender is None:
            cursor = self._execute(self.MONEY_MOVED_BETWEEN, (start, end) + applied)
        else:
            cursor = self._execute(self.MONEY_MOVED_BETWEEN_OF_SENDER, (start, end) + applied + (sender,))
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def openLedgerStore(where, create=True, busy_timeout=5.0):
    """
    The store of the ledger C{where} names: a C{postgresql://} URL, or a
    SQLite path.
    """
    if pgsql.isURL(where):
        from tvlink.store.ledgerpostgresql import PostgreSQLLedgerStore

        return PostgreSQLLedgerStore.open(where, create=create, connect_timeout=max(busy_timeout, 1.0))
    from tvlink.store.ledgersqlite import SQLiteLedgerStore

    return SQLiteLedgerStore.open(where, create=create, busy_timeout=busy_timeout)
