"""
C{tvlink journal}: the operator's command for the platform's journal.

    tvlink journal --db PATH|postgresql://USER@HOST:PORT/DB COMMAND ...

    tvlink journal --db PATH list [--limit N]
    tvlink journal --db PATH show SENDER/STAN/TIME | --order ORDER
    tvlink journal --db PATH check
    tvlink journal --db PATH rekey --old-key FILE --new-key FILE

C{list} shows the most recent entries, newest first, with masked card
numbers. C{show} shows one entry (or every entry of a merchant order)
field by field. C{check} counts the entries by state, lists the
unfinished ones with the process that owns them (and whether its lease
is still running), and fails if a merchant order has two standing
purchases. C{rekey} re-seals every sealed card number (see
L{tvlink.platform.cardvault}) from the old key to the new one in one
transaction: all of them or, if one is sealed under neither key, none.
Cards already under the new key are left as they are, so a rekey can be
run again. Stop the platform first, then start it with
C{--card-key NEWFILE}. Exit status: 0 done, 1 refused (no journal file,
a bad key file, a card under neither key ...), 2 bad arguments.
"""

import os
import pathlib
import sqlite3
import time

import psycopg

from tvlink.cli.commands import databaseParser, parseCommand, streams
from tvlink.platform.cardvault import CardVault, CardVaultError
from tvlink.platform.journal import (
    COLUMNS,
    DOUBLED_ORDERS,
    IN_DOUBT,
    PENDING,
    migrate,
    parseJournalOption,
    rekeyCards,
)
from tvlink.store import postgresql as pgsql
from tvlink.store.sqlite import SQLiteStore

#: Exit statuses.
OK = 0
REFUSED = 1
USAGE = 2


def _parser(out, err):
    parser, command = databaseParser(
        "tvlink journal",
        "Look after the platform's journal (a SQLite file, or a PostgreSQL database platform processes share).",
        "the journal file",
        "platform",
        out,
        err,
    )

    sub = command("list", "show the most recent entries, newest first (card numbers masked)")
    sub.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    sub = command("show", "show one entry field by field, or every entry of a merchant order")
    sub.add_argument("key", nargs="?", metavar="SENDER/STAN/TIME", help="the entry's key")
    sub.add_argument("--order", metavar="ORDER", help="every entry of this merchant order instead")
    command("check", "count the entries by state, list the unfinished ones and their owners, find doubled orders")
    sub = command("rekey", "re-seal every sealed card number under a new card key, in one transaction")
    sub.add_argument("--old-key", required=True, metavar="FILE", help="the key file the cards are sealed under")
    sub.add_argument("--new-key", required=True, metavar="FILE", help="the key file to seal them under")
    return parser


def main(argv=None, out=None, err=None):
    """
    Run C{tvlink journal ARGV...}; return the exit status.
    """
    out, err = streams(out, err)
    args, status = parseCommand("journal", _parser(out, err), argv, err, USAGE)
    if args is None:
        return status
    try:
        path = parseJournalOption(args.db)
        if pgsql.isURL(path):
            pgsql.checkURL(path)
    except ValueError as e:
        err.write("tvlink journal: --db: %s\n" % (e,))
        return USAGE
    if args.command == "show" and (args.key is None) == (args.order is None):
        err.write("tvlink journal show: give an entry's SENDER/STAN/TIME or --order ORDER\n")
        return USAGE
    try:
        journal = JournalConnection.open(path, args.busy_timeout)
    except JournalMissing as e:
        err.write("tvlink journal %s: %s\n" % (args.command, e))
        return REFUSED
    try:
        return COMMANDS[args.command](journal, args, out, err)
    except journal.Error as e:
        err.write("tvlink journal %s: database error: %s\n" % (args.command, " ".join(str(e).split())))
        return REFUSED
    finally:
        journal.close()


class JournalMissing(Exception):
    """
    No journal where C{--db} says.
    """


class JournalConnection:
    """
    A connection to a journal for an admin command (C{tvlink journal},
    C{tvlink reconcile}): its statements take C{?} placeholders on either
    database; what differs is said here.

    @ivar where: the journal, as messages name it (a URL's password masked).
    @ivar conn: a connection with C{execute}.
    @ivar begin: the statement that begins a writing transaction.
    @ivar columnsOf: the database's way of listing a table's columns.
    """

    @classmethod
    def open(cls, path, timeout, readOnly=False):
        """
        Connect to the journal at C{path} (a SQLite path or a URL),
        waiting up to C{timeout} seconds; with C{readOnly}, for reading
        only (SQLite: the file opened read-only, by a URI with its C{?},
        C{#} and C{%} quoted).

        @raise JournalMissing: if there is no journal there.
        """
        journal = cls()
        journal.where = pgsql.maskURL(path) if pgsql.isURL(path) else path
        if pgsql.isURL(path):
            try:
                raw = psycopg.connect(path, autocommit=True, connect_timeout=max(1, int(timeout)))
            except psycopg.Error as e:
                raise JournalMissing("cannot connect to %s: %s" % (pgsql.maskURL(path), " ".join(str(e).split()))) from None
            if readOnly:
                raw.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            journal.conn, journal.Error = pgsql.Connection(raw), psycopg.Error
            journal.begin, journal.columnsOf, journal.close = "BEGIN", pgsql.columnsOf, raw.close
            if pgsql.schemaVersion(journal.conn, "journal") == 0:
                raw.close()
                raise JournalMissing("no journal in %s" % (pgsql.maskURL(path),))
            return journal
        if not os.path.isfile(path):
            raise JournalMissing("no journal at %s" % (path,))
        if readOnly:
            uri = pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro"
            journal.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
        else:
            journal.conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
        journal.Error = sqlite3.Error
        journal.begin, journal.columnsOf, journal.close = "BEGIN IMMEDIATE", SQLiteStore.columnsOf, journal.conn.close
        return journal


