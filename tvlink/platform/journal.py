"""
The platform's in-doubt journal (the reversals it drives are
L{tvlink.platform.reversals}).

Every money-moving request (C{0200}/C{000000} purchase, C{0220}/C{200000}
refund) is written durably before it is sent and its outcome when it is
known. A request that was sent but got no answer (timeout, link lost) is
I{in doubt}: the payment side may or may not have moved the money, so the
platform sends a C{0420} reversal and repeats it, with backoff, across
reconnects and restarts, until the payment side acknowledges it. Every
entry ends as C{approved}, C{declined} or C{reversed}.
"""

import json
import os
import socket
import sqlite3

import psycopg
from twisted.logger import Logger

from tvlink.errors import OrderDecided, OrderTaken
from tvlink.link import wire
from tvlink.masking import maskCard
from tvlink.platform.cardvault import CardVaultError, WrongKey, sealedKeyId
from tvlink.store.postgresql import PostgreSQLStore, isURL
from tvlink.store.sqlite import SQLiteStore

#: Entry states. The first two are not final.
PENDING = "pending"
IN_DOUBT = "in-doubt"
APPROVED = "approved"
DECLINED = "declined"
REVERSED = "reversed"
FINAL = (APPROVED, DECLINED, REVERSED)

#: Answers that finish a reversal: done, or (25) the payment side never
#: saw the original, so nothing moved.
REVERSAL_DONE = frozenset((wire.APPROVED, wire.ORIGINAL_NOT_FOUND))

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        sender TEXT NOT NULL, stan TEXT NOT NULL, time TEXT NOT NULL,
        order_id TEXT, mti TEXT NOT NULL, proc TEXT, amount TEXT, currency TEXT,
        pan TEXT, pan_sealed TEXT, orig TEXT,
        state TEXT NOT NULL, resp TEXT, late_resp TEXT, reason TEXT,
        reversal_stan TEXT, reversal_time TEXT, reversal_attempts INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL, updated REAL NOT NULL, terminal TEXT, owner TEXT,
        PRIMARY KEY (sender, stan, time))""",
    "CREATE INDEX IF NOT EXISTS entries_order ON entries (order_id)",
    "CREATE INDEX IF NOT EXISTS entries_state ON entries (state)",
    "CREATE INDEX IF NOT EXISTS entries_reversal ON entries (sender, reversal_stan, reversal_time)",
    # Which process holds the entries it owns, and until when: one whose
    # lease ran out is dead, and another takes its unfinished entries.
    "CREATE TABLE IF NOT EXISTS owners (name TEXT PRIMARY KEY, lease_until REAL NOT NULL)",
)

#: The unique index that keeps one purchase per order of a terminal.
ORDER_INDEX = "entries_terminal_order_once"

#: What the index was called while orders were not per terminal (on
#: C{order_id} alone): a journal that has it gets L{ORDER_INDEX} instead.
FORMER_ORDER_INDEXES = ("entries_order_once",)

#: Which purchases stand for their order: all but those the platform
#: declined before sending them (no link: DESTINATION_UNAVAILABLE with a
#: reason), whose order may be tried again.
STANDING_PURCHASE = (
    "mti = '0200' AND proc = '000000' AND order_id IS NOT NULL"
    " AND NOT (state = 'declined' AND COALESCE(resp, '') = '91' AND COALESCE(reason, '') <> '')"
)

#: At most one purchase stands for a merchant order of a terminal,
#: whichever process journals it: a second one fails to insert
#: (L{OrderTaken}).
ORDER_INDEX_SQL = "CREATE UNIQUE INDEX IF NOT EXISTS %s ON entries (COALESCE(terminal, ''), order_id) WHERE %s" % (
    ORDER_INDEX,
    STANDING_PURCHASE,
)

#: Orders with more than one standing purchase (a journal made before
#: L{ORDER_INDEX}, by a caller that reused an order).
DOUBLED_ORDERS = (
    "SELECT COALESCE(terminal, ''), order_id, COUNT(*) FROM entries WHERE " + STANDING_PURCHASE
    + " GROUP BY COALESCE(terminal, ''), order_id HAVING COUNT(*) > 1"
)

#: What the drivers raise for a broken uniqueness constraint.
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)

COLUMNS = (
    "sender", "stan", "time", "order_id", "mti", "proc", "amount", "currency", "pan", "pan_sealed", "orig",
    "state", "resp", "late_resp", "reason", "reversal_stan", "reversal_time",
    "reversal_attempts", "created", "updated", "terminal", "owner",
)


#: Columns added since the first schema, with their types: a journal file
#: made before them gets them when it is opened (L{migrate}).
ADDED_COLUMNS = (("pan_sealed", "TEXT"), ("terminal", "TEXT"), ("owner", "TEXT"))

#: The schema version a PostgreSQL journal records: one more for each
#: column added since the first.
SCHEMA_VERSION = 1 + len(ADDED_COLUMNS)


def migrate(conn, columnsOf=SQLiteStore.columnsOf):
    """
    Bring the C{entries} table of an older journal up to date on the
    connection C{conn}, inside its transaction: add each of
    L{ADDED_COLUMNS} it lacks, and L{ORDER_INDEX} (in place of any of
    L{FORMER_ORDER_INDEXES}) unless an order already has two standing
    purchases (C{tvlink journal check} names them; the
    journal still opens). Idempotent.

    @param columnsOf: C{columnsOf(conn, table)}, the store's way of
        listing a table's columns.
    @return: the names of the columns added.
    """
    present = columnsOf(conn, "entries")
    added = []
    for name, kind in ADDED_COLUMNS:
        if name not in present:
            conn.execute("ALTER TABLE entries ADD COLUMN %s %s" % (name, kind))
            added.append(name)
    for name in FORMER_ORDER_INDEXES:
        conn.execute("DROP INDEX IF EXISTS %s" % (name,))
    if not conn.execute(DOUBLED_ORDERS).fetchall():
        conn.execute(ORDER_INDEX_SQL)
    return added


def rekeyCards(conn, old, new):
    """
    Re-seal, on the connection C{conn} and inside its transaction, every
    sealed card of the journal from the vault C{old} to the vault C{new}.
    A card already sealed under C{new} is left as it is, so an
    interrupted rekey can be run again.

    @return: C{(resealed, already)}: how many were re-sealed, and how many
        were under C{new} already.
    @raise tvlink.platform.cardvault.WrongKey: if a card is sealed under
        neither key; the caller rolls the transaction back.
    """
    resealed = already = 0
    rows = conn.execute(
        "SELECT sender, stan, time, pan_sealed FROM entries WHERE pan_sealed IS NOT NULL"
    ).fetchall()
    for sender, stan, time, sealed in rows:
        key = (sender, stan, time)
        keyId = sealedKeyId(sealed)
        if keyId == new.keyId:
            already += 1
            continue
        if keyId != old.keyId:
            raise WrongKey(
                "the card of %s is sealed under key %s: neither the old key %s nor the new key %s"
                % ("/".join(key), keyId, old.keyId, new.keyId)
            )
        conn.execute(
            "UPDATE entries SET pan_sealed=? WHERE sender=? AND stan=? AND time=?",
            (new.seal(old.open(sealed, key), key),) + key,
        )
        resealed += 1
    return resealed, already


def moneyMovingBetween(conn, start, end, sender, created=None):
    """
    The purchase and refund entries of C{sender} with transmission times
    from C{start} to before C{end} (C{MMDDhhmmss}, a reconciliation
    file's day), as C{dict}s of L{COLUMNS}, read on the SQLite connection
    C{conn}; with C{created} (POSIX times C{(from, to)}), only those
    written in that span (a transmission time has no year).
    """
    created = tuple(created) if created is not None else (float("-inf"), float("inf"))
    rows = conn.execute(
        "SELECT %s FROM entries WHERE sender = ? AND time >= ? AND time < ? AND created >= ? AND created < ?"
        " AND ((mti = '0200' AND proc = '000000') OR (mti = '0220' AND proc = '200000'))"
        " ORDER BY time, stan" % (", ".join(COLUMNS),),
        (sender, start, end) + created,
    ).fetchall()
    return [_row(row) for row in rows]


def isMoneyMoving(message):
    """
    Whether C{message} may move money: a purchase or a refund.
    """
    mti = message.get("mti")
    proc = message.get("proc")
    return (mti == "0200" and proc == "000000") or (mti == "0220" and proc == "200000")


def maskedPan(pan):
    """
    The card number as the journal keeps it (masked), or C{None}.
    """
    if not isinstance(pan, str) or len(pan) < 12:
        return None
    return maskCard(pan)


def parseJournalOption(value):
    """
    C{"sqlite:PATH"} (or a bare path) to a path; a C{postgresql://} URL as
    it is.
    """
    if not isinstance(value, str) or not value:
        raise ValueError("journal must be sqlite:PATH or postgresql://USER@HOST:PORT/DB, not %r" % (value,))
    if isURL(value):
        return value
    if value.startswith("sqlite:"):
        value = value[len("sqlite:"):]
    if not value:
        raise ValueError("journal needs a path after sqlite:")
    return value


def _row(row):
    if row is None:
        return None
    entry = dict(zip(COLUMNS, row))
    if entry["orig"]:
        entry["orig"] = json.loads(entry["orig"])
    entry["key"] = (entry["sender"], entry["stan"], entry["time"])
    return entry


#: The entries of one order of one terminal (C{''} for none), oldest first.
BY_ORDER = "order_id=? AND COALESCE(terminal, '')=? ORDER BY created"


def purchasesIn(entries):
    return [e for e in entries if e["mti"] == "0200" and e["proc"] == "000000"]


def refundsIn(entries):
    return [e for e in entries if e["mti"] == "0220"]


def _neverSent(entry):
    """
    Whether a journal entry was declined by the platform itself before it
    was written to any link (no link: nothing can have moved), so its
    order may be tried again. (A C{91} from the payment side puts the
    transaction in doubt instead; it ends reversed.)
    """
    return entry["state"] == DECLINED and entry["resp"] == wire.DESTINATION_UNAVAILABLE and bool(entry["reason"])


def standing(purchases):
    """
    The purchase that decides an order: the first one that was sent.
    """
    for entry in purchases:
        if not _neverSent(entry):
            return entry
    return None


class PlatformJournal:
    """
    The durable record of money-moving requests, on SQLite.

    Card numbers are kept masked (column C{pan}). With a C{vault}, each is
    also kept sealed (column C{pan_sealed}, see
    L{tvlink.platform.cardvault}), so that the C{0420} reversal of an entry
    can carry the card of its original; the clear number is never written.

    @param path: the SQLite file. One made by an older tvlink is brought up
        to date (L{migrate}) as it is opened, before any other work; if
        that fails, the journal is not made (the error is raised).
    @param vault: a L{tvlink.platform.cardvault.CardVault}, or C{None} to
        keep masked card numbers only.
    @param owner: the name this process holds its entries under, in a
        journal several processes share (PostgreSQL); C{None}: C{"local"}
        on SQLite (one process), the host name and process id on
        PostgreSQL. A process restarted under the same name resumes its
        entries at once; under another, once the old lease runs out.
    @param lease: seconds an owner's entries stay its own without its
        renewing the lease (L{renewLease}).
    """

    log = Logger(namespace="tvlink.journal")

    #: Seconds an owner's lease lasts by default.
    defaultLease = 15.0

    def __init__(self, path, reactor=None, threaded=True, vault=None, owner=None, lease=None):
        target = parseJournalOption(path)
        if isURL(target):
            self.store = PostgreSQLStore(
                target,
                SCHEMA,
                reactor=reactor,
                threaded=threaded,
                migrate=lambda conn: migrate(conn, PostgreSQLStore.columnsOf),
                component="journal",
                version=SCHEMA_VERSION,
            )
            defaultOwner = "%s:%d" % (socket.gethostname(), os.getpid())
        else:
            self.store = SQLiteStore(target, SCHEMA, reactor=reactor, threaded=threaded, migrate=migrate)
            defaultOwner = "local"
        #: Whether a new order's purchase is inserted before its order is
        #: read (see L{record}): on SQLite with L{ORDER_INDEX}, where a
        #: refused insert leaves the transaction usable and the standing
        #: purchase it met is then read in it.
        self.insertFirst = isinstance(self.store, SQLiteStore) and _hasIndex(self.store.conn, ORDER_INDEX)
        self.owner = owner or defaultOwner
        self.lease = self.defaultLease if lease is None else lease
        self.reactor = self.store.reactor
        self.vault = vault
        if self.store.migrated:
            self.log.info(
                "journal {path} brought up to date: added {columns}",
                journal_event="migrated",
                path=self.store.path,
                columns=", ".join(self.store.migrated),
            )

    def sealCard(self, pan, key):
        """
        C{pan} sealed for the entry C{key}, or C{None} without a vault or
        a card number.
        """
        if self.vault is None or maskedPan(pan) is None:
            return None
        return self.vault.seal(pan, key)

    def cardOf(self, entry):
        """
        The clear card number of the journal C{entry}, or C{None} if it
        has no sealed card or the journal no vault.

        @raise tvlink.platform.cardvault.CardVaultError: if the sealed
            card does not open (another key, or moved or altered).
        """
        sealed = entry.get("pan_sealed")
        if sealed is None or self.vault is None:
            return None
        return self.vault.open(sealed, entry["key"])

    def openedCard(self, entry, purpose):
        """
        The clear card of C{entry} for its C{purpose} (C{"reversal"},
        C{"refund"}), or C{None}: no vault, nothing sealed, or a card that
        does not open, which is logged (C{card-unopened}) and never raised,
        since the caller goes on without the card.
        """
        try:
            return self.cardOf(entry)
        except CardVaultError as e:
            self.log.error(
                "the card of {key} does not open for its {purpose}: {why}",
                journal_event="card-unopened",
                key="/".join(entry["key"]),
                purpose=purpose,
                why=str(e),
            )
            return None

    def close(self):
        return self.store.close()

    def record(self, message, terminal=None, newOrder=False):
        """
        Write a request before it is sent, with the C{terminal} it was
        made for (if any), owned by this process. Fails with one of
        L{INTEGRITY_ERRORS} if its key is already journalled, and with
        L{OrderTaken} if it is a purchase of an order (of that terminal)
        that already has one standing which this transaction could not
        see (journalled by another process at the same moment: the unique
        index L{ORDER_INDEX} refused it).

        @param newOrder: the request is a purchase for an order that no
            purchase sent may decide already: in the same transaction the
            order's entries are read and, if one does, nothing is written
            and the write fails with L{OrderDecided} carrying them (one
            trip to the store instead of a read, then a write). Where
            L{insertFirst}, the purchase is inserted at once and the
            order's entries are read only if L{ORDER_INDEX} refuses it:
            one statement for a new order instead of two.
        """
        now = self.reactor.seconds()
        orig = message.get("orig")
        key = (message["sender"], message["stan"], message["time"])
        row = key + (
            message.get("order"),
            message["mti"], message.get("proc"), message.get("amount"), message.get("currency"),
            maskedPan(message.get("pan")), self.sealCard(message.get("pan"), key),
            json.dumps(orig) if isinstance(orig, dict) else None,
            PENDING, now, now, terminal, self.owner,
        )

        insertFirst = self.insertFirst

        def orderEntries(conn):
            rows = conn.execute(
                "SELECT %s FROM entries WHERE %s" % (", ".join(COLUMNS), BY_ORDER), (message.get("order"), terminal or "")
            ).fetchall()
            return [_row(r) for r in rows]

        def insert(conn):
            if newOrder and not insertFirst:
                entries = orderEntries(conn)
                if standing(purchasesIn(entries)) is not None:
                    raise OrderDecided(entries)
            try:
                conn.execute(
                    "INSERT INTO entries (sender, stan, time, order_id, mti, proc, amount, currency, pan,"
                    " pan_sealed, orig, state, created, updated, terminal, owner)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    row,
                )
            except INTEGRITY_ERRORS as e:
                if _brokeOrderIndex(e):
                    if newOrder and insertFirst:
                        # The index met the purchase that stands for the
                        # order, in this transaction: read it and its
                        # order's other entries.
                        raise OrderDecided(orderEntries(conn)) from None
                    raise OrderTaken(message.get("order")) from None
                raise

        return self.store.submit(insert, oneStatement=True)

    def settle(self, key, state, resp=None, reason=None):
        """
        Record the final outcome of C{key} (approved or declined).
        """
        return self._update(key, "state=?, resp=?, reason=COALESCE(?, reason)", (state, resp, reason))

    def markInDoubt(self, key, reason, reversalStan, reversalTime):
        """
        C{key} was sent and its outcome is unknown; it will be reversed
        under the key (sender, C{reversalStan}, C{reversalTime}).
        """
        return self._update(
            key,
            "state=?, reason=?, reversal_stan=COALESCE(reversal_stan, ?),"
            " reversal_time=COALESCE(reversal_time, ?)",
            (IN_DOUBT, reason, reversalStan, reversalTime),
        )

    def rekeyReversal(self, key, reversalStan, reversalTime):
        """
        The reversal of C{key} goes on under a new key.
        """
        return self._update(key, "reversal_stan=?, reversal_time=?", (reversalStan, reversalTime))

    def markReversed(self, key, resp):
        return self._update(key, "state=?, reason=COALESCE(reason, '') || ?", (REVERSED, "; reversal answered " + str(resp)))

    def noteAttempt(self, key):
        return self._update(key, "reversal_attempts = reversal_attempts + 1", ())

    def noteLate(self, key, resp):
        """
        An answer to C{key} came after its timeout.
        """
        return self._update(key, "late_resp=?", (resp,))

    def _update(self, key, assignments, params):
        now = self.reactor.seconds()

        def update(conn):
            cursor = conn.execute(
                "UPDATE entries SET %s, updated=? WHERE sender=? AND stan=? AND time=?" % (assignments,),
                tuple(params) + (now,) + tuple(key),
            )
            return cursor.rowcount

        return self.store.submit(update, oneStatement=True)

    def get(self, key):
        """
        A L{Deferred} of the entry for C{key} (a C{dict}), or C{None}.
        """
        return self._one("sender=? AND stan=? AND time=?", tuple(key))

    def byReversalKey(self, key):
        return self._one("sender=? AND reversal_stan=? AND reversal_time=?", tuple(key))

    def byOrder(self, order, terminal=None):
        """
        A L{Deferred} of the entries carrying merchant order C{order} of
        C{terminal} (C{None}: made without one), oldest first.
        """
        return self._many(BY_ORDER, (order, terminal or ""))

    def unfinished(self):
        """
        A L{Deferred} of every entry not yet final, oldest first.
        """
        return self._many("state IN (?, ?) ORDER BY created", (PENDING, IN_DOUBT))

    def renewLease(self):
        """
        Hold this process's entries for another L{lease} seconds. A
        L{Deferred}.
        """
        until = self.reactor.seconds() + self.lease

        def renew(conn):
            conn.execute(
                "INSERT INTO owners (name, lease_until) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET lease_until = excluded.lease_until",
                (self.owner, until),
            )

        return self.store.submit(renew)

    def releaseLease(self):
        """
        Give up this process's lease (a clean stop): another process may
        take its unfinished entries at once. A L{Deferred}.
        """
        return self.store.submit(lambda conn: conn.execute("DELETE FROM owners WHERE name = ?", (self.owner,)))

    def claim(self, mine=True):
        """
        Take the unfinished entries of owners whose lease has run out (and
        of none), and renew this process's lease, in one transaction.
        Exactly one process takes each: the update is conditional on the
        owner it read, so a second claimer finds it changed.

        @param mine: also return the unfinished entries this process owns
            already (at start: those of an earlier run under its name).
        @return: a L{Deferred} of the entries now this process's to finish,
            oldest first.
        """
        now = self.reactor.seconds()
        owner = self.owner
        select = "SELECT %s FROM entries WHERE state IN (?, ?)" % (", ".join(COLUMNS),)

        def claim(conn):
            conn.execute(
                "INSERT INTO owners (name, lease_until) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET lease_until = excluded.lease_until",
                (owner, now + self.lease),
            )
            alive = {row[0] for row in conn.execute("SELECT name FROM owners WHERE lease_until > ?", (now,))}
            taken = []
            for row in conn.execute(select + " ORDER BY created", (PENDING, IN_DOUBT)).fetchall():
                entry = _row(row)
                if entry["owner"] == owner:
                    if mine:
                        taken.append(entry)
                    continue
                if entry["owner"] in alive:
                    continue
                cursor = conn.execute(
                    "UPDATE entries SET owner = ? WHERE sender = ? AND stan = ? AND time = ?"
                    " AND state IN (?, ?) AND " + ("owner IS NULL" if entry["owner"] is None else "owner = ?"),
                    (owner,) + entry["key"] + (PENDING, IN_DOUBT) + (() if entry["owner"] is None else (entry["owner"],)),
                )
                if cursor.rowcount == 1:
                    entry["taken_from"] = entry["owner"]
                    entry["owner"] = owner
                    taken.append(entry)
            return taken

        return self.store.submit(claim)

    def counts(self):
        """
        A L{Deferred} of C{{state: count}}.
        """
        d = self.store.query("SELECT state, COUNT(*) FROM entries GROUP BY state")
        return d.addCallback(dict)

    def _one(self, where, params):
        d = self.store.query("SELECT %s FROM entries WHERE %s" % (", ".join(COLUMNS), where), params)
        return d.addCallback(lambda rows: _row(rows[0]) if rows else None)

    def _many(self, where, params):
        d = self.store.query("SELECT %s FROM entries WHERE %s" % (", ".join(COLUMNS), where), params)
        return d.addCallback(lambda rows: [_row(r) for r in rows])


def _hasIndex(conn, name):
    """
    Whether the SQLite database of C{conn} has the index C{name}.
    """
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone() is not None


def _brokeOrderIndex(error):
    """
    Whether the uniqueness C{error} is that of L{ORDER_INDEX} (PostgreSQL
    names the index in its diagnostics; SQLite in its message).
    """
    diag = getattr(error, "diag", None)
    if diag is not None:
        return diag.constraint_name == ORDER_INDEX
    return ORDER_INDEX in str(error)
