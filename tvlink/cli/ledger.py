"""
C{tvlink ledger}: the operator's command for the payment ledger.

    tvlink ledger --db PATH init
    tvlink ledger --db PATH open PAN AMOUNT
    tvlink ledger --db PATH show PAN
    tvlink ledger --db PATH list
    tvlink ledger --db PATH freeze PAN
    tvlink ledger --db PATH unfreeze PAN
    tvlink ledger --db PATH journal [--limit N]
    tvlink ledger --db PATH check

Amounts are whole fen (100000 is 1000.00 yuan). It works on the file of a
running payment process: SQLite's WAL lets it read while the process
writes, and its own writes wait (busy timeout) for the process's commit.
Card numbers are shown masked. Exit status: 0 done, 1 refused (unknown
card, duplicate account, no ledger file ...), 2 bad arguments.
"""

import argparse
import sys
import time

from tvlink.payment import ledger
from tvlink.payment.ledger import LedgerError, formatFen, maskPan

#: Exit statuses.
OK = 0
REFUSED = 1
USAGE = 2


class _Parser(argparse.ArgumentParser):
    """
    argparse, but reporting to our own stream.
    """

    out = None
    err = None

    def _print_message(self, message, file=None):
        if not message:
            return
        if file is None or file is sys.stdout:
            (self.out or sys.stdout).write(message)
        else:
            (self.err or sys.stderr).write(message)


def _parser(out, err):
    parser = _Parser(
        prog="tvlink ledger",
        description="Look after the payment side's SQLite ledger (amounts in fen).",
    )
    parser.out, parser.err = out, err
    parser.add_argument(
        "--db", required=True, metavar="PATH", help="the ledger file (PATH or sqlite:PATH)"
    )
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a running payment process's commit (default 10)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name, help):
        sub = commands.add_parser(name, help=help, description=help)
        sub.out, sub.err = out, err
        return sub

    command("init", "create an empty ledger (nothing happens if it exists)")
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
    return parser


def main(argv=None, out=None, err=None):
    """
    Run C{tvlink ledger ARGV...}; return the exit status.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(out, err)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else USAGE
    path = args.db[len("sqlite:"):] if args.db.startswith("sqlite:") else args.db
    if not path:
        err.write("tvlink ledger: --db needs a path\n")
        return USAGE
    if args.command == "journal" and args.limit < 1:
        err.write("tvlink ledger: --limit must be at least 1, not %d\n" % (args.limit,))
        return USAGE
    if args.busy_timeout <= 0:
        err.write("tvlink ledger: --busy-timeout must be positive\n")
        return USAGE
    try:
        if args.command == "init":
            return _init(path, args, out)
        conn = ledger.connect(path, create=False, busy_timeout=args.busy_timeout)
    except ledger.LedgerNotFound:
        err.write(
            "tvlink ledger: no ledger at %s (create it with: tvlink ledger --db %s init,"
            " or run the payment side with --ledger sqlite:%s)\n" % (path, path, path)
        )
        return REFUSED
    except LedgerError as e:
        err.write("tvlink ledger: %s\n" % (e,))
        return REFUSED
    try:
        return COMMANDS[args.command](conn, args, out)
    except (ledger.BadAmount, ledger.BadCardNumber) as e:
        err.write("tvlink ledger %s: %s\n" % (args.command, e))
        return USAGE
    except LedgerError as e:
        err.write("tvlink ledger %s: %s\n" % (args.command, e))
        return REFUSED
    except ledger.sqlite3.Error as e:
        err.write("tvlink ledger %s: database error: %s\n" % (args.command, e))
        return REFUSED
    finally:
        conn.close()


def _write(conn, work):
    """
    Run C{work()} in one transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _now():
    return ledger.wallclockText(time.time())


def _money(fen):
    return "%s (%d fen)" % (formatFen(fen), fen)


def _init(path, args, out):
    conn = ledger.connect(path, create=True, busy_timeout=args.busy_timeout)
    conn.close()
    out.write("ledger %s ready\n" % (path,))
    return OK


def _open(conn, args, out):
    account = _write(conn, lambda: ledger.openAccount(conn, args.pan, args.amount, _now()))
    out.write(
        "opened card %s with balance %s\n" % (maskPan(account["pan"]), _money(account["balance"]))
    )
    return OK


def _show(conn, args, out):
    account = ledger.getAccount(conn, args.pan)
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


def _list(conn, args, out):
    accounts = ledger.listAccounts(conn)
    if not accounts:
        out.write("no accounts\n")
        return OK
    out.write("%-22s %-7s %18s  %s\n" % ("card", "status", "balance (fen)", "opened at"))
    for account in accounts:
        out.write(
            "%-22s %-7s %18d  %s\n"
            % (maskPan(account["pan"]), account["status"], account["balance"], account["opened_at"])
        )
    out.write("%d account%s\n" % (len(accounts), "" if len(accounts) == 1 else "s"))
    return OK


def _status(status):
    def change(conn, args, out):
        before = _write(conn, lambda: ledger.setStatus(conn, args.pan, status))
        if before == status:
            out.write("card %s was already %s\n" % (maskPan(args.pan), status))
        else:
            out.write("card %s is now %s\n" % (maskPan(args.pan), status))
        return OK

    return change


def _journal(conn, args, out):
    entries = ledger.recentJournal(conn, args.limit)
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


def _check(conn, args, out):
    report = ledger.reconcile(conn)
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
    "freeze": _status(ledger.FROZEN),
    "unfreeze": _status(ledger.ACTIVE),
    "journal": _journal,
    "check": _check,
}