def _transaction(journal, work, *args):
    """
    Run C{work(conn, *args)} in one transaction, rolled back if it raises.
    """
    conn = journal.conn
    conn.execute(journal.begin)
    try:
        result = work(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _list(journal, args, out, err):
    rows = journal.conn.execute(
        "SELECT sender, stan, time, mti, amount, pan, state, order_id FROM entries"
        " ORDER BY created DESC LIMIT ?",
        (args.limit,),
    ).fetchall()
    for sender, stan, when, mti, amount, pan, state, order in rows:
        out.write(
            "%s/%s/%s %s %s %s %s %s\n"
            % (sender, stan, when, mti, amount or "-", pan or "-", state, order or "-")
        )
    return OK


def _show(journal, args, out, err):
    select = "SELECT %s FROM entries WHERE " % (", ".join(COLUMNS),)
    if args.order is not None:
        rows = journal.conn.execute(select + "order_id = ? ORDER BY created", (args.order,)).fetchall()
        what = "order %s" % (args.order,)
    else:
        key = tuple(args.key.split("/"))
        if len(key) != 3:
            err.write("tvlink journal show: a key is SENDER/STAN/TIME, not %r\n" % (args.key,))
            return USAGE
        rows = journal.conn.execute(select + "sender = ? AND stan = ? AND time = ?", key).fetchall()
        what = "entry %s" % (args.key,)
    if not rows:
        err.write("tvlink journal show: no %s\n" % (what,))
        return REFUSED
    for n, row in enumerate(rows):
        if n:
            out.write("\n")
        for name, value in zip(COLUMNS, row):
            if name == "pan_sealed":
                value = None if value is None else "(sealed)"
            out.write("%-18s %s\n" % (name, "-" if value is None else value))
    return OK


def _check(journal, args, out, err):
    conn = journal.conn
    counts = dict(conn.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())
    out.write(
        "%d entries: %s\n"
        % (sum(counts.values()), ", ".join("%s %d" % kv for kv in sorted(counts.items())) or "none")
    )
    hasOwners = "owner" in journal.columnsOf(conn, "entries")
    leases = {}
    if hasOwners and journal.columnsOf(conn, "owners"):
        leases = dict(conn.execute("SELECT name, lease_until FROM owners").fetchall())
    now = time.time()
    unfinished = conn.execute(
        "SELECT sender, stan, time, state, %s FROM entries WHERE state IN (?, ?) ORDER BY created"
        % ("owner" if hasOwners else "NULL"),
        (PENDING, IN_DOUBT),
    ).fetchall()
    for sender, stan, when, state, owner in unfinished:
        lease = leases.get(owner)
        held = "lease running" if lease is not None and lease > now else "lease ran out: another process takes it"
        out.write("unfinished %s/%s/%s %s, owner %s (%s)\n" % (sender, stan, when, state, owner or "-", held))
    doubled = conn.execute(DOUBLED_ORDERS).fetchall()
    for terminal, order, count in doubled:
        out.write(
            "DOUBLED order %s%s has %d standing purchases\n"
            % (order, " of terminal %s" % (terminal,) if terminal else "", count)
        )
    if doubled:
        return REFUSED
    out.write("no order has two standing purchases\n")
    return OK


def _rekey(journal, args, out, err):
    try:
        old = CardVault.fromKeyFile(args.old_key)
        new = CardVault.fromKeyFile(args.new_key)
    except CardVaultError as e:
        err.write("tvlink journal rekey: %s\n" % (e,))
        return REFUSED
    if old.keyId == new.keyId:
        err.write("tvlink journal rekey: the old and the new key are the same key (%s)\n" % (old.keyId,))
        return REFUSED

    def rekey(conn):
        migrate(conn, journal.columnsOf)
        return rekeyCards(conn, old, new)

    try:
        resealed, already = _transaction(journal, rekey)
    except CardVaultError as e:
        err.write("tvlink journal rekey: %s; nothing was changed\n" % (e,))
        return REFUSED
    out.write(
        "re-sealed %d card numbers from key %s to key %s (%d already under the new key)\n"
        % (resealed, old.keyId, new.keyId, already)
    )
    return OK


COMMANDS = {"list": _list, "show": _show, "check": _check, "rekey": _rekey}
