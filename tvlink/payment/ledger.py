"""
The payment side's account ledger on SQLite: accounts, a journal of every
request applied, and one writer thread with group commit.

L{PaymentLedger} is the default L{IAccountBackend}. Requests are applied
by one writer thread, off the reactor: every request that arrived while a
commit was running goes into the next transaction, so throughput is not
capped at the disk's fsync rate. An answer is delivered (on the reactor
thread) only once the transaction holding it is durable (WAL,
C{synchronous=FULL}).

The rules, per WIRE.md, are those of L{applyMessage}. Every request of
type C{0200}, C{0220} or C{0420} is journalled under its key (sender,
stan, time) with its answer, so a repeat gets exactly the first answer.

A caller that stops waiting (the L{LedgerHandler}'s back-end timeout)
calls L{PaymentLedger.abandon}: work the writer has not started is
journalled as not applied (C{91}) and answered C{91} once that is durable;
work the writer has started is committed as it is and answered with its
real result. Nothing is ever applied and then undone behind its caller's
back, so no answer can say "not applied" of money that moved.

The synchronous functions below (L{connect}, L{openAccount}, ...) are the
one body of SQL, shared by the writer thread and by the admin command.
"""

import json
import os
import pathlib
import queue
import sqlite3
import threading
import time

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tvlink.errors import TVLinkError
from tvlink.link import wire
from tvlink.link.settings import globalReactor
from tvlink.masking import maskCard as maskPan
from tvlink.payment.backend import DEFAULT_BACKEND_TIMEOUT, IAbandonableBackend, IAccountBackend, LedgerHandler
from tvlink.payment.service import PaymentService

__all__ = [
    "IAbandonableBackend",
    "IAccountBackend",
    "LedgerHandler",
    "LedgerPaymentService",
    "PaymentLedger",
    "maskPan",
    "parseLedgerSpec",
]

#: The schema this module writes (PRAGMA user_version).
SCHEMA_VERSION = 1

#: Journal states. A purchase ends approved, refunded (wholly or partly),
#: declined or reversed; every other request approved or declined.
APPROVED = "approved"
DECLINED = "declined"
REVERSED = "reversed"
REFUNDED = "refunded"
UNKNOWN = "unknown"

ACTIVE = "active"
FROZEN = "frozen"

PURCHASE = "000000"
REFUND = "200000"
BALANCE = "300000"
STATUS = "330000"

#: Journalled request types; other MTIs are answered without a trace.
JOURNALLED = ("0200", "0220", "0420")

#: Largest amount or opening balance: 12 digits of fen.
MAX_AMOUNT = 999999999999

