"""
C{tvlink ledger}: the operator's command for the payment ledger.

    tvlink ledger --db PATH|postgresql://USER@HOST:PORT/DB COMMAND ...

    tvlink ledger --db PATH init
    tvlink ledger --db PATH open PAN AMOUNT
    tvlink ledger --db PATH show PAN
    tvlink ledger --db PATH list
    tvlink ledger --db PATH freeze PAN
    tvlink ledger --db PATH unfreeze PAN
    tvlink ledger --db PATH journal [--limit N]
    tvlink ledger --db PATH check
    tvlink ledger --db PATH reconcile-file --date YYYYMMDD --sender ID [--out PATH | --files-dir DIR]

A new ledger file is made by C{init} (or by the payment node's first
start); every other command refuses a file that is not there, saying so.
Amounts are whole fen (100000 is 1000.00 yuan). It works on the file of a
running payment process: SQLite's WAL lets it read while the process
writes, and its own writes wait (busy timeout) for the process's commit.
With a C{postgresql://} URL it works on the database several payment
nodes share, while they run; C{check} reads one consistent snapshot.
Card numbers are shown masked. Exit status: 0 done, 1 refused (unknown
card, duplicate account, no ledger file ...), 2 bad arguments.
"""

import shlex
import time

from tvlink.cli.commands import databaseParser, parseCommand, streams
from tvlink.cli.reconcile import addReconcileFileCommand, reconcileFile
from tvlink.masking import maskCard as maskPan
from tvlink.payment import accounts
from tvlink.payment.accounts import formatFen
from tvlink.payment.errors import BadAmount, BadCardNumber, LedgerError, LedgerNotFound
from tvlink.payment.rules import ACTIVE, FROZEN, wallclockText
from tvlink.store.ledgersql import openLedgerStore
from tvlink.store.postgresql import isURL, maskURL

#: Exit statuses.
OK = 0
REFUSED = 1
USAGE = 2


def _parser(out, err):
    parser, command = databaseParser(
        "tvlink ledger",
        "Look after the payment side's SQLite ledger (amounts in fen).",
        "the ledger file",
        "payment",
        out,
        err,
    )

    command("init", "create an empty ledger, before the first open (nothing happens if it exists)")
    sub = command("open", "open an account with an opening balance")
    sub.add_argument("pan", metavar="PAN", help="card number, 12 to 19 digits")
    sub.add_argument("amount", metavar="AMOUNT", help="opening balance in fen, e.g. 100000")
    sub = command("show", "show one account")
    sub.add_argument("pan", metavar="PAN")
    command("list", "list every account")
    sub = command("freeze", "freeze an account: purchases on it are declined")
    sub.add_argument("pan", metavar="PAN")
    sub = command("unfreeze", "make a frozen account active again")
    sub.add_argument("pan", metavar="PAN")
    sub = command("journal", "show the most recent transactions, newest first")
    sub.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    command("check", "reconcile every account against the journal")
    addReconcileFileCommand(command)
    return parser


def main(argv=None, out=None, err=None):
    """
    Run C{tvlink ledger ARGV...}; return the exit status.
    """
    out, err = streams(out, err)
    args, status = parseCommand("ledger", _parser(out, err), argv, err, USAGE)
    if args is None:
        return status
    path = args.db[len("sqlite:"):] if args.db.startswith("sqlite:") else args.db
    if not path:
        err.write("tvlink ledger: --db needs a path\n")
        return USAGE
    try:
        if args.command == "init":
            return _init(path, args, out)
        store = openLedgerStore(path, create=False, busy_timeout=args.busy_timeout)
    except LedgerNotFound:
        shown = maskURL(path) if isURL(path) else path
        err.write(
            "tvlink ledger %s: no ledger at %s; create it first with: tvlink ledger --db %s init"
            " (a payment node started with --ledger %s creates it too)\n"
            % (args.command, shown, shlex.quote(shown), shown if isURL(path) else "sqlite:" + path)
        )
        return REFUSED
    except LedgerError as e:
        err.write("tvlink ledger: %s\n" % (e,))
        return REFUSED
    try:
        return COMMANDS[args.command](store, args, out)
    except (BadAmount, BadCardNumber) as e:
        err.write("tvlink ledger %s: %s\n" % (args.command, e))
        return USAGE
    except LedgerError as e:
        err.write("tvlink ledger %s: %s\n" % (args.command, e))
        return REFUSED
    except store.Error as e:
        err.write("tvlink ledger %s: database error: %s\n" % (args.command, e))
        return REFUSED
    finally:
        store.close()


