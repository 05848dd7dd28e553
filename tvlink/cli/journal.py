"""
C{tvlink journal}: the operator's command for the platform's journal.

    tvlink journal --db PATH list [--limit N]
    tvlink journal --db PATH rekey --old-key FILE --new-key FILE

C{list} shows the most recent entries, newest first, with masked card
numbers. C{rekey} re-seals every sealed card number (see
L{tvlink.platform.cardvault}) from the old key to the new one in one
transaction: all of them or, if one is sealed under neither key, none.
Cards already under the new key are left as they are, so a rekey can be
run again. Stop the platform first, then start it with
C{--card-key NEWFILE}. Exit status: 0 done, 1 refused (no journal file,
a bad key file, a card under neither key ...), 2 bad arguments.
"""

import os
import sqlite3
import sys

from tvlink.cli.commands import databaseParser, parseCommand
from tvlink.platform.cardvault import CardVault, CardVaultError
from tvlink.platform.journal import migrate, parseJournalOption, rekeyCards

#: Exit statuses.
OK = 0
REFUSED = 1
USAGE = 2


def _parser(out, err):
    parser, command = databaseParser(
        "tvlink journal",
        "Look after the platform's SQLite journal.",
        "the journal file",
        "platform",
        out,
        err,
    )

    sub = command("list", "show the most recent entries, newest first (card numbers masked)")
    sub.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    sub = command("rekey", "re-seal every sealed card number under a new card key, in one transaction")
    sub.add_argument("--old-key", required=True, metavar="FILE", help="the key file the cards are sealed under")
    sub.add_argument("--new-key", required=True, metavar="FILE", help="the key file to seal them under")
    return parser


def main(argv=None, out=None, err=None):
    """
    Run C{tvlink journal ARGV...}; return the exit status.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    args, status = parseCommand("journal", _parser(out, err), argv, err, USAGE)
    if args is None:
        return status
    try:
        path = parseJournalOption(args.db)
    except ValueError as e:
        err.write("tvlink journal: --db: %s\n" % (e,))
        return USAGE
    if not os.path.isfile(path):
        err.write("tvlink journal %s: no journal at %s\n" % (args.command, path))
        return REFUSED
    conn = sqlite3.connect(path, isolation_level=None, timeout=args.busy_timeout)
    try:
        return COMMANDS[args.command](conn, args, out, err)
    except sqlite3.Error as e:
        err.write("tvlink journal %s: database error: %s\n" % (args.command, e))
        return REFUSED
    finally:
        conn.close()


def _transaction(conn, work, *args):
    """
    Run C{work(conn, *args)} in one transaction, rolled back if it raises.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _list(conn, args, out, err):
    rows = conn.execute(
        "SELECT sender, stan, time, mti, amount, pan, state, order_id FROM entries"
        " ORDER BY created DESC LIMIT ?",
        (args.limit,),
    ).fetchall()
    for sender, stan, time, mti, amount, pan, state, order in rows:
        out.write(
            "%s/%s/%s %s %s %s %s %s\n"
            % (sender, stan, time, mti, amount or "-", pan or "-", state, order or "-")
        )
    return OK


def _rekey(conn, args, out, err):
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
        migrate(conn)
        return rekeyCards(conn, old, new)

    try:
        resealed, already = _transaction(conn, rekey)
    except CardVaultError as e:
        err.write("tvlink journal rekey: %s; nothing was changed\n" % (e,))
        return REFUSED
    out.write(
        "re-sealed %d card numbers from key %s to key %s (%d already under the new key)\n"
        % (resealed, old.keyId, new.keyId, already)
    )
    return OK


COMMANDS = {"list": _list, "rekey": _rekey}