_SCHEMA = (
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

_JOURNAL_COLUMNS = (
    "id", "sender", "stan", "time", "mti", "proc", "pan", "amount", "order_id",
    "orig_mti", "orig_sender", "orig_stan", "orig_time", "resp", "state",
    "refunded", "answer", "applied_at",
)
_ACCOUNT_COLUMNS = ("pan", "balance", "opening", "status", "opened_at")


class LedgerError(TVLinkError):
    """
    The ledger could not do what was asked.
    """


class LedgerClosed(LedgerError):
    """
    The ledger is closed or closing; nothing was applied.
    """


class StillApplying(LedgerError):
    """
    A cancelled request that the writer had already started: it will be
    committed as it is (its outcome is then in the journal, see
    L{PaymentLedger.stateOf}); whether money moved is not known yet.
    """


class LedgerNotFound(LedgerError):
    """
    There is no ledger file at the path given.
    """


class NotALedger(LedgerError):
    """
    The file is not a tvlink ledger (not SQLite, or no ledger schema).
    """


class UnknownAccount(LedgerError):
    """
    No account has that card number.
    """


class DuplicateAccount(LedgerError):
    """
    An account with that card number is already open.
    """


class BadAmount(LedgerError, ValueError):
    """
    An amount or balance that is not a whole number of fen in range.
    """


class BadCardNumber(LedgerError, ValueError):
    """
    A card number that is not 12 to 19 decimal digits.
    """


def parseLedgerSpec(spec):
    """
    Parse a C{--ledger} value: C{"memory"} or C{"sqlite:PATH"}.

    @return: C{("memory", None)} or C{("sqlite", PATH)}.
    @raise ValueError: for anything else.
    """
    if spec == "memory":
        return ("memory", None)
    if isinstance(spec, str) and spec.startswith("sqlite:"):
        path = spec[len("sqlite:"):]
        if path:
            return ("sqlite", path)
        raise ValueError("sqlite: needs a path, e.g. sqlite:tvlink-ledger.db")
    raise ValueError("expected sqlite:PATH or memory, not %r" % (spec,))


def checkPan(pan):
    """
    C{pan} if it is 12 to 19 decimal digits, else L{BadCardNumber}.
    """
    if not (isinstance(pan, str) and pan.isascii() and pan.isdigit()):
        raise BadCardNumber("card number must be 12 to 19 decimal digits, not a value with other characters")
    if not 12 <= len(pan) <= 19:
        raise BadCardNumber("card number must be 12 to 19 decimal digits, not %d" % (len(pan),))
    return pan


def checkBalance(balance):
    """
    C{balance} in fen as an C{int}, from an C{int} or a string of digits.

    @raise BadAmount: if it is not a whole number from 0 to 999999999999.
    """
    if isinstance(balance, str):
        if not (balance.isascii() and balance.isdigit()):
            raise BadAmount("amount must be a whole number of fen (e.g. 100000 for 1000.00), not %r" % (balance,))
        balance = int(balance)
    if type(balance) is not int or not 0 <= balance <= MAX_AMOUNT:
        raise BadAmount("amount must be a whole number of fen from 0 to %d, not %r" % (MAX_AMOUNT, balance))
    return balance


def formatFen(fen):
    """
    C{123456} -> C{"1234.56"}.
    """
    sign = "-" if fen < 0 else ""
    return "%s%d.%02d" % (sign, abs(fen) // 100, abs(fen) % 100)


def wallclockText(seconds):
    """
    An ISO 8601 UTC timestamp for a record (never used for deadlines).
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# -- the SQL, synchronous ------------------------------------------------


def connect(path, create=True, busy_timeout=5.0):
    """
    Open the ledger at C{path}: WAL, C{synchronous=FULL}, a busy timeout,
    the schema checked (and created when C{create}).

    @return: a C{sqlite3.Connection} in autocommit mode (transactions are
        begun explicitly), usable from one thread at a time.
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
    try:
        conn.execute("PRAGMA busy_timeout = %d" % (int(busy_timeout * 1000),))
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        _ensureSchema(conn, path, create)
    except sqlite3.DatabaseError as e:
        conn.close()
        if "not a database" in str(e) or "malformed" in str(e):
            raise NotALedger("%s is not a SQLite database: %s" % (path, e)) from None
        raise LedgerError("cannot open ledger %s: %s" % (path, e)) from None
    except LedgerError:
        conn.close()
        raise
    return conn


def _ensureSchema(conn, path, create):
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise LedgerError(
            "ledger %s has schema version %d; this tvlink knows %d" % (path, version, SCHEMA_VERSION)
        )
    if not create:
        raise NotALedger("%s is not a tvlink ledger (no ledger tables)" % (path,))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def openAccount(conn, pan, balance, now):
    """
    Open an active account with an opening balance in fen.

    @raise BadCardNumber, BadAmount, DuplicateAccount: as they say.
    """
    pan = checkPan(pan)
    balance = checkBalance(balance)
    try:
        conn.execute(
            "INSERT INTO accounts (pan, balance, opening, status, opened_at) VALUES (?, ?, ?, ?, ?)",
            (pan, balance, balance, ACTIVE, now),
        )
    except sqlite3.IntegrityError:
        raise DuplicateAccount("an account for card %s is already open" % (maskPan(pan),)) from None
    return getAccount(conn, pan)


def getAccount(conn, pan):
    """
    The account of C{pan} as a C{dict}.

    @raise UnknownAccount: if there is none.
    """
    row = conn.execute(
        "SELECT pan, balance, opening, status, opened_at FROM accounts WHERE pan = ?", (pan,)
    ).fetchone()
    if row is None:
        raise UnknownAccount("no account for card %s" % (maskPan(pan),))
    return dict(zip(_ACCOUNT_COLUMNS, row))


def listAccounts(conn):
    """
    Every account, as C{dict}s ordered by card number.
    """
    rows = conn.execute(
        "SELECT pan, balance, opening, status, opened_at FROM accounts ORDER BY pan"
    ).fetchall()
    return [dict(zip(_ACCOUNT_COLUMNS, row)) for row in rows]


def setStatus(conn, pan, status):
    """
    Freeze or unfreeze an account.

    @return: the status it had before.
    @raise UnknownAccount: if there is none.
    """
    if status not in (ACTIVE, FROZEN):
        raise ValueError("status must be %r or %r, not %r" % (ACTIVE, FROZEN, status))
    before = getAccount(conn, pan)["status"]
    conn.execute("UPDATE accounts SET status = ? WHERE pan = ?", (status, pan))
    return before


def _journalDict(row):
    entry = dict(zip(_JOURNAL_COLUMNS, row))
    entry["answer"] = json.loads(entry["answer"])
    entry["key"] = (entry["sender"], entry["stan"], entry["time"])
    if entry["orig_sender"] is not None:
        entry["orig"] = (entry["orig_sender"], entry["orig_stan"], entry["orig_time"])
    else:
        entry["orig"] = None
    return entry


_SELECT_JOURNAL = "SELECT %s FROM journal" % (", ".join(_JOURNAL_COLUMNS),)


def journalEntry(conn, key):
    """
    The journal entry under C{key} (sender, stan, time) as a C{dict}, or
    C{None}.
    """
    row = conn.execute(
        _SELECT_JOURNAL + " WHERE sender = ? AND stan = ? AND time = ?", _normalKey(key)
    ).fetchone()
    return None if row is None else _journalDict(row)


def recentJournal(conn, limit=20):
    """
    The last C{limit} journal entries, newest first.
    """
    rows = conn.execute(_SELECT_JOURNAL + " ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
    return [_journalDict(row) for row in rows]


def reconcile(conn):
    """
    Check every account: opening balance - approved and unreversed
    purchases + unreversed refunds = balance.

    @return: a C{dict}: C{accounts} (each with C{opening}, C{purchased},
        C{refunded}, C{balance}, C{expected}), C{mismatches} (their card
        numbers) and the totals.
    """
    purchased = dict(
        conn.execute(
            "SELECT pan, SUM(amount) FROM journal WHERE mti = '0200' AND proc = ? AND state IN (?, ?)"
            " GROUP BY pan",
            (PURCHASE, APPROVED, REFUNDED),
        ).fetchall()
    )
    refunded = dict(
        conn.execute(
            "SELECT pan, SUM(amount) FROM journal WHERE mti = '0220' AND state = ? GROUP BY pan",
            (APPROVED,),
        ).fetchall()
    )
    accounts = []
    mismatches = []
    totals = {"opening": 0, "purchased": 0, "refunded": 0, "balance": 0}
    for account in listAccounts(conn):
        pan = account["pan"]
        entry = {
            "pan": pan,
            "opening": account["opening"],
            "purchased": purchased.get(pan) or 0,
            "refunded": refunded.get(pan) or 0,
            "balance": account["balance"],
        }
        entry["expected"] = entry["opening"] - entry["purchased"] + entry["refunded"]
        if entry["expected"] != entry["balance"]:
            mismatches.append(pan)
        for name in totals:
            totals[name] += entry[name]
        accounts.append(entry)
    return {"accounts": accounts, "mismatches": mismatches, "totals": totals}


# -- the rules -------------------------------------------------------------


class Outcome:
    """
    What applying one request came to.

    @ivar answer: the answer C{dict}.
    @ivar key: the request's key.
    @ivar moved: whether this application moved money (a fresh approved
        purchase or refund).
    @ivar events: log events, emitted later on the reactor thread, as
        C{(level, format, fields)}.
    """

    __slots__ = ("answer", "key", "moved", "events")

    def __init__(self, answer, key=None, moved=False, events=()):
        self.answer = answer
        self.key = key
        self.moved = moved
        self.events = list(events)


def _normalKey(key):
    sender, stan, when = key
    return (sender, stan, "" if when is None else when)


def _origKey(message):
    """
    The key of C{message["orig"]}, or C{None} if it is missing or not
    usable.
    """
    orig = message.get("orig")
    if not isinstance(orig, dict):
        return None
    sender, stan, when = orig.get("sender"), orig.get("stan"), orig.get("time", "")
    if not (isinstance(sender, str) and sender and isinstance(stan, str) and stan and isinstance(when, str)):
        return None
    return (sender, stan, when)


def _amount(value):
    """
    A wire amount (12 digits, not zero) as an C{int}, or C{None}.
    """
    if isinstance(value, str) and len(value) == 12 and value.isascii() and value.isdigit():
        amount = int(value)
        if amount > 0:
            return amount
    return None


def _fingerprint(message):
    orig = message.get("orig")
    origKey = None
    if isinstance(orig, dict):
        origKey = [orig.get("mti"), orig.get("sender"), orig.get("stan"), orig.get("time")]
    fields = [message.get(name) for name in ("mti", "proc", "pan", "amount", "currency")]
    return json.dumps(fields + [origKey], default=repr, separators=(",", ":"))


def _reversedBefore(conn, key):
    """
    Whether a reversal of C{key} was recorded (it overtook its original).
    """
    return (
        conn.execute(
            "SELECT 1 FROM journal WHERE mti = '0420' AND orig_sender = ? AND orig_stan = ?"
            " AND orig_time = ? LIMIT 1",
            key,
        ).fetchone()
        is not None
    )


def _event(level, format, **fields):
    fields.setdefault("ledger_event", level)
    return (level, format, fields)


def applyMessage(conn, message, now, cancelled=False):
    """
    Apply request C{message} inside the caller's transaction.

    @param now: the wall-clock timestamp text to record.
    @param cancelled: the caller abandoned it before the writer started
        it: a purchase or refund is then journalled as C{91} and not
        applied, so a repeat is answered C{91} too (other requests are
        applied as usual).
    @return: an L{Outcome}.
    """
    mti = message.get("mti")
    if mti == "0820":
        return Outcome({"resp": wire.APPROVED})
    if mti not in JOURNALLED:
        return Outcome(
            {"resp": wire.INVALID_TRANSACTION},
            events=[_event("info", "ledger: message type {mti} not supported; answered 12", mti=mti)],
        )
    sender, stan, when = message.get("sender"), message.get("stan"), message.get("time", "")
    if not (isinstance(sender, str) and isinstance(stan, str) and isinstance(when, str)):
        return Outcome({"resp": wire.FORMAT_ERROR})
    key = (sender, stan, when)
    fingerprint = _fingerprint(message)
    row = conn.execute(
        "SELECT fingerprint, answer FROM journal WHERE sender = ? AND stan = ? AND time = ?", key
    ).fetchone()
    if row is not None:
        if row[0] == fingerprint:
            return Outcome(json.loads(row[1]), key)
        return Outcome(
            {"resp": wire.DUPLICATE},
            key,
            events=[
                _event(
                    "warn",
                    "ledger: {key} reused for a different {mti} request; answered 94",
                    key="/".join(key),
                    mti=mti,
                )
            ],
        )
    entry = _Entry(conn, message, key, now)
    proc = message.get("proc")
    if mti == "0420":
        entry.reversal()
    elif cancelled and ((mti == "0200" and proc == PURCHASE) or (mti == "0220" and proc == REFUND)):
        entry.decline(wire.DESTINATION_UNAVAILABLE, "abandoned by the caller before it was applied")
    elif mti == "0220":
        if proc == REFUND:
            entry.refund()
        else:
            entry.decline(wire.INVALID_TRANSACTION, "0220 with processing code %r" % (proc,))
    elif proc == PURCHASE:
        entry.purchase()
    elif proc == BALANCE:
        entry.balanceInquiry()
    elif proc == STATUS:
        entry.statusInquiry()
    else:
        entry.decline(wire.INVALID_TRANSACTION, "0200 with processing code %r" % (proc,))
    entry.record(fingerprint)
    return Outcome(entry.answer, key, entry.moved, entry.events)


class _Entry:
    """
    One request being decided and journalled, in the writer's transaction.
    """

    def __init__(self, conn, message, key, now):
        self.conn = conn
        self.message = message
        self.key = key
        self.now = now
        self.pan = message.get("pan") if isinstance(message.get("pan"), str) else None
        self.amount = _amount(message.get("amount"))
        self.orig = _origKey(message)
        self.answer = None
        self.state = None
        self.moved = False
        self.events = []

    # outcomes

    def approve(self, **fields):
        self.answer = dict(fields, resp=wire.APPROVED)
        self.state = APPROVED

    def decline(self, resp, reason, state=DECLINED):
        self.answer = {"resp": resp}
        self.state = state
        self.events.append(
            _event(
                "info",
                "ledger: {mti}/{proc} {key} card {pan} declined {resp}: {reason}",
                mti=self.message.get("mti"),
                proc=self.message.get("proc"),
                key="/".join(self.key),
                pan=maskPan(self.pan),
                resp=resp,
                reason=reason,
            )
        )

    def record(self, fingerprint):
        message = self.message
        orig = message.get("orig")
        origMti = orig.get("mti") if isinstance(orig, dict) and isinstance(orig.get("mti"), str) else None
        origKey = self.orig or (None, None, None)
        order = message.get("order")
        self.conn.execute(
            "INSERT INTO journal (sender, stan, time, mti, proc, pan, amount, order_id, orig_mti,"
            " orig_sender, orig_stan, orig_time, resp, state, answer, fingerprint, applied_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.key
            + (
                message["mti"],
                message.get("proc") if isinstance(message.get("proc"), str) else None,
                self.pan,
                self.amount,
                order if isinstance(order, str) else None,
                origMti,
            )
            + origKey
            + (
                self.answer["resp"],
                self.state,
                json.dumps(self.answer, separators=(",", ":")),
                fingerprint,
                self.now,
            ),
        )

    # helpers

    def _money(self):
        """
        Check the card and amount fields of a purchase or refund; decline
        and return C{False} when they fail.
        """
        message = self.message
        if self.pan is None or not self.pan or not isinstance(message.get("amount"), str):
            self.decline(wire.FORMAT_ERROR, "card number or amount missing")
            return False
        if self.amount is None:
            self.decline(wire.INVALID_AMOUNT, "amount is not 12 digits of fen above zero")
            return False
        currency = message.get("currency", "156")
        if currency != "156":
            self.decline(wire.INVALID_AMOUNT, "currency %r is not 156" % (currency,))
            return False
        if _reversedBefore(self.conn, self.key):
            self.decline(
                wire.INVALID_TRANSACTION, "its reversal arrived first; not applied", state=REVERSED
            )
            return False
        return True

    def _account(self):
        return self.conn.execute(
            "SELECT balance, status FROM accounts WHERE pan = ?", (self.pan,)
        ).fetchone()

    def _original(self, key):
        return self.conn.execute(
            "SELECT id, mti, proc, pan, amount, state, refunded, orig_sender, orig_stan, orig_time"
            " FROM journal WHERE sender = ? AND stan = ? AND time = ?",
            key,
        ).fetchone()

    def _credit(self, pan, amount):
        self.conn.execute("UPDATE accounts SET balance = balance + ? WHERE pan = ?", (amount, pan))

    # the request types

    def purchase(self):
        if not self._money():
            return
        account = self._account()
        if account is None:
            self.decline(wire.INVALID_CARD, "no such account")
            return
        balance, status = account
        if status != ACTIVE:
            self.decline(wire.INVALID_CARD, "account is %s" % (status,))
            return
        if balance < self.amount:
            self.decline(wire.INSUFFICIENT_FUNDS, "balance below the amount")
            return
        self._credit(self.pan, -self.amount)
        self.approve()
        self.moved = True

    def refund(self):
        if self.orig is None:
            self.decline(wire.FORMAT_ERROR, "refund without a usable orig")
            return
        if not self._money():
            return
        original = self._original(self.orig)
        if original is None:
            self.decline(wire.ORIGINAL_NOT_FOUND, "original %s not found" % ("/".join(self.orig),))
            return
        oid, mti, proc, pan, amount, state, refunded = original[:7]
        if mti != "0200" or proc != PURCHASE:
            self.decline(wire.ORIGINAL_NOT_FOUND, "original %s is not a purchase" % ("/".join(self.orig),))
            return
        if state not in (APPROVED, REFUNDED):
            self.decline(wire.INVALID_TRANSACTION, "original purchase is %s" % (state,))
            return
        if pan != self.pan:
            self.decline(wire.INVALID_TRANSACTION, "original purchase was on another card")
            return
        if self.amount > amount - refunded:
            self.decline(
                wire.INVALID_AMOUNT,
                "refund of %d fen exceeds the %d fen left of the purchase" % (self.amount, amount - refunded),
            )
            return
        self._credit(pan, self.amount)
        self.conn.execute(
            "UPDATE journal SET refunded = refunded + ?, state = ? WHERE id = ?",
            (self.amount, REFUNDED, oid),
        )
        self.approve()
        self.moved = True

    def balanceInquiry(self):
        if self.pan is None or not self.pan:
            self.decline(wire.FORMAT_ERROR, "card number missing")
            return
        account = self._account()
        if account is None:
            self.decline(wire.INVALID_CARD, "no such account")
            return
        # A forced reversal can leave a balance below zero; the wire has
        # 12 unsigned digits, so it shows as zero.
        self.approve(balance="%012d" % (max(account[0], 0),))

    def statusInquiry(self):
        if self.orig is None:
            self.decline(wire.FORMAT_ERROR, "status inquiry without a usable orig")
            return
        self.approve(state=stateOf(self.conn, self.orig))

    def reversal(self):
        if self.orig is None:
            self.decline(wire.FORMAT_ERROR, "reversal without a usable orig")
            return
        original = self._original(self.orig)
        origText = "/".join(self.orig)
        if original is None:
            # The reversal overtook its original: this row is the
            # tombstone that declines the original should it come later.
            self.events.append(
                _event(
                    "info",
                    "ledger: reversal {key} of {orig}, never seen: acknowledged without moving money;"
                    " the original will be declined if it arrives",
                    key="/".join(self.key),
                    orig=origText,
                )
            )
        else:
            self.events.extend(undo(self.conn, original, self.orig))
        self.approve()


def undo(conn, original, key):
    """
    Undo the journalled request C{original} (a row as L{_Entry._original}
    reads it, under C{key}) if it moved money and still stands: an
    approved purchase is credited back less its refunds, which are
    reversed with it; an approved refund is debited back, even below zero
    (a reversal is a forced posting). Anything else is left as it is.

    @return: log events.
    """
    oid, mti, proc, pan, amount, state, refunded, origSender, origStan, origTime = original
    origText = "/".join(key)
    events = []
    if mti == "0200" and proc == PURCHASE and state in (APPROVED, REFUNDED):
        conn.execute("UPDATE accounts SET balance = balance + ? WHERE pan = ?", (amount - refunded, pan))
        conn.execute("UPDATE journal SET state = ?, refunded = 0 WHERE id = ?", (REVERSED, oid))
        if refunded:
            conn.execute(
                "UPDATE journal SET state = ? WHERE mti = '0220' AND state = ? AND orig_sender = ?"
                " AND orig_stan = ? AND orig_time = ?",
                (REVERSED, APPROVED) + tuple(key),
            )
        events.append(
            _event(
                "info",
                "ledger: purchase {orig} on card {pan} reversed: {fen} fen back",
                orig=origText,
                pan=maskPan(pan),
                fen=amount - refunded,
            )
        )
    elif mti == "0220" and state == APPROVED:
        conn.execute("UPDATE accounts SET balance = balance - ? WHERE pan = ?", (amount, pan))
        conn.execute("UPDATE journal SET state = ? WHERE id = ?", (REVERSED, oid))
        if origSender is not None:
            conn.execute(
                "UPDATE journal SET refunded = refunded - ?,"
                " state = CASE WHEN state = ? AND refunded - ? = 0 THEN ? ELSE state END"
                " WHERE sender = ? AND stan = ? AND time = ?",
                (amount, REFUNDED, amount, APPROVED, origSender, origStan, origTime),
            )
        balance = conn.execute("SELECT balance FROM accounts WHERE pan = ?", (pan,)).fetchone()
        events.append(
            _event(
                "info",
                "ledger: refund {orig} on card {pan} reversed: {fen} fen taken back",
                orig=origText,
                pan=maskPan(pan),
                fen=amount,
            )
        )
        if balance is not None and balance[0] < 0:
            events.append(
                _event(
                    "warn",
                    "ledger: card {pan} is {fen} fen overdrawn after reversing refund {orig}",
                    pan=maskPan(pan),
                    fen=-balance[0],
                    orig=origText,
                )
            )
    else:
        events.append(
            _event(
                "info",
                "ledger: reversal of {orig} ({mti}, {state}): nothing to undo",
                orig=origText,
                mti=mti,
                state=state,
            )
        )
    return events


def stateOf(conn, key):
    """
    What became of the request C{key}: C{approved}, C{declined},
    C{reversed}, C{refunded}, or C{unknown} if it was never seen (but
    C{reversed} if its reversal was).
    """
    key = _normalKey(key)
    row = conn.execute(
        "SELECT state FROM journal WHERE sender = ? AND stan = ? AND time = ?", key
    ).fetchone()
    if row is not None:
        return row[0]
    return REVERSED if _reversedBefore(conn, key) else UNKNOWN


# -- the writer ------------------------------------------------------------


class _Work:
    """
    One piece of work for the writer: C{run(conn, now, work)}, and the
    L{Deferred} of its result.

    The flags are set under the ledger's lock. C{started}: the writer has
    begun applying it (from then on it is committed as it is).
    C{abandoned}: its caller stopped waiting (L{PaymentLedger.abandon} or
    a cancellation). C{cancelled}: abandoned before it was started, so a
    purchase or refund is journalled C{91} and not applied; never set once
    C{started}. C{done}: its transaction has ended and C{result} is final.
    """

    __slots__ = ("run", "deferred", "cancelled", "abandoned", "started", "done", "result")

    def __init__(self, run):
        self.run = run
        self.deferred = None
        self.cancelled = False
        self.abandoned = False
        self.started = False
        self.done = False
        self.result = None


_STOP = object()


@implementer(IAbandonableBackend)
class PaymentLedger:
    """
    Accounts and the journal of applied requests in one SQLite file, with
    one writer thread doing group commit.

    Nothing is opened until L{open} (or the first request). Every method
    that reads or writes returns a L{Deferred} that fires on the reactor
    thread once the transaction it ran in is durable.

    @param path: the SQLite file (created if missing); read when the
        ledger is opened.
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

    #: The most pieces of work one transaction takes.
    maxBatch = 1000

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
        conn = connect(self.path, create=True, busy_timeout=self.busy_timeout)
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(conn, self._queue), name="tvlink-ledger-writer", daemon=True
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
        self._queue.put(_STOP)
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
            if work is not _STOP and not work.deferred.called:
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
            "queued": self._queue.qsize() if self._queue is not None else 0,
        }

    # -- submitting --------------------------------------------------------

    def _submit(self, run):
        if self.state == "new":
            try:
                self.open()
            except LedgerError as e:
                return fail(e)
        if self.state != "open":
            return fail(LedgerClosed("ledger %s is %s" % (self.path, self.state)))
        work = _Work(run)
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
        return self._submit(lambda conn, now, work: applyMessage(conn, message, now, work.cancelled))

    def openAccount(self, pan, balance):
        """
        Open an active account for card C{pan} with C{balance} fen.

        @return: a L{Deferred} of the account C{dict}, or failing with
            L{DuplicateAccount}, L{BadCardNumber} or L{BadAmount}.
        """
        return self._submit(lambda conn, now, work: openAccount(conn, pan, balance, now))

    def account(self, pan):
        """
        A L{Deferred} of the account C{dict} of C{pan} (C{pan},
        C{balance}, C{opening}, C{status}, C{opened_at}), or failing with
        L{UnknownAccount}.
        """
        return self._submit(lambda conn, now, work: getAccount(conn, pan))

    def accounts(self):
        """
        A L{Deferred} of every account C{dict}.
        """
        return self._submit(lambda conn, now, work: listAccounts(conn))

    def freeze(self, pan):
        """
        Freeze the account of C{pan}: purchases on it are declined C{14}.
        A L{Deferred} of its status before.
        """
        return self._submit(lambda conn, now, work: setStatus(conn, pan, FROZEN))

    def unfreeze(self, pan):
        """
        Make the account of C{pan} active again. A L{Deferred} of its
        status before.
        """
        return self._submit(lambda conn, now, work: setStatus(conn, pan, ACTIVE))

    def entry(self, key):
        """
        A L{Deferred} of the journal entry C{dict} under C{key}, or
        C{None}.
        """
        return self._submit(lambda conn, now, work: journalEntry(conn, key))

    def stateOf(self, key):
        """
        A L{Deferred} of what became of the request C{key} (as a status
        inquiry would answer).
        """
        return self._submit(lambda conn, now, work: stateOf(conn, key))

    def recent(self, limit=20):
        """
        A L{Deferred} of the last C{limit} journal entries, newest first.
        """
        return self._submit(lambda conn, now, work: recentJournal(conn, limit))

    def reconcile(self):
        """
        A L{Deferred} of L{reconcile}'s report.
        """
        return self._submit(lambda conn, now, work: reconcile(conn))

    # -- the writer thread ---------------------------------------------------

    def _run(self, conn, q):
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
                if batch[-1] is _STOP:
                    batch.pop()
                    stop = True
                if batch:
                    self._commit(conn, batch)
        finally:
            conn.close()
            self.reactor.callFromThread(self._closed, threading.current_thread(), q)

    def _commit(self, conn, batch):
        now = wallclockText(self._wallclock())
        started = time.perf_counter()
        results = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work in batch:
                # From here on an abandon() cannot stop this work: it is
                # applied (or not, if abandoned already) and committed as
                # it is, and its caller gets the real answer.
                with self._lock:
                    work.started = True
                conn.execute("SAVEPOINT work")
                try:
                    result = work.run(conn, now, work)
                except BaseException:
                    result = Failure()
                    conn.execute("ROLLBACK TO work")
                conn.execute("RELEASE work")
                results.append(result)
            if self._beforeCommit is not None:
                self._beforeCommit(batch)
            conn.execute("COMMIT")
        except Exception as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.failedCommits += 1
            failure = Failure(LedgerError("ledger %s: transaction failed: %s" % (self.path, e)))
            results = [failure] * len(batch)
        else:
            self.commits += 1
            self.requests += len(batch)
            self.largestBatch = max(self.largestBatch, len(batch))
            if self._afterCommit is not None:
                self._afterCommit(batch)
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


class LedgerPaymentService(PaymentService):
    """
    A L{PaymentService} answering from a L{PaymentLedger} it owns: the
    ledger is opened before the port listens (so a bad ledger stops
    C{twistd} at once) and closed once every link has closed.

    @param ledger: the L{PaymentLedger}.
    @param backend: an L{IAccountBackend} to forward to instead of the
        ledger.
    @param backend_timeout: the back end's budget in seconds.
    """

    def __init__(self, listen, ledger, backend=None, backend_timeout=DEFAULT_BACKEND_TIMEOUT, **options):
        handler = LedgerHandler(ledger, backend, backend_timeout, reactor=options.get("reactor"))
        PaymentService.__init__(self, listen, handler=handler, **options)
        self.ledger = ledger

    def privilegedStartService(self):
        self.ledger.open()
        PaymentService.privilegedStartService(self)

    def stopService(self):
        d = PaymentService.stopService(self)
        d.addCallback(lambda _: self.ledger.close())
        return d