def _write(store, work):
    """
    Run C{work()} in one transaction.
    """
    with store.transaction():
        return work()


def _now():
    return wallclockText(time.time())


def _money(fen):
    return "%s (%d fen)" % (formatFen(fen), fen)


def _init(path, args, out):
    store = openLedgerStore(path, create=True, busy_timeout=args.busy_timeout)
    out.write("ledger %s ready\n" % (store.path,))
    store.close()
    return OK


def _open(store, args, out):
    account = _write(store, lambda: accounts.openAccount(store, args.pan, args.amount, _now()))
    out.write(
        "opened card %s with balance %s\n" % (maskPan(account["pan"]), _money(account["balance"]))
    )
    return OK


def _show(store, args, out):
    account = accounts.getAccount(store, args.pan)
    out.write(
        "card      %s\nstatus    %s\nbalance   %s\nopening   %s\nopened at %s\n"
        % (
            maskPan(account["pan"]),
            account["status"],
            _money(account["balance"]),
            _money(account["opening"]),
            account["opened_at"],
        )
    )
    return OK


def _list(store, args, out):
    every = accounts.listAccounts(store)
    if not every:
        out.write("no accounts\n")
        return OK
    out.write("%-22s %-7s %18s  %s\n" % ("card", "status", "balance (fen)", "opened at"))
    for account in every:
        out.write(
            "%-22s %-7s %18d  %s\n"
            % (maskPan(account["pan"]), account["status"], account["balance"], account["opened_at"])
        )
    out.write("%d account%s\n" % (len(every), "" if len(every) == 1 else "s"))
    return OK


def _status(status):
    def change(store, args, out):
        before = _write(store, lambda: accounts.setStatus(store, args.pan, status))
        if before == status:
            out.write("card %s was already %s\n" % (maskPan(args.pan), status))
        else:
            out.write("card %s is now %s\n" % (maskPan(args.pan), status))
        return OK

    return change


def _journal(store, args, out):
    entries = accounts.recentJournal(store, args.limit)
    if not entries:
        out.write("the journal is empty\n")
        return OK
    out.write(
        "%-6s %-20s %-11s %-28s %-22s %14s %-4s %-9s %s\n"
        % ("#", "applied at", "type", "key", "card", "amount (fen)", "resp", "state", "original")
    )
    for e in entries:
        kind = e["mti"] + ("/" + e["proc"] if e["proc"] else "")
        out.write(
            "%-6d %-20s %-11s %-28s %-22s %14s %-4s %-9s %s\n"
            % (
                e["id"],
                e["applied_at"],
                kind,
                "/".join(e["key"]),
                maskPan(e["pan"]),
                "-" if e["amount"] is None else e["amount"],
                e["resp"],
                e["state"],
                "/".join(e["orig"]) if e["orig"] else "-",
            )
        )
    return OK


def _check(store, args, out):
    with store.snapshot():
        report = accounts.reconcile(store)
    totals = report["totals"]
    out.write(
        "%d account%s: opening %d - purchases %d + refunds %d = %d fen; balances %d fen\n"
        % (
            len(report["accounts"]),
            "" if len(report["accounts"]) == 1 else "s",
            totals["opening"],
            totals["purchased"],
            totals["refunded"],
            totals["opening"] - totals["purchased"] + totals["refunded"],
            totals["balance"],
        )
    )
    for account in report["accounts"]:
        if account["pan"] in report["mismatches"]:
            out.write(
                "MISMATCH card %s: expected %d fen, balance %d fen\n"
                % (maskPan(account["pan"]), account["expected"], account["balance"])
            )
    if report["mismatches"]:
        return REFUSED
    out.write("every account reconciles\n")
    return OK


COMMANDS = {
    "open": _open,
    "show": _show,
    "list": _list,
    "freeze": _status(FROZEN),
    "unfreeze": _status(ACTIVE),
    "journal": _journal,
    "check": _check,
    "reconcile-file": reconcileFile,
}
